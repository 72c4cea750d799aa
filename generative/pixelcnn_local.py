"""PixelCNN over a local causal neighbourhood, and the shared half of the raster-order baselines.

Burlin, Le Calonnec, Duperier, "Deep Image Inpainting" (2017), §6.2: the conditional
``p(x_i | x_<i)`` of each pixel is a softmax over its intensities computed by a small CNN from a
*local* zone of earlier pixels only (their final model: the 5×5 zone at the top left of the pixel,
24 pixels), the same weights translated over the image; trained with the softmax loss (Eq. of
§6.2, the negative log-likelihood). Built here, as the issue asks, from the masked convolutions of
van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks" (2016), §3.4: a first
convolution with mask A (the pixel itself excluded) over the zone, then ``layers`` convolutions with
mask B (the centre included) that mix features, then a 1×1 "fully connected" softmax head.

The receptive field stays a bounded window of ``up`` rows above and ``left``/``right`` columns
beside the pixel (:attr:`PixelCNNLocal.window`), so a pixel's logits need only that window of the
canvas: the cached sampler (:meth:`PixelCNNLocal.sample_cached`) runs the network on one
``(up + 1) × (left + right + 1)`` crop per generated pixel, a cost independent of the image size
(§6.2: "the complexity does not depend on the size of the image"), and gives exactly the draws of
the reference sampler that reruns the whole image per pixel
(:func:`generative.autoregressive.sample_raster`).

Deviations: grey levels (one softmax over ``levels`` quantised intensities instead of three over
256); no dropout (the models are trained for minutes, not to convergence); the mask-B layers are
3×3 (``kernel``) so the zone grows by one pixel a layer, up to 2 columns to the right in the rows
above (the paper's zone misses the upper right entirely, which its Fig. 9 shows).

Shared with :mod:`generative.pixel_rnn` (Row LSTM, Diagonal BiLSTM, Flattened Row LSTM):
:class:`CausalConv2d`, :class:`AutoregressiveNet` (loss, bits/dim, the sampling entry points),
:class:`AutoregressiveSampler` and :class:`AutoregressiveFamily`.

Shapes: images/masks ``(B, 1, H, W)`` in [0, 1] / {0, 1}; logits ``(B, K, H, W)``, ``K = levels``;
completions ``(n, B, 1, H, W)`` with log-likelihoods ``(n, B)`` (nats, the sampled pixels only).
"""

from __future__ import annotations

import abc
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
from generative.family import ModelSampler, SamplerFamily, reject_options

SAMPLING_METHODS = ("cached", "reference")


