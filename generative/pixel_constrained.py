"""Pixel Constrained CNN: probabilistic inpainting with exact likelihoods, and its Conditional
PixelCNN baseline.

Dupont & Suresha, "Probabilistic Semantic Inpainting with Pixel Constrained CNNs" (2019), §4:
``p(x | c) = prod_{i: x_i not in c} p(x_i | x_<i, c)`` (Eq. 2), each factor the softmax over
``levels`` quantised intensities of the *sum* of

* the **prior logits** of a Gated PixelCNN on the whole image (van den Oord et al., "Conditional
  Image Generation with PixelCNN Decoders" (2016): a restricted gated block, then gated blocks with
  vertical and horizontal stacks, so no blind spot); pixel ``i`` sees only ``x_<i``;
* the **conditional logits** of a residual CNN on ``cat([x * m, m])`` (Fig. 3), which sees every
  observed pixel.

Loss (Eq. 4): ``-[log p(x | c) + alpha * log p_cond(x | c)]`` where ``p_cond`` is the softmax of the
conditional logits alone, summed over the *missing* pixels (the product of Eq. 2) and divided by
their number (nats per missing pixel). Bits/dim in this module are per missing pixel of the
``levels``-level quantised image (not comparable with the 8-bit continuous bits/dim of the VAEs).

Architecture sizes (appendix A): ``paper`` is A.2 (CelebA: 66 filters, restricted + 16 gated 5×5
blocks, a 1023-channel 1×1 head; 17 residual 5×5 blocks) at the paper's 32×32 and 32 levels.
``cpu`` (64×64 phantoms, what ships) is sized for a shared 2-core CPU: 32 levels as in the paper,
16 filters, restricted + 5 gated 3×3 blocks, and 5 residual 3×3 blocks whose dilations cycle 1, 2,
4, 8 (a deviation: the paper's undilated 5×5 stack would need ~15 blocks for its receptive field to
cover a 64×64 image; dilation covers it with 5), batch 8, Adam at 1e-3 (appendix B: 4e-4 for 50
epochs; here a few hundred steps), 200 steps. ``tiny`` (tests) has the restricted block alone.

**Conditional PixelCNN** (``model="conditional-pixelcnn"``, §3 and §5.2): the same Gated PixelCNN
with the conditioning network's feature map ``s`` as the location-dependent conditioning of every
gate (``tanh(W_f * x + V_f * s) ⊙ σ(W_g * x + V_g * s)``, van den Oord et al. 2016, Eq. 5); no
conditional logits and no alpha term: the baseline of §5.2, whose completions the paper found to
ignore the observed pixels. Both are one family (one checkpoint format); ``config.model`` switches
the wiring and the checkpoint records it, so a ``conditional-pixelcnn`` file is not run as
``pixel-constrained``.

**Training masks** (§4.3): blob masks (Algorithm 1, :func:`datasets.masks.blob_masks`; observed
blobs) and their complements (hidden blobs) mixed with the AIPO observed squares and random
rectangular holes (:func:`training_masks`).

**Sampling** (§4.4) draws the missing pixels in raster order; the log-likelihood of a completion is
the sum of the model's log-probabilities of its drawn pixels (``Completions.info["log_likelihood"]``
``(n, B)``, nats; ``info["rank"]``: 1 = most likely of the ``n``). Temperature (a sampler option)
divides the logits when drawing; the reported likelihood stays the model's own (temperature 1).
:meth:`PixelConstrainedCNN.sample` has two methods that give the same draws for the same seed:

* ``"raster"``: the straightforward method of the reference code,
  :func:`generative.autoregressive.sample_raster` running both networks on the whole canvas once
  per pixel;
* ``"fast"`` (default): the conditioning network runs once per image (its input never changes),
  pixels observed in every image of the batch are skipped, and the prior runs incrementally
  (:class:`IncrementalPrior`, after Ramachandran et al., "Fast Generation for Convolutional
  Autoregressive Models" (2017)): each vertical-stack row is computed once, when the first pixel
  below it is needed, and each horizontal-stack pixel once, from cached rows of every layer.

**Not importance weights.** The completions are exact draws from the model's ``p(x_missing | c)``
(at temperature 1), so for the EIG Monte Carlo they already carry equal weight; weighting them by
their likelihood would count the likelihood twice (sampling *and* weighting) and bias every estimate
toward the mode. ``log_weights`` is therefore ``None``; the likelihoods are diagnostics (ranking,
Fig. 10) only. At another temperature the draws are from a tempered distribution and the likelihood
is still not a valid importance weight (that would need ``p / q_T``, which the sampler does not
report).

Shapes: images, masks ``(B, 1, H, W)`` in [0, 1] / {0, 1} (1 = observed); logits
``(B, levels, H, W)``; completions ``(n, B, 1, H, W)``, n-major batching ``M = n·B``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.autoregressive import (
    bits_per_dim,
    dequantise,
    draw_with_log_prob,
    log_likelihood,
    quantise,
    raster_positions,
    sample_raster,
)
from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily

MODELS = ("pixel-constrained", "conditional-pixelcnn")
METHODS = ("fast", "raster")


@dataclass(frozen=True)
class PixelConstrainedConfig:
    """Architecture, loss and training settings (see the module docstring for the presets)."""

    preset: str = "cpu"
    image_size: int = 64
    model: str = "pixel-constrained"  # or "conditional-pixelcnn"
    levels: int = 32
    prior_channels: int = 16
    prior_layers: int = 5  # gated blocks after the restricted one
    prior_kernel: int = 3
    head_channels: int = 0  # 0: one 1x1 conv to the logits (appendix A.1); else 1x1, ReLU, 1x1 (A.2)
    cond_channels: int = 16
    cond_blocks: int = 5
    cond_kernel: int = 3
    cond_dilation_cycle: int = 4  # block b has dilation 2 ** (b % cycle); 1 = undilated (the paper)
    alpha: float = 1.0  # weight of the conditional-logits term of Eq. 4
    blob_fraction: float = 0.5  # share of blob masks (observed or hidden blobs) in the training mix
    temperature: float = 1.0  # default sampling temperature
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3  # appendix B has 4e-4 for 50 epochs; the CPU budget allows a few hundred steps
    grad_clip: float | None = 100.0
    skip_threshold: float | None = None
    ema_rate: float | None = None

    def check(self) -> None:
        if self.model not in MODELS:
            raise SamplerError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not 2 <= self.levels <= 256:
            raise SamplerError(f"levels must be in 2..256, got {self.levels}")
        for name in ("prior_kernel", "cond_kernel"):
            k = getattr(self, name)
            if k < 3 or k % 2 == 0:
                raise SamplerError(f"{name} must be odd and at least 3, got {k}")
        if (
            min(self.prior_channels, self.cond_channels, self.cond_dilation_cycle) < 1
            or self.prior_layers < 0
        ):
            raise SamplerError("channels and cond_dilation_cycle must be positive, prior_layers >= 0")
        if self.cond_blocks < 0 or self.alpha < 0 or not 0 <= self.blob_fraction <= 1:
            raise SamplerError("need cond_blocks >= 0, alpha >= 0 and blob_fraction in [0, 1]")


PRESETS = {
    "tiny": PixelConstrainedConfig(
        preset="tiny",
        image_size=32,
        levels=8,
        prior_channels=8,
        prior_layers=0,  # the restricted block alone: the contract samples it many times
        prior_kernel=3,
        cond_channels=8,
        cond_blocks=2,
        cond_dilation_cycle=2,
        steps=20,
        batch_size=8,
    ),
    "cpu": PixelConstrainedConfig(),
    "paper": PixelConstrainedConfig(  # appendix A.2 (CelebA) at the paper's 32x32, 32 levels
        preset="paper",
        image_size=32,
        prior_channels=66,
        prior_layers=16,
        head_channels=1023,
        cond_channels=66,
        cond_blocks=17,
        cond_kernel=5,
        cond_dilation_cycle=1,
        steps=200_000,
        batch_size=32,
        lr=4e-4,
    ),
}


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x - 1.0


def gate(pre: torch.Tensor) -> torch.Tensor:
    """The gated activation ``tanh(a) ⊙ σ(b)`` of ``pre = cat([a, b])`` ``(B, 2C, ...)``."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


