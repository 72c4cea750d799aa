"""A hierarchical VAE in the style of VD-VAE (Child 2020, "Very deep VAEs generalize autoregressive models").

This is the unconditional image model p(I) = ∫ p(I | z) p(z) dz behind AIPO (§2.2 of Harvey et al., "Image
Completion via Inference in Deep Generative Models" (2021), Fig. 2a): a bottom-up encoder, a top-down
decoder and L groups of latent variables ``z_1..z_L`` at resolutions from 1×1 up to the image. The decoder
keeps a hidden state ``h`` per resolution; group ``l`` has a diagonal-Gaussian prior p(z_l | z_<l) computed
from the decoder state ``h_{l-1}`` (Eq. 4) and a diagonal-Gaussian posterior q(z_l | z_<l, I) computed from
the same state and the encoder's activation at that resolution. Pixels have a discretised logistic mixture
likelihood for 8-bit grayscale (:mod:`generative.likelihood`).

Shapes: images ``(B, 1, H, W)`` in [0, 1]; encoder activations ``{res: (B, width, res, res)}``; the
latent of a group ``(B, zdim, res, res)``; decoder output ``(B, 3K, H, W)`` mixture parameters.

Architecture strings follow VD-VAE: the encoder ``"64x2,64d2,32x2,..."`` (``RxN``: N residual
blocks at resolution R; ``RdK``: one block then average-pool by K) and the decoder
``"1x1,4m1,4x2,..."`` (``RmS``: one block at R whose state is the upsampled state of resolution S
plus a learned bias; ``RxN``: N blocks at R). Every decoder block holds one group of latents.

The encoder here is split in two so that the AIPO partial encoder (generative/aipo.py) can have
exactly the same structure plus one input channel: :class:`Encoder` holds both the bottom-up
network *and* the per-group posterior heads (in VD-VAE the heads live in the decoder blocks; they
are encoder parameters all the same, ϕ in the paper's notation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.errors import SamplerError
from generative.likelihood import dmol_log_prob, dmol_sample, random_like

# (mean, log_std) of a diagonal Gaussian, each (B, zdim, r, r)
Gaussian = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Architecture:
    """Shape of the hierarchical VAE (the model half of a preset, see generative/config.py)."""

    image_size: int
    width: int
    zdim: int
    enc_blocks: str
    dec_blocks: str
    bottleneck: float = 0.25
    n_mixtures: int = 10
    no_bias_above: int = 64
    grad_checkpoint: bool = False  # recompute block activations in backward (paper preset on CPU)


def parse_encoder(spec: str) -> list[tuple[int, int | None]]:
    """``"32x2,32d2,16x1"`` -> ``[(32, None), (32, None), (32, 2), (16, None)]`` (res, down rate)."""
    out: list[tuple[int, int | None]] = []
    for item in spec.split(","):
        if "x" in item:
            res, count = item.split("x")
            out += [(int(res), None)] * int(count)
        elif "d" in item:
            res, rate = item.split("d")
            out.append((int(res), int(rate)))
        else:
            raise SamplerError(f"bad encoder block {item!r} in {spec!r} (use RxN or RdK)")
    return out


def parse_decoder(spec: str) -> list[tuple[int, int | None]]:
    """``"1x1,4m1,4x2"`` -> ``[(1, None), (4, 1), (4, None), (4, None)]`` (res, mix-in res)."""
    out: list[tuple[int, int | None]] = []
    for item in spec.split(","):
        if "x" in item:
            res, count = item.split("x")
            out += [(int(res), None)] * int(count)
        elif "m" in item:
            res, mixin = item.split("m")
            out.append((int(res), int(mixin)))
        else:
            raise SamplerError(f"bad decoder block {item!r} in {spec!r} (use RxN or RmS)")
    return out


def _conv(cin: int, cout: int, k: int, zero: bool = False, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    if zero:
        nn.init.zeros_(conv.weight)
    elif scale != 1.0:
        conv.weight.data.mul_(scale)
    nn.init.zeros_(conv.bias)
    return conv


class Block(nn.Module):
    """Residual bottleneck block of VD-VAE: GELU-conv1×1 → 2×(GELU-conv3×3) → GELU-conv1×1.

    ``(B, cin, r, r) -> (B, cout, r/down, r/down)``; 3×3 convolutions become 1×1 at resolutions
    ≤ 2 (as in VD-VAE). ``residual`` needs ``cin == cout``; ``zero_last`` starts the block as
    the zero map (prior heads), ``last_scale`` shrinks its last layer (1/√depth for deep stacks).
    """

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        *,
        res: int,
        down: int | None = None,
        residual: bool = False,
        zero_last: bool = False,
        last_scale: float = 1.0,
    ):
        super().__init__()
        k = 3 if res > 2 else 1
        self.c1, self.c2 = _conv(cin, mid, 1), _conv(mid, mid, k)
        self.c3, self.c4 = _conv(mid, mid, k), _conv(mid, cout, 1, zero=zero_last, scale=last_scale)
        self.residual, self.down = residual, down
        self.grad_checkpoint = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = x + h if self.residual else h
        return F.avg_pool2d(out, self.down) if self.down else out


def set_grad_checkpoint(module: nn.Module, enabled: bool) -> None:
    """Trade compute for memory: every :class:`Block` recomputes its activations in backward."""
    for m in module.modules():
        if isinstance(m, Block):
            m.grad_checkpoint = enabled


class Encoder(nn.Module):
    """Bottom-up encoder plus one posterior head per latent group.

    ``activations(x)`` maps the network input ``(B, in_channels, H, W)`` to ``{res: (B, width,
    res, res)}`` (the last activation at each resolution); ``posterior(l, h, acts)`` gives the
    diagonal Gaussian of group ``l`` from the decoder state ``h`` ``(B, width, r, r)`` and
    ``acts[r]``. With ``in_channels=1`` it is q(z | I); with 2 (image×mask, mask) it is the AIPO
    partial encoder q̂(z | Î) (generative/aipo.py).
    """

    def __init__(self, arch: Architecture, in_channels: int = 1):
        super().__init__()
        w, mid = arch.width, max(1, int(arch.width * arch.bottleneck))
        self.in_channels = in_channels
        self.in_conv = _conv(in_channels, w, 3)
        blocks = parse_encoder(arch.enc_blocks)
        scale = math.sqrt(1.0 / max(1, len(blocks)))
        self.blocks = nn.ModuleList(
            Block(w, mid, w, res=r, down=d, residual=True, last_scale=scale) for r, d in blocks
        )
        self.heads = nn.ModuleList(
            Block(2 * w, mid, 2 * arch.zdim, res=r) for r, _ in parse_decoder(arch.dec_blocks)
        )
        set_grad_checkpoint(self, arch.grad_checkpoint)

    def activations(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        h = self.in_conv(x)
        acts = {h.shape[-1]: h}
        for block in self.blocks:
            h = block(h)
            acts[h.shape[-1]] = h
        return acts

    def posterior(self, l: int, h: torch.Tensor, acts: dict[int, torch.Tensor]) -> Gaussian:
        mean, log_std = self.heads[l](torch.cat([h, acts[h.shape[-1]]], dim=1)).chunk(2, dim=1)
        return mean, log_std


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over all but the batch dimension: ``(B,)``."""
    (mq, lq), (mp, lp) = q, p
    kl = lp - lq - 0.5 + 0.5 * (torch.exp(2 * lq) + (mq - mp) ** 2) * torch.exp(-2 * lp)
    return kl.flatten(1).sum(1)


