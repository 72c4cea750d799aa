"""The DDPM noise schedule, the DDIM update and the RePaint time-travel schedule (pure tensor code).

Notation (Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020, §2): the forward
process adds Gaussian noise in ``T`` steps with variances β_1..β_T; with ᾱ_t = Π_{s≤t} (1 − β_s)

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                                   (Ho et al., Eq. 4)

so ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` (:func:`q_sample`). Here the timestep index ``t`` runs
0..T−1 (index ``t`` is the paper's step ``t + 1``) and index ``−1`` is clean data, ᾱ_{−1} = 1.

Schedules (:func:`make_schedule`):

* ``linear``: β from 1e-4 to 0.02 over T = 1000 steps (Ho et al. §4), scaled by 1000 / T so a
  shorter chain ends at the same noise level.
* ``cosine``: ᾱ_t = f(t) / f(0), f(t) = cos²(((t/T + s) / (1 + s)) · π/2), s = 0.008, with β
  clipped to 0.999 (Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021,
  Eq. 17). Destroys information more slowly at low resolution, which suits 64×64 images.

Sampling on a sub-sequence τ of the training steps (:func:`timesteps`), one network call per
element: :func:`ddim_step` is Eq. 12 of Song, Meng, Ermon, "Denoising Diffusion Implicit Models"
(2021),

    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,   x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
    σ = η √((1 − ᾱ_s) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_s)                           (Song et al., Eq. 16)

η = 0 is the deterministic DDIM sampler; η = 1 is the DDPM ancestral step on the sub-sequence
(the posterior q(x_s | x_t, x̂_0) of Ho et al. Eq. 7 with the respaced β' = 1 − ᾱ_t/ᾱ_s), which
RePaint uses. :func:`forward_jump` is q(x_u | x_s) for u > s (RePaint's "go back in time").

:func:`repaint_schedule` is the resampling schedule of Lugmayr et al., "RePaint: Inpainting using
Denoising Diffusion Probabilistic Models" (2022), §4.2 and their released ``get_schedule_jump``:
walk down the grid; at every ``jump_length``-th grid point, jump ``jump_length`` points back up and
walk down again, ``jump_n_sample − 1`` times. Each downward move is one network call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear")
COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal Eq. 17
MAX_BETA = 0.999


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al.'s β_t, linear from 1e-4 to 0.02 (scaled to ``timesteps`` steps), ``(T,)`` float64."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, min(scale * 0.02, MAX_BETA), timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = COSINE_OFFSET) -> torch.Tensor:
    """β_t of Nichol & Dhariwal's cosine ᾱ (Eq. 17), clipped to 0.999, ``(T,)`` float64."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ of every training step, ``alpha_bar`` ``(T,)`` float64 (index −1 = clean data, ᾱ = 1)."""

    alpha_bar: torch.Tensor

    @property
    def timesteps(self) -> int:
        return int(self.alpha_bar.shape[0])

    def at(self, t: torch.Tensor | int) -> torch.Tensor:
        """ᾱ at indices ``t`` (any shape, −1 allowed), float64."""
        t = torch.as_tensor(t, dtype=torch.long)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar])
        return padded[t + 1]


