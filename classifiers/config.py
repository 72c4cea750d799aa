"""Frozen dataclass configs of the AVP-CNN g and of its training, with named presets.

``ClassifierConfig`` is the architecture (stored in every checkpoint); ``TrainConfig`` the
training run. Both have presets named like :data:`boed.config.PRESETS` (``cpu``, ``paper``,
``tiny``); command-line options override single fields through :func:`boed.config.override`.
"""

from __future__ import annotations

from dataclasses import dataclass

from boed.config import ConfigError, get_preset
from datasets.labels import LABELS


@dataclass(frozen=True)
class ClassifierConfig:
    """A MONAI DenseNet on ``cat([x*m, m])`` (2 channels) with one logit per label.

    Attributes:
        image_size: side of the square input images (pixels).
        init_features, growth_rate, block_config, bn_size: MONAI ``DenseNet`` arguments;
            DenseNet-121 is ``(64, 32, (6, 12, 24, 16), 4)``.
        dropout: dropout probability inside the dense layers.
        labels: output order: the training data's label columns (default: the 14 ChestX-ray14
            findings plus ``Any``); any non-empty set of distinct names.

    Raises:
        ConfigError: a size or count below 1, dropout outside [0, 1), or labels empty, repeated or
            not names (naming the field).
    """

    image_size: int = 64
    init_features: int = 16
    growth_rate: int = 12
    block_config: tuple[int, ...] = (2, 4, 6)
    bn_size: int = 4
    dropout: float = 0.0
    labels: tuple[str, ...] = LABELS

    def __post_init__(self) -> None:
        # lists (from JSON or an override) become tuples, so the config stays hashable
        object.__setattr__(self, "block_config", tuple(self.block_config))
        object.__setattr__(self, "labels", tuple(self.labels))
        for name in ("image_size", "init_features", "growth_rate", "bn_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"config field {name}: must be at least 1, got {getattr(self, name)}", field=name
                )
        if not self.block_config or min(self.block_config) < 1:
            raise ConfigError(
                f"config field block_config: needs one or more dense blocks of at least 1 layer, "
                f"got {self.block_config}",
                field="block_config",
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config field dropout: must be in [0, 1), got {self.dropout}", field="dropout")
        if not self.labels or not all(isinstance(x, str) and x for x in self.labels):
            raise ConfigError(
                f"config field labels: needs one or more names, got {self.labels}", field="labels"
            )
        repeated = sorted({x for x in self.labels if self.labels.count(x) > 1})
        if repeated:
            raise ConfigError(f"config field labels: repeated {', '.join(repeated)}", field="labels")

    @property
    def in_channels(self) -> int:
        return 2  # masked image and mask

    @property
    def num_labels(self) -> int:
        return len(self.labels)


CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    # Small DenseNet: ~0.1 M parameters; the hot path of the controller (2,890 images per decision).
    "cpu": ClassifierConfig(image_size=64),
    # DenseNet-121 at 256 px, as in appendix B.4 of Harvey, Naderiparizi & Wood (2021).
    "paper": ClassifierConfig(
        image_size=256, init_features=64, growth_rate=32, block_config=(6, 12, 24, 16), bn_size=4
    ),
    # For tests: a few thousand parameters at 32 px.
    "tiny": ClassifierConfig(image_size=32, init_features=8, growth_rate=4, block_config=(1, 2), bn_size=2),
}


@dataclass(frozen=True)
class TrainConfig:
    """A training run of the AVP-CNN (see :mod:`classifiers.train`).

    Attributes:
        steps: optimiser updates; batch_size: images per update (per process under DDP).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to ``min_lr_frac * lr``.
        ema: EMA decay of the weights (0 = off); the EMA weights are the ones validated and saved.
        p_full, p_empty: fraction of training examples shown fully observed / fully hidden; the
            rest get masks from ``datasets.masks.classifier_masks`` (0-5 squares of 25% side).
        n_train, n_val: images in the training and validation splits.
        val_every: validate (and keep the best checkpoint) every this many steps.
        grad_clip, skip_threshold: see :func:`boed.runtime.training.train`.
        seed: everything random in the run derives from it.
    """

    steps: int = 8000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_frac: float = 0.02
    ema: float = 0.0
    p_full: float = 0.25
    p_empty: float = 0.05
    n_train: int = 16000
    n_val: int = 1000
    val_every: int = 500
    grad_clip: float = 5.0
    skip_threshold: float | None = 1e3
    seed: int = 0
    num_threads: int = 1


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(),
    "paper": TrainConfig(
        steps=32000, batch_size=32, lr=1e-4, warmup_steps=500, n_train=0, n_val=2000, val_every=2000
    ),
    "tiny": TrainConfig(
        steps=20, batch_size=16, lr=3e-3, warmup_steps=2, ema=0.0, n_train=64, n_val=32, val_every=10
    ),
}


def classifier_preset(name: str) -> ClassifierConfig:
    return get_preset(name, CLASSIFIER_PRESETS)


def train_preset(name: str) -> TrainConfig:
    return get_preset(name, TRAIN_PRESETS)
