"""DCGAN of Yeh et al., "Semantic Image Inpainting with Deep Generative Models" (2017), §3.4.

The generator maps ``z ~ U[-1, 1]^100`` through a 4×4 transposed convolution and a stack of
stride-2 transposed convolutions (batch norm + ReLU, channels halving as the size doubles) to a
``tanh`` image; the discriminator is "structured essentially in reverse order" (stride-2
convolutions, channels doubling, batch norm except on the first layer, LeakyReLU 0.2) ending in one
logit: Yeh's "two class softmax" is a sigmoid of one logit (the same model, one output fewer).
The architecture and training recipe are Radford, Metz & Chintala, "Unsupervised Representation
Learning with Deep Convolutional Generative Adversarial Networks" (2016): Adam(2e-4, β = (0.5,
0.999)), N(0, 0.02) weights, the non-saturating generator loss, one discriminator step per
generator step (two trainer phases, ``d`` then ``g``).

Shapes: images ``(B, 1, S, S)`` in [0, 1] outside the model (``tanh``'s [-1, 1] inside), ``S = 4·2^L``
(``L`` doubling layers; 32 px: 3, 64 px: 4, 256 px: 6); ``z`` ``(B, 100)``.

Deviations: grayscale (1 channel) at the preset sizes instead of 64×64×3; no horizontal-flip
augmentation (Yeh §3.4 flips faces; a chest radiograph is not left–right symmetric); widths scaled
down for the CPU preset (base width 16 instead of 64–128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.errors import SamplerError
from generative.gan.family import GANFamily


@dataclass(frozen=True)
class DCGANConfig:
    """Architecture, training recipe and the latent-search defaults of ``gan-yeh``."""

    preset: str
    image_size: int
    width: int = 16  # channels of the last generator / first discriminator layer
    latent_dim: int = 100
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    ema_rate: float = 0.0
    # latent search (sampling) defaults; the sampler's options override them
    search_loss: str = "yeh"
    search_iterations: int = 1500
    search_lr: float = 0.01
    search_patience: int = 100
    blend: bool = True
    langevin: float = 0.0


PRESETS: dict[str, DCGANConfig] = {
    "tiny": DCGANConfig(
        preset="tiny", image_size=32, width=4, latent_dim=16, steps=20, batch_size=8, search_iterations=4
    ),
    "cpu": DCGANConfig(preset="cpu", image_size=64, width=8, steps=3000, batch_size=16),
    "paper": DCGANConfig(preset="paper", image_size=256, width=64, steps=50000, batch_size=64),
}


def doublings(image_size: int) -> int:
    """``L`` with ``image_size = 4·2^L`` (``L ≥ 2``); a ``SamplerError`` otherwise."""
    levels = math.log2(image_size / 4) if image_size > 0 else -1
    if levels < 2 or levels != int(levels):
        raise SamplerError(f"image_size must be 4·2^L with L >= 2 (16, 32, 64, ...), got {image_size}")
    return int(levels)


def init_dcgan(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights N(0, 0.02), batch norm scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """``z (B, Z) -> (B, 1, S, S)`` in [-1, 1]."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        levels = doublings(config.image_size)
        chans = [config.width * 2 ** (levels - 1 - k) for k in range(levels)]  # 4x4 ... S/2
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, chans[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """``(B, 1, S, S)`` in [-1, 1] -> logits ``(B,)`` (``D = sigmoid(logit)``: probability of real)."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        levels = doublings(config.image_size)
        chans = [config.width * 2**k for k in range(levels)]  # S/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(1, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class DCGAN(nn.Module):
    """Generator and discriminator; ``forward(x, mask, phase)`` is one phase's losses.

    ``phase = "d"``: ``−log D(x) − log(1 − D(G(z)))``; ``phase = "g"``: ``−log D(G(z))``. The mask
    is ignored: the GAN trains on full images (Yeh §3: "trained with uncorrupted data").

    Deviation: real and generated images go through the discriminator as *one* batch (in both
    phases), so its batch norm normalises them with shared statistics. Radford et al.'s reference
    code passes them as two batches; at our small widths that let each batch norm remove the
    generated batch's own mean and scale, and the generator's image mean never moved from 0.5
    (measured: 100 steps on phantoms, image std 0.04 with separate batches, 0.12 and mean 0.60,
    the data's 0.58, with one batch).
    """

    z_bounds = (-1.0, 1.0)

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.generator = DCGANGenerator(config)
        self.discriminator = DCGANDiscriminator(config)
        init_dcgan(self)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def sample_latent(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """``z ~ U[-1, 1]`` of shape ``(*shape, Z)`` on the model's device (drawn on the CPU)."""
        z = torch.rand(*shape, self.latent_dim, generator=generator) * 2 - 1
        return z.to(next(self.parameters()).device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)`` in [0, 1], ``(K, 1, S, S)``."""
        return (self.generator(z) + 1) / 2

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit of images in [0, 1], ``(K,)``."""
        return self.discriminator(x * 2 - 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        z = self.sample_latent((len(x),))
        real, b = x * 2 - 1, len(x)
        if phase == "d":
            with torch.no_grad():
                fake = self.generator(z)
            logits = self.discriminator(torch.cat([real, fake]))  # one batch norm batch (docstring)
            real_logit, fake_logit = logits[:b], logits[b:]
            loss = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            return {
                "loss": loss,
                "real": torch.sigmoid(real_logit).mean().detach(),
                "fake": torch.sigmoid(fake_logit).mean().detach(),
            }
        if phase == "g":
            fake_logit = self.discriminator(torch.cat([real, self.generator(z)]))[b:]
            return {"loss": F.softplus(-fake_logit).mean(), "fake": torch.sigmoid(fake_logit).mean().detach()}
        raise ValueError(f"unknown phase {phase!r} (d or g)")

    @torch.no_grad()
    def validate(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
        """Discriminator loss and mean ``D`` on real and generated images (eval mode)."""
        real = self.critic(x)
        fake = self.discriminator(self.generator(self.sample_latent((len(x),))))
        return {
            "d_loss": float(F.softplus(-real).mean() + F.softplus(fake).mean()),
            "d_real": float(torch.sigmoid(real).mean()),
            "d_fake": float(torch.sigmoid(fake).mean()),
        }


class DCGANFamily(GANFamily):
    """``gan-yeh``: the DCGAN, its discriminator and generator phases (one each per step)."""

    model_id = "dcgan-yeh"
    title = "DCGAN (Yeh et al. 2017)"
    config_cls = DCGANConfig
    presets = PRESETS
    names = ("gan-yeh",)
    progress_keys = ("d.loss", "g.loss", "d.real", "d.fake")
    model_cls = DCGAN
    losses = ("yeh", "yeh+grad")

    def phases(self, model, net, config, ema):
        from boed.runtime.training import Phase

        opt_d, opt_g = self._optimizers(model, config)
        return [
            Phase(lambda b: net(b[0], b[1], "d"), opt_d, name="d"),
            Phase(lambda b: net(b[0], b[1], "g"), opt_g, name="g", ema=ema),
        ]


FAMILY = DCGANFamily()
