"""Discretised logistic mixture likelihood for 8-bit grayscale images (PixelCNN++, as in VD-VAE).

Images are in the model range [-1, 1] at the 256 bin centres (``generative.vdvae.to_model_range``).
Parameters ``(B, 3K, H, W)``: K mixture logits, K means, K log-scales per pixel. Log-probabilities
are per pixel, ``(B, 1, H, W)``, so AIPO-R can sum them over the observed pixels only (Eq. 15 of
Harvey et al., "Image Completion via Inference in Deep Generative Models" (2021)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF_BIN = 1.0 / 255.0  # half a bin width in [-1, 1]


def random_like(kind: str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``randn``/``rand`` shaped like ``like``, drawn on the generator's device then moved."""
    device = generator.device if generator is not None else like.device
    fn = torch.randn if kind == "randn" else torch.rand
    return fn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, means, log_scales = params.chunk(3, dim=1)
    return logits, torch.tanh(means), log_scales.clamp(min=-7.0)


def dmol_log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | params) per pixel ``(B, 1, H, W)`` for ``x`` ``(B, 1, H, W)`` in [-1, 1]."""
    logits, means, log_scales = _split(params)
    centred = x - means  # (B, K, H, W)
    inv_s = torch.exp(-log_scales)
    plus_in, min_in = inv_s * (centred + _HALF_BIN), inv_s * (centred - _HALF_BIN)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # bin 0 takes all mass below
    log_one_minus_cdf_min = -F.softplus(min_in)  # bin 255 takes all mass above
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # fallback when the bin mass underflows
    inner = torch.where(
        cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5)
    )
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    return torch.logsumexp(log_probs + F.log_softmax(logits, dim=1), dim=1, keepdim=True)


def dmol_sample(
    params: torch.Tensor, *, generator: torch.Generator | None = None, noise: bool = True
) -> torch.Tensor:
    """Draw pixels ``(B, 1, H, W)`` in [0, 1]: a mixture component, then logistic noise (optional).

    With ``noise=False`` the chosen component's location is returned (less pixel grain).
    """
    logits, means, log_scales = _split(params)
    u = random_like("rand", logits, generator)
    gumbel = -torch.log(-torch.log(u.clamp(1e-7, 1 - 1e-7)))
    pick = F.one_hot((logits + gumbel).argmax(1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    mean = (means * pick).sum(1, keepdim=True)
    x = mean
    if noise:
        scale = torch.exp((log_scales * pick).sum(1, keepdim=True))
        v = random_like("rand", mean, generator).clamp(1e-5, 1 - 1e-5)
        x = mean + scale * (torch.log(v) - torch.log1p(-v))
    return ((x.clamp(-1, 1) + 1.0) / 2.0).clamp(0, 1)


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Convert per-image nats to bits per dimension."""
    return nats / (dims * math.log(2.0))