def _draw(dist: Gaussian, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    mean, log_std = dist
    eps = random_like("randn", mean, generator)
    return mean + torch.exp(log_std) * (eps * temperature if temperature != 1.0 else eps)


# posterior(l, h) -> Gaussian: which distribution z_l is drawn from along the decoder path
PosteriorFn = Callable[[int, torch.Tensor], Gaussian]


class Decoder(nn.Module):
    """Top-down decoder: state biases, per-group prior heads, latent projections, residual blocks.

    ``forward(batch, draw_from, compare_to)`` runs the decoder once: for each group ``l`` it computes
    the prior p(z_l | z_<l) from the state, draws ``z_l`` from ``draw_from(l, h)`` (the prior when
    ``None``), and accumulates ``KL(draw_from || other)`` for every ``other`` in ``compare_to``
    (``"prior"`` or another posterior function). Returns the mixture parameters ``(B, 3K, H, W)``
    and the summed KLs ``{name: (B,)}`` in nats.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        w, mid, z = arch.width, max(1, int(arch.width * arch.bottleneck)), arch.zdim
        self.arch = arch
        self.groups = parse_decoder(arch.dec_blocks)
        resolutions = sorted({r for r, _ in self.groups})
        self.biases = nn.ParameterDict(
            {str(r): nn.Parameter(torch.zeros(1, w, r, r)) for r in resolutions if r <= arch.no_bias_above}
        )
        scale = math.sqrt(1.0 / len(self.groups))
        self.priors = nn.ModuleList(Block(w, mid, 2 * z + w, res=r, zero_last=True) for r, _ in self.groups)
        self.z_proj = nn.ModuleList(_conv(z, w, 1, scale=scale) for _ in self.groups)
        self.resnets = nn.ModuleList(
            Block(w, mid, w, res=r, residual=True, last_scale=scale) for r, _ in self.groups
        )
        self.gain = nn.Parameter(torch.ones(1, w, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, w, 1, 1))
        self.out_conv = _conv(w, 3 * arch.n_mixtures, 1)
        set_grad_checkpoint(self, arch.grad_checkpoint)

    def _state(self, res: int, batch: int, like: torch.Tensor | None) -> torch.Tensor:
        if str(res) in self.biases:
            return self.biases[str(res)].expand(batch, -1, -1, -1)
        ref = like if like is not None else self.gain
        return ref.new_zeros(batch, self.arch.width, res, res)

    def forward(
        self,
        batch: int,
        draw_from: PosteriorFn | None = None,
        compare_to: dict[str, PosteriorFn | str] | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        compare_to = compare_to or {}
        kls: dict[str, torch.Tensor] = {}
        states: dict[int, torch.Tensor] = {}
        h: torch.Tensor | None = None
        for l, (res, mixin) in enumerate(self.groups):
            if res not in states or mixin is not None:
                h = self._state(res, batch, h)
                if mixin is not None:
                    h = h + F.interpolate(states[mixin], scale_factor=res // mixin, mode="nearest")
            else:
                h = states[res]
            prior_out = self.priors[l](h)
            z_dim = (prior_out.shape[1] - self.arch.width) // 2
            prior = (prior_out[:, :z_dim], prior_out[:, z_dim : 2 * z_dim])
            dist = prior if draw_from is None else draw_from(l, h)
            for name, other in compare_to.items():
                target = prior if other == "prior" else other(l, h)
                kls[name] = kls.get(name, 0.0) + gaussian_kl(dist, target)
            z = _draw(dist, temperature, generator)
            h = h + prior_out[:, 2 * z_dim :]
            h = self.resnets[l](h + self.z_proj[l](z))
            states[res] = h
        out = self.out_conv(h * self.gain + self.bias)
        return out, kls


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → 8-bit bin centres in [-1, 1] (the likelihood is over 256 levels)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 127.5 - 1.0


class HierarchicalVAE(nn.Module):
    """Encoder q(z | I) + decoder p(I | z) p(z): the unconditional VD-VAE-style model.

    ``elbo(x)`` returns per-image ``(nll, kl)`` in nats, ``(B,)`` each, for images ``(B, 1, H, W)``
    in [0, 1]; ``sample(n)`` draws ``(n, 1, H, W)`` unconditional images.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch, in_channels=1)
        self.decoder = Decoder(arch)

    def check_images(self, x: torch.Tensor) -> None:
        s = self.arch.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise SamplerError(f"expected images of shape (B, 1, {s}, {s}), got {tuple(x.shape)}")

    def posterior_fn(self, x: torch.Tensor) -> PosteriorFn:
        acts = self.encoder.activations(to_model_range(x))
        return lambda l, h: self.encoder.posterior(l, h, acts)

    def elbo(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(x)
        params, kls = self.decoder(len(x), self.posterior_fn(x), {"prior": "prior"})
        nll = -dmol_log_prob(params, to_model_range(x)).flatten(1).sum(1)
        return nll, kls["prior"]

    @torch.no_grad()
    def sample(
        self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        params, _ = self.decoder(n, None, temperature=temperature, generator=generator)
        return dmol_sample(params, generator=generator)