# -- masked convolution ----------------------------------------------------------------------------
class CausalConv2d(nn.Conv2d):
    """A masked convolution over a causal window (van den Oord et al. 2016, §3.4, Fig. 2).

    The output at ``(i, j)`` reads input rows ``i - up .. i`` and columns ``j - left .. j + right``,
    except in row ``i`` itself: columns before ``j`` only (``mask="A"``, the first layer) or up to
    ``j`` (``mask="B"``, later layers). The kernel is ``(up + 1, left + right + 1)``; rows below the
    pixel are not even allocated. Zero padding on the top, left and right keeps ``H × W``.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, cin: int, cout: int, *, up: int, left: int, right: int, mask: str):
        if mask not in ("A", "B"):
            raise ValueError(f"mask must be 'A' or 'B', got {mask!r}")
        super().__init__(cin, cout, (up + 1, left + right + 1))
        self.up, self.left, self.right, self.mask_type = up, left, right, mask
        m = torch.ones_like(self.weight)
        m[:, :, up, left + (mask == "B") :] = 0  # row i: nothing at or (B) after the pixel
        self.register_buffer("mask", m, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_valid(F.pad(x, (self.left, self.right, self.up, 0)))

    def conv_valid(self, x: torch.Tensor) -> torch.Tensor:
        """Unpadded: ``(B, C, h, w) -> (B, C_out, h - up, w - left - right)``."""
        return F.conv2d(x, self.weight * self.mask, self.bias)


def network_input(x: torch.Tensor, levels: int) -> torch.Tensor:
    """What the networks see: ``x`` quantised to ``levels`` and mapped to [-1, 1] ``(B, 1, H, W)``.

    Quantising the input as well as the target keeps training (raw images) and sampling (a canvas
    of drawn levels) on the same inputs.
    """
    return dequantise(quantise(x, levels), levels).to(x.dtype) * 2 - 1


# -- the shared half of every raster-order model ---------------------------------------------------------
class AutoregressiveNet(nn.Module, abc.ABC):
    """A raster-order model ``p(x) = prod_i p(x_i | x_<i)`` over ``levels`` grey levels.

    Subclasses implement :meth:`logits` (the whole image at once, the training path and the
    reference for sampling) and may implement :meth:`sample_cached` (a fast sampler that gives the
    same draws); the default falls back to the reference.
    """

    levels: int
    image_size: int

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 1, H, W)`` in [0, 1] -> logits ``(B, K, H, W)``; pixel ``i`` sees only ``x_<i``."""

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per image in nats ``(B,)`` (every pixel)."""
        q = quantise(x, self.levels)
        return -log_likelihood(self.logits(x), q, torch.ones_like(q, dtype=torch.bool))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        """Maximum likelihood on whole images (the softmax loss of §6.2); ``mask`` is not used."""
        nll = self.nll(x)  # (B,)
        dims = x[0].numel()
        loss = nll.mean() / dims  # nats per dimension: a step size independent of the image size
        return {"loss": loss, "bpd": bits_per_dim(nll.mean().detach(), dims)}

    def validate(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bpd": bits_per_dim(self.nll(x).mean(), x[0].numel())}

    def sample_reference(
        self, observed, mask, n, *, temperature: float = 1.0, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The straightforward sampler: the whole network over the whole canvas per pixel."""
        return sample_raster(
            lambda canvas, _m: self.logits(canvas),
            observed,
            mask,
            n,
            self.levels,
            temperature=temperature,
            generator=generator,
        )

    def sample_cached(
        self, observed, mask, n, *, temperature: float = 1.0, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fast sampler: same draws as :meth:`sample_reference`; ``(n, B, 1, H, W)``, ``(n, B)``."""
        return self.sample_reference(observed, mask, n, temperature=temperature, generator=generator)


def start_canvas(observed: torch.Tensor, mask: torch.Tensor, n: int, levels: int):
    """The ``n``-major batch every sampler starts from (as :func:`sample_raster` builds it).

    Returns ``mask_m`` ``(M, 1, H, W)``, ``canvas`` (observed pixels quantised, 0 elsewhere) and the
    zero log-likelihoods ``(M,)`` float64, ``M = n · B``.
    """
    mask_m = mask.repeat(n, 1, 1, 1)
    observed_q = quantise(observed, levels).repeat(n, 1, 1, 1)
    canvas = torch.where(mask_m.bool(), dequantise(observed_q, levels), torch.zeros_like(mask_m))
    return mask_m, canvas, torch.zeros(len(mask_m), dtype=torch.float64, device=observed.device)


def draw_pixel(logits, canvas, mask_m, log_lik, i, j, levels, temperature, generator) -> None:
    """Draw pixel ``(i, j)`` from ``logits`` ``(M, K)`` where missing, in place, as :func:`sample_raster`."""
    drawn, lp = draw_with_log_prob(logits, temperature=temperature, generator=generator)
    missing = ~mask_m[:, 0, i, j].bool()
    log_lik += torch.where(missing, lp, torch.zeros_like(lp))
    canvas[:, 0, i, j] = torch.where(missing, dequantise(drawn, levels).to(canvas.dtype), canvas[:, 0, i, j])


class AutoregressiveSampler(ModelSampler):
    """boed's Sampler over an :class:`AutoregressiveNet`: raster-order inpainting.

    The missing pixels are drawn one by one in raster order with the observed ones fixed (each
    conditional sees only the pixels before it: the observed pixels *after* a missing one do not
    inform it, the limitation §6.2 of Burlin et al. discusses). ``Completions.info["log_likelihood"]``
    ``(n, B)`` is the exact model log-probability of each completion's drawn pixels, in nats.

    Options: ``temperature`` (softmax temperature, default 1) and ``method`` (``cached``: the
    model's fast sampler; ``reference``: rerun the whole network per pixel, for checks).
    """

    def __init__(self, model: AutoregressiveNet, *, name, sha256, meta, temperature=None, method=None):
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        self.temperature = 1.0 if temperature is None else float(temperature)
        if not self.temperature > 0:
            raise SamplerError(f"{name}: temperature must be positive, got {temperature!r}")
        self.method = method or "cached"
        if self.method not in SAMPLING_METHODS:
            raise SamplerError(f"{name}: method must be one of {', '.join(SAMPLING_METHODS)}, got {method!r}")

    def complete(self, observed, mask, n, generator):
        from boed.protocols import Completions

        run = self.model.sample_cached if self.method == "cached" else self.model.sample_reference
        images, log_lik = run(observed, mask, n, temperature=self.temperature, generator=generator)
        return Completions(images=images, info={"log_likelihood": log_lik})


class AutoregressiveFamily(SamplerFamily):
    """The family of one raster-order model: one Adam phase, warm-up + cosine, bits/dim validation.

    Subclasses set ``model_id``, ``title``, ``config_cls``, ``presets``, ``names`` and ``net_cls``
    (built as ``net_cls(config)``). Configs need ``lr``, ``warmup_steps``, ``grad_clip``.
    """

    net_cls: type = AutoregressiveNet
    progress_keys = ("loss", "bpd")

    def build_model(self, config, options=None) -> AutoregressiveNet:
        return self.net_cls(config)

    def phases(self, model, net, config, ema):
        from boed.runtime.schedule import warmup_cosine
        from boed.runtime.training import Phase

        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = lambda s: warmup_cosine(s, steps=config.steps, warmup_steps=config.warmup_steps, final=0.1)  # noqa: E731
        return [
            Phase(
                lambda b: net(b[0], b[1], "main"), opt, schedule=schedule, grad_clip=config.grad_clip, ema=ema
            )
        ]

    def make_sampler(self, model, *, name, sha256, meta, temperature=None, method=None, **options):
        reject_options(name, options, ("temperature", "method"))
        return AutoregressiveSampler(
            model, name=name, sha256=sha256, meta=meta, temperature=temperature, method=method
        )


# -- the local PixelCNN --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelCNNLocalConfig:
    """Local PixelCNN: the zone, the width and the training recipe.

    ``window_up/left/right``: the mask-A zone (§6.2: 4, 4, 0, the 24 pixels of a 5×5 zone at the
    top left); ``layers`` mask-B convolutions of ``kernel × kernel`` (centred) and ``channels``.
    """

    preset: str = "cpu"
    image_size: int = 64
    levels: int = 32
    channels: int = 16
    window_up: int = 4
    window_left: int = 4
    window_right: int = 0
    layers: int = 2
    kernel: int = 3
    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_rate: float = 0.0


PRESETS = {
    "tiny": PixelCNNLocalConfig(
        preset="tiny", image_size=32, levels=16, channels=8, layers=1, steps=200, batch_size=8
    ),
    "cpu": PixelCNNLocalConfig(),
    "paper": PixelCNNLocalConfig(
        preset="paper", image_size=256, levels=256, channels=64, layers=3, steps=100_000
    ),
}


class PixelCNNLocal(AutoregressiveNet):
    """Mask-A zone convolution, ``layers`` mask-B convolutions (leaky ReLU, §6.2), a 1×1 softmax head."""

    def __init__(self, config: PixelCNNLocalConfig):
        super().__init__()
        c, k = config, config.kernel // 2
        if c.kernel % 2 != 1 or c.kernel < 1:
            raise SamplerError(f"kernel must be odd and positive, got {c.kernel}")
        if c.window_up < 0 or c.window_left < 0 or c.window_right < 0 or c.window_up + c.window_left == 0:
            raise SamplerError("window_up/left/right must be >= 0 and the zone must hold a pixel")
        self.config, self.levels, self.image_size = config, c.levels, c.image_size
        self.zone = CausalConv2d(
            1, c.channels, up=c.window_up, left=c.window_left, right=c.window_right, mask="A"
        )
        self.hidden = nn.ModuleList(
            CausalConv2d(c.channels, c.channels, up=k, left=k, right=k, mask="B") for _ in range(c.layers)
        )
        self.head = nn.Conv2d(c.channels, c.levels, 1)

    @property
    def window(self) -> tuple[int, int, int]:
        """``(up, left, right)``: the receptive field of a pixel's logits."""
        convs = [self.zone, *self.hidden]
        return tuple(sum(getattr(m, a) for m in convs) for a in ("up", "left", "right"))

    def _run(self, h: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
        for conv in (self.zone, *self.hidden):
            h = F.leaky_relu(conv(h), 0.2)
            if inside is not None:
                h = h * inside  # features outside the image are zero padding, as in the full pass
        return self.head(h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(network_input(x, self.levels))

    def _plan(self) -> list[tuple[list, list, torch.Tensor]]:
        """Per layer: the offsets ``(dy, dx)`` from the drawn pixel whose features are needed, the
        offsets they read, and the index ``(needed, kernel taps)`` into the latter.

        Built backwards from the head's one position, so each layer computes only what the next
        one reads (a shrinking cone, no padding inside the crop)."""
        need: list[tuple[int, int]] = [(0, 0)]
        plan = []
        for conv in reversed([self.zone, *self.hidden]):
            taps = [
                (a - conv.up, b - conv.left)
                for a in range(conv.up + 1)
                for b in range(conv.left + conv.right + 1)
            ]
            reads = sorted({(p[0] + t[0], p[1] + t[1]) for p in need for t in taps})
            where = {r: k for k, r in enumerate(reads)}
            index = torch.tensor([[where[(p[0] + t[0], p[1] + t[1])] for t in taps] for p in need])
            plan.append((need, reads, index))
            need = reads
        return plan[::-1]

    def sample_cached(self, observed, mask, n, *, temperature=1.0, generator=None):
        """Per pixel, the network on its receptive field only (same draws as the reference).

        Each layer is a gather of its kernel taps and one matrix product over just the positions the
        next layer reads (small convolutions are slow per call on the CPU; matrix products are
        not). Positions outside the image are zero, as the full pass's zero padding makes them.
        """
        b, _, h, w = observed.shape
        up, left, right = self.window
        wp = w + left + right
        mask_m, canvas, log_lik = start_canvas(observed, mask, n, self.levels)
        board = F.pad(network_input(canvas, self.levels), (left, right, up, 0)).flatten(1)  # (M, Hp·Wp)
        inside = F.pad(torch.ones(h, w, device=canvas.device), (left, right, up, 0)).flatten()
        convs = [self.zone, *self.hidden]
        plan = self._plan()
        weights = [(c.weight * c.mask).permute(2, 3, 1, 0).reshape(-1, c.out_channels) for c in convs]

        def flat(offs: list[tuple[int, int]]) -> torch.Tensor:  # offsets -> board positions
            return torch.tensor([(up + dy) * wp + left + dx for dy, dx in offs], device=canvas.device)

        first = flat(plan[0][1])  # the board positions the zone reads
        outs = [flat(need) for need, _, _ in plan]
        head_w, head_b = self.head.weight[:, :, 0, 0].t(), self.head.bias
        for i, j in raster_positions(mask_m):
            base = i * wp + j
            border = i < up or j < left or j + right >= w
            feat = board[:, first + base].unsqueeze(-1)  # (M, P0, 1)
            for (need, _, index), conv, weight, out in zip(plan, convs, weights, outs, strict=True):
                taps = feat[:, index].flatten(2)  # (M, P, taps · C)
                feat = F.leaky_relu(torch.addmm(conv.bias, taps.flatten(0, 1), weight), 0.2).view(
                    len(taps), len(need), -1
                )
                if border:
                    feat = feat * inside[out + base].unsqueeze(-1)
            logits = torch.addmm(head_b, feat[:, 0], head_w)  # (M, K)
            draw_pixel(logits, canvas, mask_m, log_lik, i, j, self.levels, temperature, generator)
            board[:, base + up * wp + left] = canvas[:, 0, i, j] * 2 - 1  # canvas values are levels already
        return canvas.reshape(n, b, 1, h, w), log_lik.float().reshape(n, b)


class PixelCNNLocalFamily(AutoregressiveFamily):
    model_id = "pixelcnn-local"
    title = "local PixelCNN"
    config_cls = PixelCNNLocalConfig
    presets = PRESETS
    names = ("pixelcnn-local",)
    net_cls = PixelCNNLocal


FAMILY = PixelCNNLocalFamily()