# -- the prior network ----------------------------------------------------------------------------------
class GatedPixelCNN(nn.Module):
    """Gated PixelCNN with vertical and horizontal stacks (no blind spot): ``x -> logits``.

    Layer 0 is the restricted block: its vertical conv sees the ``p + 1`` rows strictly above a
    pixel (``p = kernel // 2``) and its horizontal conv the ``p`` pixels strictly to its left.
    Layers ``1..L`` are gated blocks: vertical ``(p + 1) × kernel`` over rows ``i - p .. i`` of the
    previous vertical output (which depends on rows ``< i`` only), horizontal ``1 × (p + 1)`` over
    columns ``j - p .. j`` of the previous horizontal output, a 1×1 link from the vertical
    pre-activation into the horizontal one, a 1×1 output conv and a residual connection.
    ``cond_channels > 0``: every gate also gets ``V * s`` of a conditioning map ``s``.

    Shapes: ``x`` ``(B, 1, H, W)`` in [-1, 1]; ``s`` ``(B, cond_channels, H, W)``; logits
    ``(B, levels, H, W)``; pixel ``(i, j)``'s logits depend on ``x`` only through pixels before it.
    """

    def __init__(self, channels: int, layers: int, kernel: int, levels: int, head_channels: int = 0,
                 cond_channels: int = 0):  # fmt: skip
        super().__init__()
        c, p = channels, kernel // 2
        self.p, self.channels = p, c
        self.v_convs = nn.ModuleList(
            [nn.Conv2d(1 if i == 0 else c, 2 * c, (p + 1, kernel)) for i in range(layers + 1)]
        )
        self.h_convs = nn.ModuleList(
            [nn.Conv2d(1, 2 * c, (1, p))] + [nn.Conv2d(c, 2 * c, (1, p + 1)) for _ in range(layers)]
        )
        self.links = nn.ModuleList([nn.Conv2d(2 * c, 2 * c, 1) for _ in range(layers + 1)])
        self.h_outs = nn.ModuleList([nn.Conv2d(c, c, 1) for _ in range(layers + 1)])
        self.cond_v = (
            nn.ModuleList([nn.Conv2d(cond_channels, 2 * c, 1) for _ in range(layers + 1)])
            if cond_channels
            else None
        )
        self.cond_h = (
            nn.ModuleList([nn.Conv2d(cond_channels, 2 * c, 1) for _ in range(layers + 1)])
            if cond_channels
            else None
        )
        if head_channels:
            self.head = nn.Sequential(
                nn.ReLU(), nn.Conv2d(c, head_channels, 1), nn.ReLU(), nn.Conv2d(head_channels, levels, 1)
            )
        else:
            self.head = nn.Sequential(nn.Conv2d(c, levels, 1))

    @property
    def layers(self) -> int:
        return len(self.v_convs)

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h_, w_ = x.shape
        p = self.p
        v, h = x, x
        for i in range(self.layers):
            top = p + 1 if i == 0 else p  # layer 0: the rows strictly above; later: rows i-p..i of v
            vpre = self.v_convs[i](F.pad(v, (p, p, top, 0)))[:, :, :h_]
            hpre = self.h_convs[i](F.pad(h, (p, 0, 0, 0)))[..., :w_]
            if s is not None:
                vpre = vpre + self.cond_v[i](s)
                hpre = hpre + self.cond_h[i](s)
            hpre = hpre + self.links[i](vpre)
            v = gate(vpre)
            out = self.h_outs[i](gate(hpre))
            h = out if i == 0 else h + out
        return self.head(h)


