"""Shared utilities of the autoregressive (PixelCNN-family) samplers: quantisation, likelihoods and
the straightforward raster-order sampler.

The autoregressive models here (the Pixel Constrained CNN of Dupont & Suresha, "Probabilistic
Semantic Inpainting with Pixel Constrained CNNs" (2019); Row LSTM, Diagonal BiLSTM and PixelCNN of
van den Oord et al., "Pixel Recurrent Neural Networks" (2016)) model grey levels as a categorical
distribution over ``levels`` quantised intensities, one softmax per pixel, factorised in raster
order: ``log p(x | x_c) = sum_i log p(x_i | x_<i, x_c)``.

Conventions: images and masks ``(B, 1, H, W)`` float in [0, 1], masks 1 = observed; quantised
images ``(B, 1, H, W)`` long in ``[0, levels - 1]``; logits ``(M, K, H, W)`` with ``K = levels``;
``n`` completions of ``B`` images are batched *n-major*: row ``k * B + b`` of an ``(M = n·B)`` batch is
draw ``k`` of image ``b`` (``tensor.reshape(n, B, ...)`` recovers them).

:func:`sample_raster` is the straightforward method (the reference code of the paper): the whole
network runs over the whole canvas once per generated pixel. It is the correctness reference for
any fast sampler; a fast sampler that visits :func:`raster_positions` in order and draws each pixel
with :func:`draw_categorical` consumes the generator identically and therefore gives the same
samples for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "bits_per_dim",
    "dequantise",
    "draw_categorical",
    "draw_with_log_prob",
    "log_likelihood",
    "quantise",
    "raster_positions",
    "sample_raster",
]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def quantise(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Intensities ``(B, 1, H, W)`` in [0, 1] -> long levels ``round(x * (levels - 1))`` in [0, levels-1]."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    return torch.round(x.clamp(0.0, 1.0) * (levels - 1)).long()


def dequantise(q: torch.Tensor, levels: int) -> torch.Tensor:
    """Levels ``(B, 1, H, W)`` long -> float intensities ``q / (levels - 1)`` in [0, 1]."""
    return q.float() / (levels - 1)


def log_likelihood(logits: torch.Tensor, q: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``sum over where`` of ``log softmax(logits)[q]`` per image, in nats: ``(M,)``.

    Args:
        logits: ``(M, K, H, W)`` unnormalised log-probabilities of the ``K`` levels.
        q: ``(M, 1, H, W)`` long levels.
        where: ``(M, 1, H, W)`` bool (or {0, 1}): the pixels whose log-probabilities are summed.
    """
    lp = F.log_softmax(logits.float(), dim=1).gather(1, q.long())  # (M, 1, H, W)
    return torch.where(where.bool(), lp, torch.zeros_like(lp)).sum(dim=(1, 2, 3))


def bits_per_dim(nll_nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Negative log-likelihood in nats (per image) -> bits per dimension: ``nll / (dims · ln 2)``."""
    return nll_nats / (dims * math.log(2.0))


def raster_positions(mask: torch.Tensor) -> list[tuple[int, int]]:
    """The ``(row, col)`` positions a raster-order sampler visits, in order.

    ``mask`` ``(M, 1, H, W)``: every position except those observed in every image of the batch.
    """
    todo = ~(mask.bool().all(dim=0)[0])  # (H, W)
    return [(int(i), int(j)) for i, j in torch.nonzero(todo, as_tuple=False).tolist()]


def draw_categorical(
    logits: torch.Tensor, *, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw per row from ``softmax(logits / temperature)``: ``logits`` ``(M, K)`` -> ``(M,)`` long.

    Inverse-CDF sampling from one uniform per row drawn from ``generator`` (on the generator's
    device, then moved), so that two samplers drawing the same positions in the same order from
    equal logits give the same levels.
    """
    return draw_with_log_prob(logits, temperature=temperature, generator=generator)[0]


def draw_with_log_prob(
    logits: torch.Tensor, *, temperature: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draw_categorical` and the model's log-probability of each draw (temperature 1).

    ``logits`` ``(M, K)`` -> levels ``(M,)`` long and ``log softmax(logits)[level]`` ``(M,)``
    float64 (the model's own probability of the drawn level, whatever ``temperature``).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(logits.double(), dim=1)  # (M, K)
    cdf = (log_p.exp() if temperature == 1.0 else F.softmax(logits.double() / temperature, dim=1)).cumsum(1)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape[0], 1, generator=generator, device=device, dtype=torch.float64)
    drawn = torch.searchsorted(cdf, u.to(logits.device) * cdf[:, -1:]).clamp_(max=logits.shape[1] - 1)
    return drawn.squeeze(1), log_p.gather(1, drawn).squeeze(1)


def sample_raster(
    logits_fn: LogitsFn,
    observed: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    levels: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    max_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` completions per image by the straightforward raster-order method, with log-likelihoods.

    The canvas starts as ``dequantise(quantise(observed))`` where ``mask = 1`` and 0 elsewhere;
    each position of :func:`raster_positions` is visited in raster order, ``logits_fn(canvas, mask)``
    runs on the whole canvas, and the pixel is drawn (:func:`draw_categorical`) where it is missing.

    The log-likelihood of a completion is the sum over its drawn pixels of the *model's*
    log-probability of the drawn level (``log_softmax(logits)``, i.e. temperature 1), whatever the
    sampling temperature: it is ``log p(x_missing | x_observed)`` under the model, the quantity
    completions are ranked by. At ``temperature != 1`` the draws come from the tempered
    distribution, so ``log_lik`` is then not the log-density of the distribution they were drawn from.

    Args:
        logits_fn: ``(canvas (M, 1, H, W) in [0, 1], mask (M, 1, H, W)) -> logits (M, levels, H, W)``;
            the logits at pixel ``i`` must depend on the canvas only through pixels before ``i`` in
            raster order (and on anything through observed pixels via ``mask``).
        observed: ``(B, 1, H, W)`` in [0, 1]; only its ``mask = 1`` pixels are read.
        mask: ``(B, 1, H, W)`` in {0, 1}, 1 = observed.
        n: completions per image.
        levels: number of quantised intensities ``K``.
        max_positions: stop after this many visited positions (the rest stay 0; for timing the
            method, whose cost per position is constant).

    Returns:
        ``images`` ``(n, B, 1, H, W)`` in [0, 1] (observed pixels quantised), ``log_lik`` ``(n, B)`` nats.
    """
    b, _, h, w = observed.shape
    mask_m = mask.repeat(n, 1, 1, 1)  # (M, 1, H, W), n-major
    observed_q = quantise(observed, levels).repeat(n, 1, 1, 1)
    canvas = torch.where(mask_m.bool(), dequantise(observed_q, levels), torch.zeros_like(mask_m))
    log_lik = torch.zeros(n * b, dtype=torch.float64, device=observed.device)
    for i, j in raster_positions(mask_m)[:max_positions]:
        logits = logits_fn(canvas, mask_m)[:, :, i, j]  # (M, K)
        drawn, lp = draw_with_log_prob(logits, temperature=temperature, generator=generator)  # (M,)
        missing = ~mask_m[:, 0, i, j].bool()
        log_lik += torch.where(missing, lp, torch.zeros_like(lp))
        canvas[:, 0, i, j] = torch.where(
            missing, dequantise(drawn, levels).to(canvas.dtype), canvas[:, 0, i, j]
        )
    return canvas.reshape(n, b, 1, h, w), log_lik.float().reshape(n, b)
