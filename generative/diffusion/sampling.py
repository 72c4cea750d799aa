"""The two inpainting samplers as loops over an ε-predictor (any function, so the tests can pass the
exact ε of a Gaussian); model-range tensors throughout.

Both take ``eps_fn(x_t (M, C, H, W), t (M,) long) -> ε̂ (M, C, H, W)``, the observation ``y``
``(M, C, H, W)`` (any value where ``mask`` is 0), ``mask`` ``(M, C, H, W)`` in {0, 1} (1 = observed)
and the :class:`~generative.diffusion.schedule.NoiseSchedule`; ``M`` is every completion of every
image at once (the sampler adapters stack the N completions of a decision into one batch). They
return the completed ``x_0`` ``(M, C, H, W)``. All noise comes from ``generator``.

* :func:`ddim_inpaint` — the mask-conditioned model. Its network sees cat([x_t, y⊙m, m]) and
  predicts ε on the missing pixels; on the observed pixels ε is known exactly,
  ε = (x_t − √ᾱ_t y) / √(1 − ᾱ_t), and replaces the network's output, so every DDIM step
  (Song et al. 2021, Eq. 12) keeps the observed pixels on their forward marginal
  √ᾱ_s y + √(1 − ᾱ_s) ε and ends exactly on y. One network call per step, no guidance.
* :func:`repaint` — an unconditional model. Lugmayr et al., "RePaint: Inpainting using Denoising
  Diffusion Probabilistic Models" (2022), Algorithm 1: after every denoising step the known pixels
  are replaced by a fresh draw of the noised observation q(x_s | y); resampling jumps re-noise the
  state (q(x_u | x_s), line 9) and denoise again so that the generated part harmonises with the
  known part. The walk is :func:`~generative.diffusion.schedule.repaint_schedule` on a grid of
  ``steps`` sampling timesteps; η = 1 is the paper's DDPM step, η = 0 a DDIM step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from generative.diffusion.schedule import (
    NoiseSchedule,
    ddim_step,
    eps_from_x0,
    forward_jump,
    network_calls,
    q_sample,
    repaint_schedule,
    timesteps,
)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (drawn on its device), on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def ddim_inpaint(
    eps_fn: EpsFn,
    y: torch.Tensor,
    mask: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    eta: float = 0.0,
    clip: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM with ``steps`` network calls for the mask-conditioned model (see the module docstring)."""
    taus = timesteps(schedule.timesteps, steps).tolist()[::-1]  # noisiest first
    alphas = schedule.at(torch.tensor([*taus, -1])).to(y.dtype)
    m = mask.to(y.dtype)
    x = randn(tuple(y.shape), generator, y)
    x = m * q_sample(y, alphas[0], x) + (1 - m) * x  # observed pixels on their forward marginal
    for i, t in enumerate(taus):
        a_t, a_s = alphas[i], alphas[i + 1]
        eps = eps_fn(x, torch.full((len(x),), t, dtype=torch.long, device=x.device))
        eps = m * eps_from_x0(x, y, a_t) + (1 - m) * eps  # the observed pixels' ε is known exactly
        noise = randn(tuple(y.shape), generator, y) if eta > 0 else None
        x, _ = ddim_step(x, eps, a_t, a_s, eta=eta, noise=noise, clip=clip)
    return m * y + (1 - m) * x


def repaint(
    eps_fn: EpsFn,
    y: torch.Tensor,
    mask: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    jump_length: int = 1,
    jump_n_sample: int = 1,
    eta: float = 1.0,
    clip: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1) on a grid of ``steps`` timesteps; see the module docstring.

    Network calls per completion: :func:`repaint_calls` ``(steps, jump_length, jump_n_sample)``.
    """
    taus = timesteps(schedule.timesteps, steps)
    alphas = schedule.at(torch.cat([torch.tensor([-1]), taus])).to(y.dtype)  # grid position k -> ᾱ
    m = mask.to(y.dtype)
    path = repaint_schedule(steps, jump_length, jump_n_sample)
    x = randn(tuple(y.shape), generator, y)
    for k, j in zip(path, path[1:], strict=False):
        if j > k:  # back in time: x_j ~ q(x_j | x_k)
            x = forward_jump(x, alphas[k], alphas[j], randn(tuple(y.shape), generator, y))
            continue
        t = torch.full((len(x),), int(taus[k - 1]), dtype=torch.long, device=x.device)
        noise = randn(tuple(y.shape), generator, y) if eta > 0 else None
        unknown, _ = ddim_step(x, eps_fn(x, t), alphas[k], alphas[j], eta=eta, noise=noise, clip=clip)
        known = q_sample(y, alphas[j], randn(tuple(y.shape), generator, y)) if j > 0 else y
        x = m * known + (1 - m) * unknown
    return x


def repaint_calls(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Network calls per completion of :func:`repaint` (e.g. 2,410 for 250 steps, j = r = 10)."""
    return network_calls(repaint_schedule(steps, jump_length, jump_n_sample))