class IncrementalPrior:
    """Cached raster-order evaluation of a :class:`GatedPixelCNN` (Ramachandran et al. 2017).

    Holds every layer's vertical output rows (padded as the full convolution pads them) and the
    current row's horizontal outputs. :meth:`logits_at` computes only what pixel ``(i, j)`` needs
    and has not been computed: the vertical rows from the last computed one to ``i`` (all rows
    above are final by then; one convolution per layer over those rows) and the horizontal columns
    from the last computed one to ``j`` (all pixels left of ``j`` are final), each exactly once per
    image. The horizontal stack runs as matrix products on ``(M, columns, channels)`` windows
    (``unfold``): the same weights and sums as the convolutions of :meth:`GatedPixelCNN.forward`,
    without the per-call cost of a convolution on one pixel, so the logits agree to float round-off.

    ``canvas`` ``(M, 1, H, W)`` in [-1, 1] (the observed pixels; the others are set with
    :meth:`set_pixel` as they are drawn); ``s`` ``(M, cond_channels, H, W)`` or None.
    """

    def __init__(self, net: GatedPixelCNN, canvas: torch.Tensor, s: torch.Tensor | None = None):
        m, _, h, w = canvas.shape
        p, c, dev, dt = net.p, net.channels, canvas.device, canvas.dtype
        self.net, self.s, self.h, self.w = net, s, h, w
        self.x = torch.zeros(m, 1, h + p + 1, w + 2 * p, device=dev, dtype=dt)  # row r at r + p + 1
        self.x[:, :, p + 1 :, p : p + w] = canvas
        self.v = [torch.zeros(m, c, h + p, w + 2 * p, device=dev, dtype=dt) for _ in range(net.layers - 1)]
        self.hbias: list[torch.Tensor] = []  # per layer (M, W, 2C): link(vpre) (+ V_h s) of the current row
        self.hrow = [
            torch.zeros(m, w + p, c, device=dev, dtype=dt) for _ in range(net.layers)
        ]  # h(i, j) at j + p
        flat = lambda conv: (conv.weight.flatten(1), conv.bias)  # noqa: E731  (Cout, Cin * kh * kw)
        self.h_w = [flat(conv) for conv in net.h_convs]
        self.out_w = [flat(conv) for conv in net.h_outs]
        self.head_w = [flat(mod) for mod in net.head if isinstance(mod, nn.Conv2d)]
        self.vdone, self.row, self.hdone = 0, -1, 0

    def set_pixel(self, i: int, j: int, value: torch.Tensor) -> None:
        """Write ``value`` ``(M,)`` (model range) at pixel ``(i, j)``."""
        self.x[:, 0, i + self.net.p + 1, j + self.net.p] = value

    def pixel(self, i: int, j: int) -> torch.Tensor:
        """The canvas value ``(M,)`` (model range) at pixel ``(i, j)``."""
        return self.x[:, 0, i + self.net.p + 1, j + self.net.p]

    def canvas(self, levels: int) -> torch.Tensor:
        """The canvas ``(M, 1, H, W)`` in [0, 1], exactly at the ``levels`` quantised intensities."""
        p = self.net.p
        inner = self.x[:, :, p + 1 :, p : p + self.w]
        return dequantise(quantise((inner + 1.0) / 2.0, levels), levels).to(inner.dtype)

    def _vertical(self, r1: int) -> None:
        """Vertical stacks of rows ``vdone..r1`` (x rows ``< r1`` final); keeps row ``r1``'s links."""
        net, p, r0 = self.net, self.net.p, self.vdone
        inp = self.x[:, :, r0 : r1 + p + 1]  # x rows r0-p-1 .. r1-1
        self.hbias = []
        for k in range(net.layers):
            conv = net.v_convs[k]
            vpre = F.conv2d(inp, conv.weight, conv.bias)  # (M, 2C, r1 - r0 + 1, W)
            bias = None
            if self.s is not None:
                srows = self.s[:, :, r0 : r1 + 1]
                vpre = vpre + net.cond_v[k](srows)
                bias = net.cond_h[k](srows[:, :, -1:])
            link = net.links[k](vpre[:, :, -1:])
            link = link if bias is None else bias + link
            self.hbias.append(link[:, :, 0].transpose(1, 2).contiguous())  # (M, W, 2C)
            if k < net.layers - 1:
                self.v[k][:, :, r0 + p : r1 + p + 1, p : p + self.w] = gate(vpre)
                inp = self.v[k][:, :, r0 : r1 + p + 1]  # v rows r0-p .. r1
        self.vdone = r1 + 1

    def _horizontal(self, i: int, c1: int) -> None:
        """Horizontal stacks of row ``i``, columns ``hdone..c1`` (x(i, < c1) final)."""
        net, p = self.net, self.net.p
        if self.row != i:
            for t in self.hrow:
                t.zero_()
            self.row, self.hdone = i, 0
        c0 = self.hdone
        windows = self.x[:, 0, i + p + 1, c0 : c1 + p].unfold(1, p, 1)  # (M, w, p): x(i, j-p .. j-1)
        for k in range(net.layers):
            weight, bias = self.h_w[k]
            hpre = F.linear(windows, weight, bias) + self.hbias[k][:, c0 : c1 + 1]  # (M, w, 2C)
            a, b = hpre.chunk(2, dim=-1)
            out = F.linear(torch.tanh(a) * torch.sigmoid(b), *self.out_w[k])  # (M, w, C)
            if k > 0:
                out = out + self.hrow[k - 1][:, c0 + p : c1 + p + 1]
            self.hrow[k][:, c0 + p : c1 + p + 1] = out
            # (M, w, C, p + 1) -> (M, w, C * (p + 1)): h(i, j-p .. j) in the weights' (Cin, kw) order
            windows = self.hrow[k][:, c0 : c1 + p + 1].unfold(1, p + 1, 1).flatten(2)
        self.hdone = c1 + 1

    def logits_at(self, i: int, j: int) -> torch.Tensor:
        """Prior logits ``(M, levels)`` of pixel ``(i, j)``; pixels are asked for in raster order."""
        if self.vdone <= i:
            self._vertical(i)
        if self.row != i or self.hdone <= j:
            self._horizontal(i, j)
        h = self.hrow[-1][:, j + self.net.p]  # (M, C)
        for weight, bias in self.head_w:
            if len(self.head_w) > 1:
                h = F.relu(h)  # the A.2 head: ReLU, 1x1, ReLU, 1x1
            h = F.linear(h, weight, bias)
        return h


