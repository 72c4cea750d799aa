"""``PartialClassifier``: the AVP-CNN behind boed's ``Classifier`` protocol, and its checkpoints.

The BOED controller asks for ``predict`` on (candidates x completions) images per decision
(2,890 at a 17x17 grid with N = 10), so ``predict`` is the hot path: it validates shapes once,
then runs the network under ``torch.inference_mode`` in chunks of ``chunk_size`` images in
channels-last memory format (measurably faster for MONAI's DenseNet on CPU), and applies the
temperature fitted on validation data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from boed.config import ConfigError, from_dict, to_dict
from boed.runtime.checkpoints import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from classifiers.avp_cnn import AVPCNN
from classifiers.config import ClassifierConfig
from classifiers.errors import ClassifierError

KIND = "classifier"
# Images per forward pass come from this input-pixel budget: 256 at 64 px (measured on 2 cores:
# 4,000-5,200 img/s against 3,500 with 512, whose activations spill out of the caches), 16 at 256 px.
CHUNK_PIXELS = 256 * 64 * 64
WEIGHTS_DIR = Path(__file__).parent / "weights"
PREPROCESSING = {
    "input": "cat([x * m, m], dim=1)",
    "image_range": [0.0, 1.0],
    "photometric": "MONOCHROME2 (air dark, bone bright)",
    "mask": "1 = observed, 0 = hidden",
    "output": "sigmoid(logits / temperature)",
}


class PartialClassifier:
    """g(v | x*m, m) with ``labels``, ``image_size``, ``name``, ``sha256``, ``meta``.

    Args:
        model: the network (moved to ``device``, put in eval mode).
        temperature: logits are divided by it before the sigmoid.
        chunk_size: images per forward pass in ``predict``/``features``; ``None`` picks it from a
            memory budget of ``CHUNK_PIXELS`` input pixels (256 images at 64 px, 16 at 256 px).
    """

    def __init__(
        self,
        model: AVPCNN,
        *,
        temperature: float = 1.0,
        name: str = "avp-cnn",
        sha256: str | None = None,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        chunk_size: int | None = None,
    ):
        if not temperature > 0:
            raise ClassifierError(f"temperature must be > 0, got {temperature}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.config: ClassifierConfig = model.config
        self.labels: tuple[str, ...] = tuple(model.config.labels)
        self.image_size: int = model.config.image_size
        self.temperature = float(temperature)
        self.name = name
        self.sha256 = sha256
        self.meta = meta or {}
        self.chunk_size = chunk_size or max(1, CHUNK_PIXELS // (self.image_size * self.image_size))

    def __repr__(self) -> str:
        return (
            f"PartialClassifier(name={self.name!r}, image_size={self.image_size}, "
            f"labels={len(self.labels)}, temperature={self.temperature:.3g})"
        )

    # -- input checks: before any work ---------------------------------------------------------
    def check_inputs(self, observed: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise :class:`ClassifierError` unless both are ``(B, 1, S, S)`` with S = ``image_size``."""
        for what, t in (("observed", observed), ("mask", mask)):
            if not isinstance(t, torch.Tensor):
                raise ClassifierError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4:
                raise ClassifierError(f"{what} must be (B, 1, H, W), got shape {tuple(t.shape)}")
            if t.shape[1] != 1:
                raise ClassifierError(
                    f"{what} has {t.shape[1]} channels; the classifier takes grey images (B, 1, H, W)"
                )
            if t.shape[2] != self.image_size or t.shape[3] != self.image_size:
                raise ClassifierError(
                    f"{what} is {t.shape[2]}x{t.shape[3]} but the classifier {self.name!r} was trained on "
                    f"{self.image_size}x{self.image_size} images"
                )
        if observed.shape != mask.shape:
            raise ClassifierError(
                f"observed {tuple(observed.shape)} and mask {tuple(mask.shape)} differ in shape"
            )

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise :class:`ClassifierError` unless ``labels`` is this classifier's label order."""
        if tuple(labels) != self.labels:
            missing = [x for x in self.labels if x not in labels]
            extra = [x for x in labels if x not in self.labels]
            detail = (
                f"missing {missing}, extra {extra}" if missing or extra else "same names, different order"
            )
            raise ClassifierError(
                f"label set does not match classifier {self.name!r} ({detail}); "
                f"expected {', '.join(self.labels)}"
            )

    # -- inference ------------------------------------------------------------------------------
    def _chunks(self, observed: torch.Tensor, mask: torch.Tensor):
        for start in range(0, observed.shape[0], self.chunk_size):
            x = observed[start : start + self.chunk_size].to(self.device, torch.float32, non_blocking=True)
            m = mask[start : start + self.chunk_size].to(self.device, torch.float32, non_blocking=True)
            yield (
                x.contiguous(memory_format=torch.channels_last),
                m.contiguous(memory_format=torch.channels_last),
            )

    def logits(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Untempered logits ``(B, L)`` on the input's device."""
        self.check_inputs(observed, mask)
        with torch.inference_mode():
            out = [self.model(x, m) for x, m in self._chunks(observed, mask)]
            if not out:
                return torch.empty(0, len(self.labels), device=observed.device)
            return torch.cat(out).to(observed.device)

    def predict(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, L)`` = ``sigmoid(logits / temperature)``, on the input's device."""
        self.check_inputs(observed, mask)
        with torch.inference_mode():
            out = [
                torch.sigmoid(self.model(x, m) / self.temperature) for x, m in self._chunks(observed, mask)
            ]
            if not out:
                return torch.empty(0, len(self.labels), device=observed.device)
            return torch.cat(out).to(observed.device)

    def features(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled DenseNet features ``(B, F)`` (for Fréchet-style distances), on the input's device."""
        self.check_inputs(observed, mask)
        with torch.inference_mode():
            out = [self.model.features(x, m) for x, m in self._chunks(observed, mask)]
            if not out:
                return torch.empty(0, self.model.num_features, device=observed.device)
            return torch.cat(out).to(observed.device)

    __call__ = predict


# -- checkpoints ------------------------------------------------------------------------------------
ARCHITECTURE = (
    "MONAI DenseNet on cat([x*m, m]) (AVP-CNN; Harvey, Naderiparizi & Wood, 'Image Completion via "
    "Inference in Deep Generative Models', 2021, appendix B.4)"
)


def config_to_dict(config: ClassifierConfig) -> dict[str, Any]:
    return to_dict(config)


def config_from_dict(data: dict[str, Any], source: str | os.PathLike | None = None) -> ClassifierConfig:
    """A :class:`ClassifierConfig` from checkpoint JSON; bad fields raise :class:`ClassifierError`.

    The message names ``source`` (the JSON file) when given, and the field, expected type and value.
    """
    try:
        return from_dict(ClassifierConfig, data)
    except ConfigError as exc:
        prefix = f"{source}: " if source is not None else "checkpoint config is not a classifier config: "
        raise ClassifierError(f"{prefix}{exc}") from None


def save_classifier(
    path: str | os.PathLike,
    model: AVPCNN,
    *,
    temperature: float = 1.0,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``path``.safetensors + ``path``.json (config, labels, size, preprocessing, data, metrics).

    ``meta["labels"]`` (= ``config.labels``) is the output order of the network: the label set the
    classifier was trained on, which every later step reads from the checkpoint.
    """
    model = model.to(memory_format=torch.contiguous_format)
    meta = {
        "kind": KIND,
        "name": Path(checkpoint_paths(path)[0]).with_suffix("").name,
        "architecture": ARCHITECTURE,
        "config": config_to_dict(model.config),
        "labels": list(model.config.labels),
        "image_size": model.config.image_size,
        "in_channels": model.config.in_channels,
        "preprocessing": PREPROCESSING,
        "temperature": float(temperature),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": data or {},
        "metrics": metrics or {},
        "training": training or {},
        **(extra or {}),
    }
    tensors = {k: v for k, v in model.state_dict().items()}
    return save_checkpoint(path, tensors, meta)


def shipped_checkpoint(preset: str = "cpu") -> Path:
    """Path stem of the shipped phantom checkpoint of ``preset``."""
    return WEIGHTS_DIR / f"phantom-{preset}"


def weights_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """``None`` when ``found`` has exactly the tensor names and shapes of ``expected``, else one line.

    The line counts the differing tensors and names the first (in the network's order):
    ``37 tensors differ, first features.conv0.weight: file (16, 2, 3, 3), config (32, 2, 3, 3)``.
    """
    differ: list[str] = []
    for name, tensor in expected.items():
        if name not in found:
            differ.append(f"{name}: missing from the file")
        elif tuple(found[name].shape) != tuple(tensor.shape):
            differ.append(f"{name}: file {tuple(found[name].shape)}, config {tuple(tensor.shape)}")
    differ += [
        f"{name}: in the file, not in the configured network" for name in found if name not in expected
    ]
    if not differ:
        return None
    verb = "tensors differ" if len(differ) > 1 else "tensor differs"
    return f"{len(differ)} {verb}, first {differ[0]}"


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """``None`` when every floating tensor is finite, else a line naming the first bad tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            bad = ~torch.isfinite(tensor)
            if bad.any():
                return f"tensor {name} holds {int(bad.sum())} non-finite value(s) (NaN or inf)"
    return None


def load_classifier(
    path: str | os.PathLike | None = None,
    *,
    preset: str = "cpu",
    device: str | torch.device = "cpu",
    labels: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> PartialClassifier:
    """Load a classifier checkpoint (``None``: the shipped one of ``preset``) and verify it.

    Every failure is one :class:`ClassifierError` line naming the file: missing, truncated or
    tampered (sha256), not a classifier, a config field of the wrong type or value, weights that do
    not fit the config (the number of differing tensors and the first), weights with NaN/inf, a bad
    temperature, or ``labels`` given and different from the checkpoint's.
    """
    if isinstance(device, str):
        from boed.runtime.devices import resolve_device

        try:
            device = resolve_device(device)
        except ValueError as exc:
            raise ClassifierError(str(exc)) from exc
    if path is None:
        path = shipped_checkpoint(preset)
        if not checkpoint_paths(path)[1].is_file():
            raise ClassifierError(
                f"no shipped classifier checkpoint for preset {preset!r} ({path}.json); "
                f"train one with `boed train-classifier --preset {preset} --out CKPT` and pass its path"
            )
    try:
        ckpt = load_checkpoint(path, kind=KIND, device="cpu")
    except CheckpointError as exc:
        raise ClassifierError(str(exc)) from exc
    meta, weights = ckpt.meta, ckpt.path
    sidecar = checkpoint_paths(weights)[1]
    config = config_from_dict(meta.get("config"), source=sidecar)
    if list(config.labels) != list(meta.get("labels", config.labels)):
        raise ClassifierError(f"{sidecar}: label order in the config and in the metadata differ")
    temperature = meta.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 < temperature < math.inf
    ):
        raise ClassifierError(f"{sidecar}: temperature must be a positive number, got {temperature!r}")
    model = AVPCNN(config)
    problem = weights_mismatch(model.state_dict(), ckpt.tensors)
    if problem is not None:
        raise ClassifierError(f"{weights}: weights do not fit the config: {problem}")
    problem = first_non_finite(ckpt.tensors)
    if problem is not None:
        raise ClassifierError(f"{weights}: {problem}; the checkpoint is unusable")
    model.load_state_dict(ckpt.tensors, strict=True)
    classifier = PartialClassifier(
        model,
        temperature=float(temperature),
        name=str(meta.get("name", weights.with_suffix("").name)),
        sha256=ckpt.sha256,
        meta=meta,
        device=device,
        chunk_size=chunk_size,
    )
    if labels is not None:
        classifier.check_labels(labels)
    return classifier
