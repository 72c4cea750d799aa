"""The diffusion model: config presets, the ε-prediction objective, validation.

Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models" (2020), Algorithm 1 and Eq. 14 (the
"simple" loss): draw t uniformly, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and regress
ε̂_θ(x_t, t) on ε with a squared error. Images are mapped from [0, 1] to [−1, 1] (Ho et al. §3.3).

Two variants of one network (:class:`generative.diffusion.unet.UNet`), chosen by ``conditional``:

* ``conditional=True`` (sampler ``diffusion``): the network sees cat([x_t, x_0⊙m, m]) ``(B, 3, S,
  S)``, the mask ``m`` drawn from the AIPO mask distribution (the trainer's default, 0–5 observed
  squares of side 35 %), and the loss is the mean squared ε error over the **missing** pixels only.
  Why not all pixels: on the observed pixels ε is a known function of the inputs,
  (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t), and the sampler uses that exact value instead of the network's
  (generative/diffusion/sampling.py), so fitting it would only spend capacity and dilute the loss of
  the pixels the network is there for; with 0 squares observed the loss covers every pixel, which
  also trains the unconditional case.
* ``conditional=False`` (sampler ``repaint``): the unconditional DDPM, input x_t ``(B, 1, S, S)``,
  loss over every pixel (the mask of the batch is ignored), sampled by RePaint.

``eps_skip`` (a deviation, on in the ``tiny`` and ``cpu`` presets): the network predicts the residual
of ε on the exact ε-predictor of zero-mean Gaussian data of per-pixel standard deviation σ_d,
ε̂ = net + √(1 − ᾱ_t) / (ᾱ_t σ_d² + 1 − ᾱ_t) · x_t (the skip of Karras et al., "Elucidating the
Design Space of Diffusion-Based Generative Models", 2022, §5, written for ε). At high noise the
answer (ε ≈ x_t) is then given rather than learnt; without it a network trained for a few hundred
steps under-predicts ε there (ε̂ std 0.9 at t = T), and deterministic DDIM, which divides by
√ᾱ_t, turned that error into saturated speckle (measured on the first CPU run). Still ε-prediction
with the same loss; ``paper`` keeps the plain DDPM parameterisation.

Presets: ``tiny`` (32 px, 8 channels, 100 timesteps, few sampling steps: tests), ``cpu`` (64 px,
a 1.2 M-parameter UNet on a 4×4 pixel-unshuffled stem, so at 16, 8 and 4 px inside, attention at 8
and 4 px: it has to train in 15 minutes on a fraction of a shared core), ``paper`` (256 px, the
DDPM 256-px network: 128 channels, multipliers 1,1,2,2,4,4, two residual blocks per resolution,
attention at 16 px; Ho et al. Appendix B).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from generative.diffusion.schedule import SCHEDULES, make_schedule, q_sample
from generative.diffusion.unet import UNet
from generative.errors import SamplerError


@dataclass(frozen=True)
class DiffusionConfig:
    """Network, diffusion, training and sampling settings of one preset (see the module docstring)."""

    preset: str
    image_size: int
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    patch: int = 1
    dropout: float = 0.0
    conditional: bool = True
    timesteps: int = 1000
    noise_schedule: str = "cosine"
    eps_skip: bool = False
    sigma_data: float = 0.5
    # training
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    skip_threshold: float | None = None
    ema_rate: float = 0.999
    batch_size: int = 32
    steps: int = 10000
    # sampling: DDIM for ``diffusion``, RePaint for ``repaint``
    sample_steps: int = 25
    eta: float = 0.0
    repaint_steps: int = 25
    jump_length: int = 5
    jump_n_sample: int = 4
    repaint_eta: float = 1.0
    clip_x0: bool = True


PRESETS: dict[str, DiffusionConfig] = {
    "tiny": DiffusionConfig(
        preset="tiny",
        image_size=32,
        base_channels=8,
        channel_mult=(1, 2, 2),
        attention_resolutions=(8,),
        eps_skip=True,
        timesteps=100,
        lr=1e-3,
        warmup_steps=2,
        ema_rate=0.99,
        batch_size=8,
        steps=20,
        sample_steps=3,
        repaint_steps=3,
        jump_length=1,
        jump_n_sample=2,
    ),
    "cpu": DiffusionConfig(
        preset="cpu",
        image_size=64,
        base_channels=32,
        channel_mult=(1, 2, 2),
        attention_resolutions=(8, 4),
        patch=4,
        eps_skip=True,
        lr=1e-3,
        warmup_steps=50,
        ema_rate=0.995,
        batch_size=8,
        steps=350,
    ),
    "paper": DiffusionConfig(
        preset="paper",
        image_size=256,
        base_channels=128,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.0,
        lr=2e-5,
        warmup_steps=5000,
        ema_rate=0.9999,
        batch_size=64,
        steps=500_000,
        sample_steps=50,
        repaint_steps=250,
        jump_length=10,
        jump_n_sample=10,
    ),
}


def check_config(config: DiffusionConfig) -> None:
    """A ``SamplerError`` for values that build no model or no diffusion."""
    if config.noise_schedule not in SCHEDULES:
        raise SamplerError(
            f"noise_schedule must be one of {', '.join(SCHEDULES)}, got {config.noise_schedule!r}"
        )
    if config.timesteps < 2:
        raise SamplerError(f"timesteps must be at least 2, got {config.timesteps}")
    if (
        config.base_channels < 1
        or not config.channel_mult
        or min(config.channel_mult) < 1
        or config.patch < 1
    ):
        raise SamplerError("base_channels, patch and every channel_mult must be positive")
    factor = config.patch * 2 ** (len(config.channel_mult) - 1)
    if config.image_size % factor:
        raise SamplerError(
            f"image_size {config.image_size} is not divisible by patch × 2^(levels − 1) = {factor} "
            f"(patch {config.patch}, {len(config.channel_mult)} channel_mult levels)"
        )


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [−1, 1]."""
    return 2 * x - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] -> [0, 1]."""
    return (x + 1) / 2


class DiffusionModel(nn.Module):
    """ε̂_θ and its training loss for one :class:`DiffusionConfig` (see the module docstring).

    ``alpha_bar`` ``(T,)`` is a non-persistent buffer (rebuilt from the config, not stored in the
    checkpoint). Shapes: images and masks ``(B, 1, S, S)`` in [0, 1] / {0, 1}.
    """

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        check_config(config)
        self.config = config
        self.schedule = make_schedule(config.noise_schedule, config.timesteps)
        self.register_buffer("alpha_bar", self.schedule.alpha_bar.float(), persistent=False)
        self.net = UNet(
            in_channels=3 if config.conditional else 1,
            base_channels=config.base_channels,
            channel_mult=tuple(config.channel_mult),
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=tuple(config.attention_resolutions),
            image_size=config.image_size,
            dropout=config.dropout,
            patch=config.patch,
        )

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ):
        """ε̂(x_t, t) ``(B, 1, S, S)``; the conditional model also takes ``y`` (model range) and ``mask``."""
        if self.config.conditional:
            out = self.net(torch.cat([x_t, y * mask, mask], dim=1), t)
        else:
            out = self.net(x_t, t)
        if self.config.eps_skip:
            out = out + self.skip_scale(t) * x_t
        return out

    def skip_scale(self, t: torch.Tensor) -> torch.Tensor:
        """√(1 − ᾱ_t) / (ᾱ_t σ_d² + 1 − ᾱ_t) ``(B, 1, 1, 1)``; the exact ε̂ of N(0, σ_d² I) is this · x_t."""
        a = self.alpha_bar[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() / (a * self.config.sigma_data**2 + 1 - a)

    def losses(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ε loss of one batch (Ho et al. Eq. 14) with ``t`` and ε from the global torch RNG."""
        x0 = to_model_range(x)
        t = torch.randint(0, self.config.timesteps, (len(x),), device=x.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, self.alpha_bar[t], noise)
        err = (self.eps(x_t, t, x0, mask) - noise).pow(2)  # (B, 1, S, S)
        if self.config.conditional:
            missing = 1 - mask
            loss = (err * missing).sum() / missing.sum().clamp_min(1)
        else:
            loss = err.mean()
        return {"loss": loss}

    def forward(self, x: torch.Tensor, mask: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        return self.losses(x, mask)

    def validate(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.losses(x, mask)