# -- the conditioning network ---------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ConditioningNetwork(nn.Module):
    """Residual CNN on ``cat([x * m, m])`` ``(B, 2, H, W)`` -> ``(B, out, H, W)`` (Fig. 3, appendix A)."""

    def __init__(self, channels: int, blocks: int, kernel: int, dilation_cycle: int, out: int):
        super().__init__()
        self.inp = nn.Conv2d(2, channels, kernel, padding=kernel // 2)
        self.blocks = nn.Sequential(
            *[ResidualBlock(channels, kernel, 2 ** (b % dilation_cycle)) for b in range(blocks)]
        )
        self.out = nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([to_model_range(x) * mask, mask], dim=1)
        return self.out(F.relu(self.blocks(self.inp(inp))))


# -- the model ------------------------------------------------------------------------------------------
class PixelConstrainedCNN(nn.Module):
    """The Pixel Constrained CNN (or, with ``model="conditional-pixelcnn"``, the Conditional PixelCNN)."""

    def __init__(self, config: PixelConstrainedConfig):
        super().__init__()
        config.check()
        self.config = config
        constrained = config.model == "pixel-constrained"
        feat = config.levels if constrained else config.cond_channels
        self.conditioning = ConditioningNetwork(
            config.cond_channels, config.cond_blocks, config.cond_kernel, config.cond_dilation_cycle, feat
        )
        self.prior = GatedPixelCNN(
            config.prior_channels,
            config.prior_layers,
            config.prior_kernel,
            config.levels,
            config.head_channels,
            cond_channels=0 if constrained else feat,
        )

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def constrained(self) -> bool:
        return self.config.model == "pixel-constrained"

    def quantised(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` at the model's levels (what the networks see), in [0, 1]."""
        return dequantise(quantise(x, self.config.levels), self.config.levels).to(x.dtype)

    def logits(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-network logits ``(B, K, H, W)`` of ``p(x_i | x_<i, c)`` and the conditional logits.

        ``x`` in [0, 1] at the model's levels; only its ``mask = 1`` pixels reach the conditioning
        network. The second value is None for the conditional PixelCNN.
        """
        cond = self.conditioning(x, mask)
        if self.constrained:
            return self.prior(to_model_range(x)) + cond, cond
        return self.prior(to_model_range(x), cond), None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        """Eq. 4 per missing pixel (``loss``) and bits/dim statistics."""
        return self.losses(x, mask)

    def losses(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 1 or mask.shape != x.shape:
            raise SamplerError(
                f"images and masks must be (B, 1, H, W) alike, got {tuple(x.shape)}, {tuple(mask.shape)}"
            )
        q = quantise(x, self.config.levels)
        xq = dequantise(q, self.config.levels).to(x.dtype)
        logits, cond = self.logits(xq, mask)
        missing = mask < 0.5
        count = missing.sum().clamp(min=1)
        nll = -log_likelihood(logits, q, missing).sum() / count  # nats per missing pixel
        stats = {"bpd": bits_per_dim(nll, 1)}
        loss = nll
        if cond is not None:
            cond_nll = -log_likelihood(cond, q, missing).sum() / count
            loss = loss + self.config.alpha * cond_nll
            stats["cond_bpd"] = bits_per_dim(cond_nll, 1)
        stats["loss"] = loss
        return stats

    def validate(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.losses(x, mask).items() if k != "loss"}

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_missing | c)`` ``(B,)``, nats, of complete images ``x`` (e.g. the ground truth)."""
        q = quantise(x, self.config.levels)
        logits, _ = self.logits(dequantise(q, self.config.levels).to(x.dtype), mask)
        return log_likelihood(logits, q, mask < 0.5)

    # -- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        observed: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        method: str = "fast",
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` completions ``(n, B, 1, H, W)`` in [0, 1] and their log-likelihoods ``(n, B)``, nats.

        ``method``: ``"fast"`` or ``"raster"`` (see the module docstring); both draw the same
        pixels in the same order from the same generator, so a seed gives the same completions.
        ``callback(k, canvas (M, 1, H, W) in [0, 1])`` (fast only) runs before the ``k``-th visited
        pixel is drawn (for :func:`pixel_probability_maps`).
        """
        if method not in METHODS:
            raise SamplerError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        levels = self.config.levels
        if method == "raster":
            fn = lambda canvas, m: self.logits(canvas, m)[0]  # noqa: E731
            return sample_raster(fn, observed, mask, n, levels, temperature=temperature, generator=generator)
        b, _, h, w = observed.shape
        mask_m = mask.repeat(n, 1, 1, 1)
        first = torch.where(mask.bool(), self.quantised(observed), torch.zeros_like(mask))  # (B, 1, H, W)
        cond = self.conditioning(first, mask)  # once per image: its input never changes
        cond_m = cond.repeat(n, 1, 1, 1)
        state = IncrementalPrior(
            self.prior, to_model_range(first.repeat(n, 1, 1, 1)), None if self.constrained else cond_m
        )
        table = to_model_range(
            dequantise(torch.arange(levels, device=observed.device), levels).to(first.dtype)
        )
        observed_m = mask_m[:, 0].bool()  # (M, H, W)
        log_lik = torch.zeros(n * b, dtype=torch.float64, device=observed.device)
        for k, (i, j) in enumerate(raster_positions(mask_m)):
            if callback is not None:
                callback(k, state.canvas(levels))
            logits = state.logits_at(i, j)
            if self.constrained:
                logits = logits + cond_m[:, :, i, j]
            drawn, lp = draw_with_log_prob(logits, temperature=temperature, generator=generator)
            seen = observed_m[:, i, j]
            log_lik += lp.masked_fill_(seen, 0.0)
            state.set_pixel(i, j, torch.where(seen, state.pixel(i, j), table[drawn]))
        return state.canvas(levels).reshape(n, b, 1, h, w), log_lik.float().reshape(n, b)


def likelihood_ranks(log_lik: torch.Tensor) -> torch.Tensor:
    """Rank ``(n, B)`` of each completion among the ``n`` of its image by likelihood (1 = most likely)."""
    order = torch.argsort(log_lik, dim=0, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(
        0, order, torch.arange(1, log_lik.shape[0] + 1, device=log_lik.device)[:, None].expand_as(order)
    )
    return ranks


def ground_truth_rank(
    model: PixelConstrainedCNN, x: torch.Tensor, mask: torch.Tensor, log_lik: torch.Tensor
) -> torch.Tensor:
    """§5.4: rank ``(B,)`` of the ground truth ``x`` among itself and ``n`` completions (1 = most likely)."""
    truth = model.log_prob(x, mask).float()  # (B,)
    return 1 + (log_lik > truth[None]).sum(dim=0)


@torch.no_grad()
def pixel_probability_maps(
    model: PixelConstrainedCNN,
    observed: torch.Tensor,
    mask: torch.Tensor,
    *,
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 11: the model's expected intensity of every missing pixel as the sampling progresses.

    One completion per image is drawn (fast method); before the ``round(f · N)``-th of its ``N``
    visited pixels is drawn, for each ``f`` in ``fractions``, the full network runs on the partial
    canvas and the map ``E[x_i] = sum_k p(x_i = k | x_<i, c) · k / (K - 1)`` is kept for the
    missing pixels (observed ones show their value). For ``levels = 2`` this is the paper's
    ``p(x_i = 1)``. Pixels not yet drawn are 0 on the canvas, so a map's value at a pixel after the
    sampling front conditions on those zeros, as in the paper's figure.

    Returns ``maps`` ``(len(fractions), B, 1, H, W)`` and the final completion ``(B, 1, H, W)``.
    """
    levels = model.config.levels
    total = len(raster_positions(mask))
    stops = {min(round(f * total), max(total - 1, 0)): t for t, f in enumerate(fractions)}
    maps = torch.zeros(len(fractions), *observed.shape, device=observed.device)
    intensities = torch.arange(levels, device=observed.device, dtype=torch.float32) / (levels - 1)

    def snapshot(k: int, canvas: torch.Tensor) -> None:
        if k in stops:
            logits, _ = model.logits(canvas, mask)
            mean = (F.softmax(logits.float(), dim=1) * intensities[:, None, None]).sum(1, keepdim=True)
            maps[stops[k]] = torch.where(mask.bool(), canvas, mean)

    images, _ = model.sample(
        observed, mask, 1, generator=generator, temperature=temperature, callback=snapshot
    )
    return maps, images[0]


# -- training masks -------------------------------------------------------------------------------------
def rectangle_hole_masks(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One hidden axis-aligned rectangle per image, sides uniform in [size/4, 3·size/4], at a uniform place.

    Covers the regular occlusions of §5.2 (top, bottom, left, right, centre) as special cases.
    """
    lo, hi = max(1, size // 4), max(1, 3 * size // 4)
    hs = torch.randint(lo, hi + 1, (n,), generator=generator)
    ws = torch.randint(lo, hi + 1, (n,), generator=generator)
    r0 = (torch.rand(n, generator=generator) * (size - hs + 1)).long()
    c0 = (torch.rand(n, generator=generator) * (size - ws + 1)).long()
    ar = torch.arange(size)
    rows = (ar >= r0[:, None]) & (ar < (r0 + hs)[:, None])  # (n, S)
    cols = (ar >= c0[:, None]) & (ar < (c0 + ws)[:, None])
    hole = rows[:, :, None] & cols[:, None, :]
    return (~hole).float().unsqueeze(1)


def training_masks(
    n: int, size: int, generator: torch.Generator | None = None, blob_fraction: float = 0.5
) -> torch.Tensor:
    """§4.3 training masks ``(n, 1, S, S)``: blobs (Algorithm 1) mixed with the other mask types.

    Each image draws its type: with probability ``blob_fraction`` blobs (half observed blobs as
    :func:`datasets.masks.blob_masks` returns them, half their complement, hidden blobs); otherwise
    half AIPO masks (0-5 observed squares, :func:`datasets.masks.aipo_masks`) and half one hidden
    rectangle (:func:`rectangle_hole_masks`).
    """
    from datasets.masks import aipo_masks, blob_masks

    u = torch.rand(n, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    blobs = blob_masks(n, size, generator=generator)
    blobs = torch.where(flip[:, None, None, None], 1 - blobs, blobs)
    squares = aipo_masks(n, size, generator=generator)
    holes = rectangle_hole_masks(n, size, generator=generator)
    rest = torch.where((u < blob_fraction + (1 - blob_fraction) / 2)[:, None, None, None], squares, holes)
    return torch.where((u < blob_fraction)[:, None, None, None], blobs, rest)


# -- the sampler and the family -------------------------------------------------------------------------
class PixelConstrainedSampler(ModelSampler):
    """:class:`boed.protocols.Sampler` over a model; ``info``: ``log_likelihood``, ``rank`` ``(n, B)``.

    Options: ``temperature`` (default: the config's), ``method`` (``fast`` | ``raster``),
    ``sort_by_likelihood`` (return the ``n`` completions most likely first).
    """

    def __init__(self, model: PixelConstrainedCNN, *, name, sha256, meta, temperature=None, method=None,
                 sort_by_likelihood=None):  # fmt: skip
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        self.temperature = model.config.temperature if temperature is None else float(temperature)
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise SamplerError(
                f"sampler {name!r}: temperature must be a positive number, got {temperature!r}"
            )
        self.method = method or "fast"
        if self.method not in METHODS:
            raise SamplerError(
                f"sampler {name!r}: method must be one of {', '.join(METHODS)}, got {method!r}"
            )
        self.sort = bool(sort_by_likelihood)

    def complete(self, observed, mask, n, generator):
        from boed.protocols import Completions

        images, log_lik = self.model.sample(
            observed, mask, n, temperature=self.temperature, generator=generator, method=self.method
        )
        if self.sort:
            order = torch.argsort(log_lik, dim=0, descending=True)  # (n, B)
            log_lik = log_lik.gather(0, order)
            images = images.gather(0, order[:, :, None, None, None].expand_as(images))
        return Completions(images=images, info={"log_likelihood": log_lik, "rank": likelihood_ranks(log_lik)})


class PixelConstrainedFamily(SamplerFamily):
    """Pixel Constrained CNN and the Conditional PixelCNN baseline: one family, ``config.model`` switches."""

    model_id = "pixel-constrained-cnn"
    title = "Pixel Constrained CNN"
    config_cls = PixelConstrainedConfig
    presets = PRESETS
    names = MODELS
    progress_keys = ("loss", "bpd", "cond_bpd")

    def for_name(self, config: PixelConstrainedConfig, name: str) -> PixelConstrainedConfig:
        return dataclasses.replace(config, model=name) if name in MODELS else config

    def kind(self, config: PixelConstrainedConfig, name: str) -> str:
        return config.model

    def build_model(self, config: PixelConstrainedConfig, options=None) -> PixelConstrainedCNN:
        return PixelConstrainedCNN(config)

    def phases(self, model, net, config: PixelConstrainedConfig, ema):
        from boed.runtime.training import Phase

        opt = torch.optim.Adam(model.parameters(), lr=config.lr)  # appendix B
        return [
            Phase(
                lambda b: net(b[0], b[1], "main"),
                opt,
                grad_clip=config.grad_clip,
                skip_threshold=config.skip_threshold,
                ema=ema,
            )  # fmt: skip
        ]

    def masks(self, config: PixelConstrainedConfig):
        return lambda n, size, generator: training_masks(n, size, generator, config.blob_fraction)

    def make_sampler(self, model, *, name, sha256, meta, temperature=None, method=None,
                     sort_by_likelihood=None, **options):  # fmt: skip
        from generative.family import reject_options

        reject_options(name, options, ("temperature", "method", "sort_by_likelihood"))
        return PixelConstrainedSampler(model, name=name, sha256=sha256, meta=meta, temperature=temperature,
                                       method=method, sort_by_likelihood=sort_by_likelihood)  # fmt: skip


FAMILY = PixelConstrainedFamily()