def make_schedule(kind: str, timesteps: int) -> NoiseSchedule:
    """The ``cosine`` or ``linear`` schedule with ``timesteps`` steps (see the module docstring)."""
    if kind not in SCHEDULES:
        raise ValueError(f"noise schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if timesteps < 2:
        raise ValueError(f"the diffusion needs at least 2 timesteps, got {timesteps}")
    betas = cosine_betas(timesteps) if kind == "cosine" else linear_betas(timesteps)
    return NoiseSchedule(torch.cumprod(1 - betas, 0))


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a`` (scalar or ``(B,)``) as ``like``'s dtype, shaped to broadcast over ``(B, ...)``."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ x_0 + √(1 − ᾱ) ε (Ho et al. Eq. 4); ``alpha_bar`` scalar or ``(B,)``."""
    a = _bcast(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t (Song et al. Eq. 12, the 'predicted x_0')."""
    a = _bcast(alpha_bar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The ε for which x_t = √ᾱ x_0 + √(1 − ᾱ) ε (inverse of :func:`q_sample`)."""
    a = _bcast(alpha_bar, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def ddim_sigma(alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor, eta: float) -> torch.Tensor:
    """σ of Song et al. Eq. 16 for a step from ᾱ_t to ᾱ_s (s before t)."""
    return eta * ((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)).clamp_min(0).sqrt()


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_s: torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Song et al. Eq. 12 from ``x_t`` to ``x_s``; returns ``(x_s, x̂_0)``.

    ``eps`` is ε̂(x_t), same shape as ``x_t``; ᾱ scalars or ``(B,)``. ``clip``: clamp x̂_0 to
    [−clip, clip] (the data range) and recompute ε̂ from it, as in Dhariwal & Nichol's guided
    diffusion code; ``None`` for unbounded data (the Gaussian tests). ``noise`` (z) is needed when
    η > 0 and ᾱ_s < 1.
    """
    x0 = predict_x0(x_t, eps, alpha_bar_t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = eps_from_x0(x_t, x0, alpha_bar_t)
    a_s = _bcast(alpha_bar_s, x_t)
    sigma = _bcast(ddim_sigma(torch.as_tensor(alpha_bar_t), torch.as_tensor(alpha_bar_s), eta), x_t)
    x_s = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0 and noise is not None:
        x_s = x_s + sigma * noise
    return x_s, x0


def forward_jump(
    x_s: torch.Tensor, alpha_bar_s: torch.Tensor, alpha_bar_u: torch.Tensor, noise: torch.Tensor
):
    """A draw of q(x_u | x_s) = N(√(ᾱ_u/ᾱ_s) x_s, (1 − ᾱ_u/ᾱ_s) I) for u after s (RePaint Alg. 1, line 9)."""
    ratio = _bcast(torch.as_tensor(alpha_bar_u) / torch.as_tensor(alpha_bar_s), x_s)
    return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise


def timesteps(total: int, steps: int) -> torch.Tensor:
    """``steps`` training indices, evenly spaced from 0 to ``total − 1``, increasing, ``(steps,)`` long.

    The "uniform" sub-sequence τ of Song et al. §4.2 (both ends included, so the last step starts
    from the noisiest index and the first lands on clean data).
    """
    if not 1 <= steps <= total:
        raise ValueError(f"sampling steps must be in 1..{total} (the training timesteps), got {steps}")
    if steps == 1:
        return torch.tensor([total - 1])
    return torch.linspace(0, total - 1, steps, dtype=torch.float64).round().long()


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """Grid positions visited by RePaint, from ``steps`` (pure noise) down to 0 (clean).

    Grid position ``k`` in 1..``steps`` is the ``k``-th sampling timestep (:func:`timesteps`),
    0 is clean data. A move ``k → k − 1`` is one denoising step (one network call); ``k → k + 1``
    re-noises (no call). At every position ``p < steps − jump_length`` that is a multiple of
    ``jump_length`` the walk goes ``jump_length`` positions back up, ``jump_n_sample − 1`` times
    (Lugmayr et al. 2022, §4.2: "jump length j", "resampling r"). ``jump_n_sample = 1`` is plain
    DDPM with the known pixels replaced.
    """
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            "RePaint needs steps, jump_length and jump_n_sample ≥ 1, "
            f"got {steps}, {jump_length}, {jump_n_sample}"
        )
    jumps = {p: jump_n_sample - 1 for p in range(0, steps - jump_length, jump_length)}
    path, k = [steps], steps
    while k > 0:
        k -= 1
        path.append(k)
        if jumps.get(k, 0) > 0:
            jumps[k] -= 1
            for _ in range(jump_length):
                k += 1
                path.append(k)
    return path


def network_calls(path: list[int]) -> int:
    """Denoising steps (network calls) of a :func:`repaint_schedule` path."""
    return sum(1 for a, b in zip(path, path[1:], strict=False) if b < a)
