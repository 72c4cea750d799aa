"""Frozen dataclass configs and named presets of the AIPO sampler (model shape + training recipe).

Presets share names with ``boed.config.PRESETS``:

* ``tiny``: 32×32, width 8, for tests (seconds).
* ``cpu``: 64×64, width 32, 13 latent groups from 1×1 to 64×64, 0.32 M parameters: the shipped
  checkpoint trained in 46 min on one shared CPU thread; 10 completions of one image take ~100 ms.
* ``paper``: the VD-VAE FFHQ-256 architecture of Child (2020) that Harvey et al., "Image Completion via
  Inference in Deep Generative Models" (2021) (appendix B.1, B.4) uses for Chest X-ray 14 at 256×256: width
  512, zdim 16, 10 mixtures, the same block strings, grad clip 130 / skip threshold 180 (the paper raised
  the VAE's skip threshold to 15 000 and used batch 8; AIPO itself used the original 100 with batch 8), lr
  1.5e-4.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from boed.config import get_preset, override
from generative.vdvae import Architecture

OBJECTIVES = ("vae", "aipo", "aipo-r", "vae+aipo", "vae+aipo-r")


@dataclass(frozen=True)
class AIPOConfig:
    """Everything that defines a trained sampler: architecture, objective and training recipe."""

    preset: str
    image_size: int
    width: int
    zdim: int
    enc_blocks: str
    dec_blocks: str
    bottleneck: float = 0.25
    n_mixtures: int = 10
    no_bias_above: int = 64
    grad_checkpoint: bool = False
    # training
    objective: str = "vae+aipo"
    lr: float = 2e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.9
    warmup_steps: int = 100
    grad_clip: float = 200.0
    skip_threshold: float = 400.0
    ema_rate: float = 0.999
    batch_size: int = 32
    steps: int = 1000
    mask_side_frac: float = 0.35
    # sampling
    temperature: float = 1.0
    pixel_noise: bool = False

    def arch(self) -> Architecture:
        # the model half of the preset: every Architecture field, read from this flat config
        return Architecture(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Architecture)})


PRESETS: dict[str, AIPOConfig] = {
    "tiny": AIPOConfig(
        preset="tiny",
        image_size=32,
        width=8,
        zdim=4,
        n_mixtures=3,
        enc_blocks="32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1",
        dec_blocks="1x1,4m1,4x1,8m4,16m8,32m16",
        batch_size=8,
        steps=20,
        warmup_steps=5,
    ),
    "cpu": AIPOConfig(
        preset="cpu",
        image_size=64,
        width=32,
        zdim=8,
        n_mixtures=5,
        enc_blocks="64x1,64d2,32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x1",
        dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x1,64m32",
        lr=1e-3,
        batch_size=16,
        steps=6000,
        warmup_steps=50,
        ema_rate=0.998,
    ),
    "paper": AIPOConfig(
        preset="paper",
        image_size=256,
        width=512,
        zdim=16,
        n_mixtures=10,
        no_bias_above=64,
        enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
        lr=1.5e-4,
        grad_clip=130.0,
        skip_threshold=180.0,
        batch_size=8,
        steps=50_000,
        objective="aipo",
        grad_checkpoint=True,
    ),
}


def get_config(preset: str = "cpu", **changes) -> AIPOConfig:
    """The preset's config with ``changes`` applied (``None`` values keep the preset's)."""
    return override(get_preset(preset, PRESETS), **changes)
