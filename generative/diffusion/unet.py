"""A small ε-prediction UNet: the network of Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic
Models" (2020), §4 and Appendix B, at a size a CPU trains.

Architecture (Appendix B of Ho et al., itself the PixelCNN++ backbone): a sinusoidal embedding of
the timestep (the Transformer's, Vaswani et al. 2017, §3.5) through a two-layer MLP; per resolution
``num_res_blocks`` residual blocks (GroupNorm → SiLU → 3×3 conv, the time embedding added after the
first conv, dropout, a zero-initialised second conv) and a single-head self-attention block at the
resolutions in ``attention_resolutions``; stride-2 convolutions down, nearest-neighbour upsampling
and a 3×3 conv up, skip connections concatenated; a middle ResBlock–attention–ResBlock; a
zero-initialised output conv, so an untrained network predicts ε̂ = 0.

Deviations: the depth and width are parameters (the presets in generative/diffusion/model.py size
them for 32, 64 and 256 px); GroupNorm uses at most 8 groups so that narrow test networks work.
``patch`` > 1 folds each p×p block of pixels into channels before the first conv and unfolds the
output after the last (pixel unshuffle / shuffle, Shi et al., "Real-Time Single Image and Video
Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", 2016): the network
then runs at S/p px, which cuts the cost of the full-resolution stage by ~p² (the ``cpu`` preset
uses p = 4 so that it trains on a shared CPU; ``paper`` uses p = 1, the DDPM network).

Shapes: ``forward(x (B, C_in, S, S), t (B,) long or float) -> (B, C_out, S, S)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``t`` ``(B,)`` -> ``(B, dim)`` (cos and sin halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ 8 that divides ``channels``."""
    groups = max(g for g in range(1, 9) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the time embedding added between its two convolutions."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions, residual, zero-initialised projection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, HW, C)
        # softmax(q kᵀ / √C) v written out: on CPU 2-3x faster here than scaled_dot_product_attention
        weights = torch.softmax(q @ k.transpose(-1, -2) * c**-0.5, dim=-1)  # (B, HW, HW)
        out = weights @ v  # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """ε̂_θ(x_t, t): the DDPM UNet (see the module docstring).

    Args:
        in_channels: input channels (1 for an unconditional model; 3 for cat([x_t, x⊙m, m])).
        out_channels: predicted ε channels (1).
        base_channels: channels at full resolution.
        channel_mult: channel multiplier per resolution; ``len(channel_mult) − 1`` downsamplings.
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (px) that get a self-attention block.
        image_size: input side in px (to place the attention blocks).
        dropout: dropout inside the residual blocks.
        patch: space-to-depth factor of the stem (1: none; see the module docstring).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int = 1,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (16,),
        image_size: int = 64,
        dropout: float = 0.0,
        patch: int = 1,
    ):
        super().__init__()
        if image_size % (patch * 2 ** (len(channel_mult) - 1)):
            raise ValueError(
                f"image size {image_size} is not divisible by patch {patch} × 2^{len(channel_mult) - 1} "
                f"({len(channel_mult)} resolutions)"
            )
        self.patch = patch
        in_channels, out_channels, image_size = (
            in_channels * patch**2,
            out_channels * patch**2,
            image_size // patch,
        )
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, size = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                self.down.append(self._stage(ch, out, emb_dim, dropout, size in attention_resolutions))
                ch = out
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                size //= 2

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = AttentionBlock(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * mult
                self.up.append(
                    self._stage(ch + skips.pop(), out, emb_dim, dropout, size in attention_resolutions)
                )
                ch = out
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
                    )
                )
                size *= 2
        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    @staticmethod
    def _stage(in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool) -> nn.ModuleList:
        blocks = [ResBlock(in_ch, out_ch, emb_dim, dropout)]
        if attention:
            blocks.append(AttentionBlock(out_ch))
        return nn.ModuleList(blocks)

    @staticmethod
    def _run(stage: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if not isinstance(stage, nn.ModuleList):  # a down- or upsampling layer
            return stage(h)
        h = stage[0](h, emb)
        return stage[1](h) if len(stage) > 1 else h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))  # (B, 4·base)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)  # (B, C·p², S/p, S/p)
        h = self.inp(x)
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, emb)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for stage in self.up:
            if isinstance(stage, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(stage, h, emb)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
