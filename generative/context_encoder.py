"""Context encoders: an encoder–decoder that fills the missing pixels in one forward pass.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by Inpainting"
(2016), as Burlin, Le Calonnec & Duperier, "Deep Image Inpainting" (2017) build and train them
(their §4–5). Three registry names share this family and differ only in the loss (``for_name``
sets ``config.loss``; a checkpoint records the name it was trained as and is refused under the
other two):

* ``context-encoder`` (``loss="l2"``): the reconstruction loss alone (§1, §4),
  ``L_rec = Σ w_p (G(x⊙m, m)_p − x_p)² / #missing``.
* ``context-encoder-adv`` (``loss="adv"``): the DCGAN variant, ``L_G = α L_rec + (1 − α) L_disc``
  (§5.1) with the learning tricks of §5.2: the discriminator sees *separate* real and fake batches
  (two forward passes, so its batch statistics never mix them), *soft and noisy labels* (real
  ``U(0.9, 1.1)``, fake ``U(0, 0.2)``, each label flipped to the other class with probability
  ``label_flip``), and the *non-saturating* generator loss ``−log D(x̂)`` instead of
  ``log(1 − D(x̂))``.
* ``context-encoder-wgan`` (``loss="wgan"``): §5.3, the Wasserstein critic of Arjovsky, Chintala
  & Bottou, "Wasserstein GAN" (2017): no sigmoid, weights clipped to ``±clip`` (the Lipschitz
  constraint, §5.3's "clipping"), ``n_critic`` critic updates per generator update (002 uses 10);
  ``L_G = α L_rec − (1 − α) E[D(x̂)]``.

The overlap trick (§5.4) is an option of all three: ``overlap`` > 0 px adds the band of *observed*
pixels within ``overlap`` px of the hole to the reconstruction loss with weight ``overlap_weight``
(002: 4 px at ×20; Pathak et al.'s code: ×10). The network predicts the whole image anyway (the
observed pixels are pasted back when sampling), so the band weights are the only change.

Architecture (002 §4): ``len(channels)`` 3×3 convolutions of stride 2 with batch norm and ReLU
(no pooling), then one convolution over the remaining ``r×r`` map to a ``bottleneck`` vector (002's
"stride-4 operation with 1024 filters" in place of a fully connected layer), then the mirror image
with transposed convolutions and a sigmoid output in [0, 1]. Discriminator (§5.1): pairs of 3×3
convolutions (stride 2, then 1) with LeakyReLU(0.2) per width of ``disc_channels`` (002: 6 convs),
a final 1×1 convolution to depth 1, averaged to one score per image. It sees the *whole* completed
image ``x̂ = m⊙x + (1−m)⊙G`` (002 §5.4 does this once the overlap trick hides the seam).

Deviations: arbitrary masks instead of a fixed centre square: the input is ``cat([x⊙m, m])``
(2 channels) and the loss runs over the missing pixels of each mask (so the centre-square L2 of
002 is the special case); training masks mix the AIPO masks (0–5 observed squares) and the centre
square (``masks``). The joint loss weight α is a choice of 002 made by eye and not stated; we take
Pathak et al.'s ``λ_rec = 0.999``, ``λ_adv = 0.001`` (``rec_weight``). Adam for every network.

**Deterministic.** The completion is a function of the observation: ``sample(..., n)`` returns
``n`` identical completions (``deterministic = True``). The EIG estimate of Eq. 17 of Harvey et al.
(2021) then degenerates to a point estimate: the information gain of that one completion, which
ignores all posterior uncertainty about the missing pixels.

Shapes: images and masks ``(B, 1, S, S)`` in [0, 1] / {0, 1}; completions ``(n, B, 1, S, S)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily

LOSSES = ("l2", "adv", "wgan")
OUT_WIDTH = 8  # channels of the last upsampled map (full resolution: the costliest layer on a CPU)
NAME_FOR_LOSS = {"l2": "context-encoder", "adv": "context-encoder-adv", "wgan": "context-encoder-wgan"}
LOSS_FOR_NAME = {v: k for k, v in NAME_FOR_LOSS.items()}


@dataclass(frozen=True)
class ContextEncoderConfig:
    """Architecture and training of a context encoder (see the module docstring).

    ``overlap`` px band (0 = off) weighted ``overlap_weight``; ``rec_weight`` is α of
    ``α L_rec + (1 − α) L_adv``; ``real_label``/``fake_label`` the soft-label ranges and
    ``label_flip`` the flip probability (adv); ``n_critic`` and ``clip`` the WGAN critic's updates
    per generator update and weight clip; ``masks`` comma-separated names of
    ``datasets.masks.MASKS`` mixed per image for training.
    """

    preset: str = "cpu"
    image_size: int = 64
    loss: str = "l2"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    bottleneck: int = 256
    disc_channels: tuple[int, ...] = (16, 32, 64)
    overlap: int = 0
    overlap_weight: float = 10.0
    rec_weight: float = 0.999
    real_label: tuple[float, float] = (0.9, 1.1)
    fake_label: tuple[float, float] = (0.0, 0.2)
    label_flip: float = 0.05
    n_critic: int = 10
    clip: float = 0.01
    lr: float = 2e-4
    lr_d: float = 2e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    grad_clip: float | None = None
    skip_threshold: float | None = None
    masks: str = "aipo,centre_square"
    steps: int = 3000
    batch_size: int = 32
    ema_rate: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise SamplerError(f"context encoder: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        r = self.image_size // 2 ** len(self.channels)
        if r < 1 or r * 2 ** len(self.channels) != self.image_size:
            raise SamplerError(
                f"context encoder: image_size {self.image_size} is not divisible by 2^{len(self.channels)} "
                "(one halving per entry of channels)"
            )
        if self.overlap < 0 or self.overlap_weight < 0:
            raise SamplerError("context encoder: overlap and overlap_weight must be >= 0")
        if not 0 <= self.rec_weight <= 1:
            raise SamplerError(f"context encoder: rec_weight must be in [0, 1], got {self.rec_weight}")
        if self.n_critic < 1:
            raise SamplerError(f"context encoder: n_critic must be >= 1, got {self.n_critic}")


PRESETS = {
    "tiny": ContextEncoderConfig(
        preset="tiny",
        image_size=32,
        channels=(8, 16, 32),
        bottleneck=32,
        disc_channels=(8, 16),
        steps=20,
        batch_size=8,
    ),
    "cpu": ContextEncoderConfig(preset="cpu"),
    "paper": ContextEncoderConfig(
        preset="paper",
        image_size=256,
        channels=(64, 64, 128, 256, 512, 512),
        bottleneck=4000,  # Pathak et al.: a 4000-unit bottleneck
        disc_channels=(64, 128, 256, 512),
        steps=100_000,
        batch_size=64,
        ema_rate=0.999,
    ),
}


# -- networks -------------------------------------------------------------------------------------
class Generator(nn.Module):
    """``cat([x⊙m, m]) (B, 2, S, S) -> completion (B, 1, S, S)`` in [0, 1]."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        chans = config.channels
        r = config.image_size // 2 ** len(chans)
        down, c_in = [], 2
        for c in chans:
            down += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        b = config.bottleneck
        down += [nn.Conv2d(c_in, b, r), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*down)  # (B, bottleneck, 1, 1)
        up = [nn.ConvTranspose2d(b, chans[-1], r), nn.BatchNorm2d(chans[-1]), nn.ReLU(inplace=True)]
        rev = list(reversed(chans))
        for c, c_out in zip(rev, [*rev[1:], OUT_WIDTH], strict=True):
            up += [
                nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        up += [nn.Conv2d(OUT_WIDTH, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    def forward(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(torch.cat([observed * mask, mask], 1))))


class Discriminator(nn.Module):
    """Whole image ``(B, 1, S, S)`` -> one score per image ``(B,)`` (a logit, or a WGAN critic value)."""

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        layers, c_in = [], 1
        for c in config.disc_channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(c, c, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c
        layers.append(nn.Conv2d(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((1, 2, 3))


def loss_weights(mask: torch.Tensor, overlap: int, overlap_weight: float) -> torch.Tensor:
    """Per-pixel weights of the reconstruction loss, ``(B, 1, S, S)``.

    1 on the missing pixels, ``overlap_weight`` on the observed pixels within ``overlap`` px
    (Chebyshev distance) of a missing one (002 §5.4's band), 0 elsewhere.
    """
    hole = 1 - mask
    if overlap <= 0:
        return hole
    near = F.max_pool2d(hole, 2 * overlap + 1, stride=1, padding=overlap)
    return hole + overlap_weight * near * mask


def soft_labels(n: int, real: bool, config: ContextEncoderConfig, device) -> torch.Tensor:
    """002 §5.2: real ``U(real_label)``, fake ``U(fake_label)``, each flipped w.p. ``label_flip``."""
    flip = torch.rand(n, device=device) < config.label_flip
    lo_r, hi_r = config.real_label
    lo_f, hi_f = config.fake_label
    u = torch.rand(n, device=device)
    as_real = flip ^ real  # a flipped real label is drawn from the fake range and vice versa
    return torch.where(as_real, lo_r + (hi_r - lo_r) * u, lo_f + (hi_f - lo_f) * u)


class ContextEncoder(nn.Module):
    """Generator (+ discriminator for the adversarial losses); ``forward(x, mask, phase) -> stats``.

    Phases: ``"g"`` the generator's loss (``α L_rec + (1 − α) L_adv``; ``L_rec`` alone for l2),
    ``"d"`` the discriminator's / critic's loss.
    """

    def __init__(self, config: ContextEncoderConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.generator = Generator(config)
        self.discriminator = Discriminator(config) if config.loss != "l2" else None

    def complete(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` completion, observed pixels pasted."""
        out = self.generator(observed, mask)
        return mask * observed + (1 - mask) * out

    def reconstruction(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Weighted squared error summed over the image, over the number of missing pixels (mean over B)."""
        c = self.config
        w = loss_weights(mask, c.overlap, c.overlap_weight)
        per_image = (w * (pred - x) ** 2).flatten(1).sum(1) / (1 - mask).flatten(1).sum(1).clamp_min(1)
        return per_image.mean()

    def _clip_critic(self) -> None:
        # WGAN: keep the critic's weights in [-clip, clip]; done before each use, so every critic
        # evaluation sees clipped weights (the trainer's optimiser step has no post-step hook)
        with torch.no_grad():
            for p in self.discriminator.parameters():
                p.clamp_(-self.config.clip, self.config.clip)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, phase: str = "g") -> dict[str, torch.Tensor]:
        c = self.config
        pred = self.generator(x * mask, mask)
        rec = self.reconstruction(pred, x, mask)
        stats = {"rec": rec.detach()}
        if c.loss == "l2":
            return stats | {"loss": rec}
        if c.loss == "wgan":
            self._clip_critic()
        fake = mask * x + (1 - mask) * pred
        disc = self.discriminator
        if phase == "d":
            fake = fake.detach()
            d_real, d_fake = disc(x), disc(fake)  # two separate, pure batches (002 §5.2)
            if c.loss == "wgan":
                loss = d_fake.mean() - d_real.mean()
                return stats | {"loss": loss, "wdist": -loss.detach()}
            n = x.shape[0]
            loss = F.binary_cross_entropy_with_logits(
                d_real, soft_labels(n, True, c, x.device)
            ) + F.binary_cross_entropy_with_logits(d_fake, soft_labels(n, False, c, x.device))
            acc = ((d_real > 0).float().mean() + (d_fake < 0).float().mean()) / 2
            return stats | {"loss": loss, "d_acc": acc.detach()}
        if phase != "g":
            raise SamplerError(f"context encoder: unknown phase {phase!r}")
        d_fake = disc(fake)
        if c.loss == "wgan":
            adv = -d_fake.mean()
        else:  # non-saturating: maximise log D(x̂) (002 §5.2)
            adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        loss = c.rec_weight * rec + (1 - c.rec_weight) * adv
        return stats | {"loss": loss, "adv": adv.detach()}

    @torch.no_grad()
    def validate(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        from generative.metrics import maem, mse_missing

        done = self.complete(x * mask, mask).unsqueeze(0)
        return {"mse": mse_missing(done, x, mask).mean(), "maem": maem(done, x, mask).mean()}


# -- the sampler --------------------------------------------------------------------------------------
class ContextEncoderSampler(ModelSampler):
    """boed's Sampler over a trained context encoder: ``n`` identical completions (a point estimate).

    ``sample(observed, mask, n)`` → ``Completions(images (n, B, 1, S, S))``; the generator is
    deterministic, so the EIG of Eq. 17 becomes the information gain of the one completion (see
    the module docstring). ``generator`` is accepted and unused.
    """

    deterministic = True

    def __init__(
        self, model: ContextEncoder, *, name: str, sha256: str | None = None, meta: dict | None = None
    ):
        super().__init__(model, name=name, sha256=sha256, meta=meta)

    def complete(self, observed, mask, n, generator):
        one = self.model.complete(observed, mask)  # (B, 1, S, S)
        return one.unsqueeze(0).expand(n, *one.shape).clone()


# -- the family ------------------------------------------------------------------------------------------
def mixed_masks(names: str):
    """A mask function drawing each image's mask uniformly from one of ``names`` (``MASKS``)."""
    from datasets.masks import MASKS

    chosen = [s.strip() for s in names.split(",") if s.strip()]
    bad = [s for s in chosen if s not in MASKS]
    if not chosen or bad:
        raise SamplerError(
            f"context encoder: masks {names!r}: unknown mask distribution(s) {', '.join(bad) or '(none)'}; "
            f"valid: {', '.join(MASKS)}"
        )

    def draw(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
        each = torch.stack([MASKS[k](n, size, generator=generator) for k in chosen])  # (K, n, 1, S, S)
        pick = torch.randint(0, len(chosen), (n,), generator=generator)
        return each[pick, torch.arange(n)]

    return draw


class ContextEncoderFamily(SamplerFamily):
    """``context-encoder`` / ``-adv`` / ``-wgan`` (see the module docstring).

    Phases: l2 one Adam phase ``main``; adv ``d`` then ``g`` every step; wgan ``d`` every step and
    ``g`` on every ``n_critic``-th step (``Phase(when=...)``). The EMA (``ema_rate`` > 0) follows the
    generator's updates.
    """

    model_id = "context-encoder"
    title = "context encoder"
    config_cls = ContextEncoderConfig
    presets = PRESETS
    names = tuple(NAME_FOR_LOSS.values())
    progress_keys = ("loss", "rec", "g.loss", "g.rec", "g.adv", "d.loss", "d.d_acc", "d.wdist")

    def for_name(self, config: ContextEncoderConfig, name: str) -> ContextEncoderConfig:
        if name not in LOSS_FOR_NAME:
            raise SamplerError(f"the context-encoder family serves {', '.join(self.names)}, not {name!r}")
        return dataclasses.replace(config, loss=LOSS_FOR_NAME[name])

    def kind(self, config: ContextEncoderConfig, name: str) -> str:
        return NAME_FOR_LOSS[config.loss]

    def build_model(self, config: ContextEncoderConfig, options=None) -> ContextEncoder:
        if options is not None and getattr(options, "pretrained_vae", None) is not None:
            raise SamplerError("--pretrained-vae is an AIPO option; a context encoder does not take it")
        return ContextEncoder(config)

    def masks(self, config: ContextEncoderConfig):
        return mixed_masks(config.masks)

    def phases(self, model: ContextEncoder, net, config: ContextEncoderConfig, ema):
        from boed.runtime.training import Phase

        betas = (config.adam_beta1, config.adam_beta2)
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=config.lr, betas=betas)
        common = dict(grad_clip=config.grad_clip, skip_threshold=config.skip_threshold)
        if config.loss == "l2":
            return [Phase(lambda b: net(b[0], b[1], "g"), opt_g, ema=ema, **common)]
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.lr_d, betas=betas)
        k = config.n_critic if config.loss == "wgan" else 1
        return [
            Phase(lambda b: net(b[0], b[1], "d"), opt_d, name="d", **common),
            Phase(
                lambda b: net(b[0], b[1], "g"),
                opt_g,
                name="g",
                ema=ema,
                when=None if k == 1 else (lambda s: s % k == k - 1),
                **common,
            ),
        ]

    def make_sampler(self, model: ContextEncoder, *, name: str, sha256, meta, **options):
        from generative.family import reject_options

        reject_options(name, options)
        return ContextEncoderSampler(model, name=name, sha256=sha256, meta=meta)


FAMILY = ContextEncoderFamily()
