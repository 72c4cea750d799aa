"""Improved WGAN-GP of Vitoria et al., "Semantic image inpainting through improved Wasserstein
generative adversarial networks" (2018), §3.1 and §4.

The Wasserstein GAN with gradient penalty of Gulrajani et al., "Improved Training of Wasserstein
GANs" (2017), with Vitoria's architecture changes:

* residual blocks in generator (up: BN → ReLU → ×2 nearest → 3×3 conv → BN → ReLU → 3×3 conv, plus a
  ×2 → 1×1 conv shortcut) and critic (down: LN → ReLU → 3×3 conv → LN → ReLU → 3×3 conv → 2×2 average
  pool, plus an average pool → 1×1 conv shortcut);
* no fully connected layers except the generator's first projection of ``z`` (reshaped to 4×4 ×
  ``8·width``) and the critic's flattening of its last 4×4 features into one scalar;
* layer normalisation instead of batch norm in the critic (the gradient penalty is per input):
  ``GroupNorm(1, C)``, i.e. normalised over (C, H, W) of each image with a per-channel affine;
* ReLU everywhere, ``tanh`` output; ``z ~ N(0, I)^128``;
* Adam(1e-4, β = (0, 0.9)), penalty weight λ = 10 (Gulrajani), ``n_critic`` critic updates per
  generator update (5, Gulrajani; Vitoria does not state it): the trainer's ``critic`` phase runs
  every step (each on a fresh batch), the ``g`` phase on every ``n_critic``-th step.

Shapes: images ``(B, 1, S, S)`` in [0, 1] outside ([-1, 1] inside), ``S = 4·2^L``; ``z`` ``(B, 128)``.

Deviations: grayscale, preset sizes and widths (CPU preset base width 8: 64 channels at 4×4 instead
of 512), no horizontal flips (see :mod:`generative.gan.dcgan`). At the CPU preset
(``strided_stem``) the outermost resolution is a stride-2 transposed convolution in the generator
and a stride-2 4×4 convolution in the critic instead of a residual block each: the 3×3 convolutions
at 64×64 took most of the time of a gradient-penalty step (~4× faster without them on one CPU
thread), which decides how many steps fit the CPU budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from generative.errors import SamplerError
from generative.gan.dcgan import doublings
from generative.gan.family import GANFamily


@dataclass(frozen=True)
class WGANConfig:
    """Architecture, training recipe and the latent-search defaults of ``wgan-vitoria``."""

    preset: str
    image_size: int
    width: int = 8
    latent_dim: int = 128
    steps: int = 2000  # critic steps; the generator steps every n_critic-th one
    batch_size: int = 32
    lr: float = 1e-4
    adam_beta1: float = 0.0
    adam_beta2: float = 0.9
    n_critic: int = 5
    gp_weight: float = 10.0
    strided_stem: bool = False  # outermost resolution: a stride-2 (transposed) conv, not a block
    ema_rate: float = 0.0
    # latent search (sampling) defaults (Vitoria §4: Adam 0.03, (0.9, 0.999), 1,000 iterations,
    # z restricted to [-1, 1]); the sampler's options override them
    search_loss: str = "vitoria"
    search_iterations: int = 1000
    search_lr: float = 0.03
    search_patience: int = 100
    z_clamp: float = 1.0
    blend: bool = True
    langevin: float = 0.0


PRESETS: dict[str, WGANConfig] = {
    "tiny": WGANConfig(
        preset="tiny",
        image_size=32,
        width=2,
        latent_dim=16,
        steps=20,
        batch_size=8,
        n_critic=2,
        search_iterations=4,
    ),
    "cpu": WGANConfig(preset="cpu", image_size=64, width=4, strided_stem=True, steps=3000, batch_size=16),
    "paper": WGANConfig(preset="paper", image_size=256, width=64, steps=250000, batch_size=64),
}


def layer_norm(channels: int) -> nn.Module:
    """Layer normalisation over (C, H, W) of each image (with a per-channel scale and shift)."""
    return nn.GroupNorm(1, channels)


class ResBlockUp(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, 1, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class ResBlockDown(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            layer_norm(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 3, 1, 1),
            layer_norm(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1),
            nn.AvgPool2d(2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class WGANGenerator(nn.Module):
    """``z (B, Z) -> (B, 1, S, S)`` in [-1, 1]."""

    def __init__(self, config: WGANConfig):
        super().__init__()
        levels = doublings(config.image_size)
        chans = [config.width * 2 ** min(3, levels - 1 - k) for k in range(levels)]
        self.start = chans[0]
        self.project = nn.Linear(config.latent_dim, 16 * self.start)
        blocks = chans[:-1] if config.strided_stem else chans
        ins = [self.start, *blocks[:-1]]
        self.blocks = nn.Sequential(*[ResBlockUp(i, o) for i, o in zip(ins, blocks, strict=True)])
        last = blocks[-1]
        to_image = (
            nn.ConvTranspose2d(last, 1, 4, 2, 1) if config.strided_stem else nn.Conv2d(last, 1, 3, 1, 1)
        )
        self.out = nn.Sequential(nn.BatchNorm2d(last), nn.ReLU(), to_image, nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), self.start, 4, 4)
        return self.out(self.blocks(h))


class WGANCritic(nn.Module):
    """``(B, 1, S, S)`` in [-1, 1] -> critic values ``(B,)`` (unbounded)."""

    def __init__(self, config: WGANConfig):
        super().__init__()
        levels = doublings(config.image_size)
        chans = [config.width * 2 ** min(3, k + 1) for k in range(levels)]
        if config.strided_stem:
            chans = chans[1:]
            self.inp = nn.Conv2d(1, config.width * 2, 4, 2, 1)
        else:
            self.inp = nn.Conv2d(1, config.width, 3, 1, 1)
        ins = [self.inp.out_channels, *chans[:-1]]
        self.blocks = nn.Sequential(*[ResBlockDown(i, o) for i, o in zip(ins, chans, strict=True)])
        self.out = nn.Sequential(layer_norm(chans[-1]), nn.ReLU(), nn.Flatten(), nn.Linear(16 * chans[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x))).flatten()


class WGANGP(nn.Module):
    """Generator and critic; ``forward(x, mask, phase)`` is one phase's losses.

    ``phase = "critic"``: ``E[D(G(z))] − E[D(x)] + λ·E[(‖∇D(x̂)‖₂ − 1)²]`` with ``x̂`` uniformly on
    the segment between a real and a generated image (Gulrajani Alg. 1), stats ``wasserstein`` =
    ``E[D(x)] − E[D(G(z))]`` (the critic's estimate of the Wasserstein-1 distance) and ``gp``;
    ``phase = "g"``: ``−E[D(G(z))]``. The mask is ignored (trained on full images, Vitoria §4).
    """

    def __init__(self, config: WGANConfig):
        super().__init__()
        self.config = config
        self.generator = WGANGenerator(config)
        self.discriminator = WGANCritic(config)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def z_bounds(self) -> tuple[float, float]:
        return (-self.config.z_clamp, self.config.z_clamp)

    def sample_latent(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """``z ~ N(0, I)`` of shape ``(*shape, Z)`` on the model's device (drawn on the CPU)."""
        return torch.randn(*shape, self.latent_dim, generator=generator).to(next(self.parameters()).device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)`` in [0, 1], ``(K, 1, S, S)``."""
        return (self.generator(z) + 1) / 2

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """``D`` of images in [0, 1], ``(K,)``."""
        return self.discriminator(x * 2 - 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        z = self.sample_latent((len(x),))
        if phase == "critic":
            real = x * 2 - 1
            with torch.no_grad():
                fake = self.generator(z)
            eps = torch.rand(len(x), 1, 1, 1, device=x.device)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            d_real, d_fake = self.discriminator(real), self.discriminator(fake)
            (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
            gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
            w = d_real.mean() - d_fake.mean()
            return {"loss": -w + self.config.gp_weight * gp, "wasserstein": w.detach(), "gp": gp.detach()}
        if phase == "g":
            return {"loss": -self.discriminator(self.generator(z)).mean()}
        raise ValueError(f"unknown phase {phase!r} (critic or g)")

    @torch.no_grad()
    def validate(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
        """The critic's Wasserstein estimate on validation images (eval mode)."""
        real = self.critic(x)
        fake = self.discriminator(self.generator(self.sample_latent((len(x),))))
        return {"wasserstein": float(real.mean() - fake.mean()), "d_real": float(real.mean())}


class WGANFamily(GANFamily):
    """``wgan-vitoria``: the critic phase every step, the generator every ``n_critic``-th."""

    model_id = "wgan-gp-vitoria"
    title = "improved WGAN-GP (Vitoria et al. 2018)"
    config_cls = WGANConfig
    presets = PRESETS
    names = ("wgan-vitoria",)
    progress_keys = ("critic.loss", "critic.wasserstein", "critic.gp", "g.loss")
    model_cls = WGANGP
    losses = ("vitoria",)

    def phases(self, model, net, config, ema):
        from boed.runtime.training import Phase

        if config.n_critic < 1:
            raise SamplerError(f"n_critic must be >= 1, got {config.n_critic}")
        opt_d, opt_g = self._optimizers(model, config)
        k = config.n_critic
        return [
            Phase(lambda b: net(b[0], b[1], "critic"), opt_d, name="critic"),
            Phase(lambda b: net(b[0], b[1], "g"), opt_g, name="g", ema=ema, when=lambda s: s % k == k - 1),
        ]


FAMILY = WGANFamily()
