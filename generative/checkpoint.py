"""Loading AIPO sampler checkpoints (kind ``sampler``, EMA weights) back into models.

Every way a checkpoint can fail to fit is one line naming the file (``SamplerError``; a missing,
unreadable or corrupt pair is ``CheckpointError`` from :mod:`boed.runtime.checkpoints`):

* not an AIPO checkpoint (``model`` is not ``aipo-hvae``);
* a config field of the wrong type or unknown / missing (``boed.config.from_dict``), or values
  that do not build a model (e.g. a bad block string);
* weights that do not fit the config's architecture: the number of mismatching tensors and the
  first one, with both shapes (or the first missing / unexpected name);
* non-finite weights (NaN or ±inf): the first bad tensor and how many of its values are bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from boed.runtime.checkpoints import checkpoint_paths, load_checkpoint
from generative.aipo import AIPO
from generative.errors import SamplerError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _shape(t: Any) -> str:
    return "(" + ", ".join(str(d) for d in getattr(t, "shape", ())) + ")"


def architecture_mismatch(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str | None:
    """One sentence describing how ``found`` tensors differ from ``expected`` (a state dict), or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of {len(expected)} tensors have other shapes (first: {k} is "
            f"{_shape(found[k])} in the file, {_shape(expected[k])} for the config)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts)


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """``"name (k of n values)"`` of the first floating tensor holding NaN or ±inf, or None."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{name} ({bad} of {t.numel()} values)"
    return None


def load_model(path: Path | str, device: str = "cpu") -> tuple[AIPO, dict[str, Any]]:
    """Rebuild an :class:`AIPO` from a ``sampler`` checkpoint (EMA weights); see the module docstring.

    Returns the model in eval mode on ``device`` and the checkpoint's JSON metadata.
    """
    from boed.config import ConfigError, from_dict
    from generative.config import AIPOConfig

    ckpt = load_checkpoint(path, kind="sampler", device=device)
    sidecar = checkpoint_paths(ckpt.path)[1]
    if ckpt.meta.get("model") != "aipo-hvae":
        raise SamplerError(
            f"{sidecar}: not an AIPO hierarchical-VAE checkpoint (model={ckpt.meta.get('model')!r})"
        )
    try:
        config = from_dict(AIPOConfig, ckpt.config)
    except ConfigError as exc:
        raise SamplerError(f"{sidecar}: bad config in the metadata: {_one_line(exc)}") from exc
    try:
        model = AIPO(config)
    except (SamplerError, ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        raise SamplerError(f"{sidecar}: its config does not build a model ({_one_line(exc)})") from exc
    mismatch = architecture_mismatch(model.state_dict(), ckpt.tensors)
    if mismatch:
        raise SamplerError(f"{ckpt.path}: weights do not fit the architecture in {sidecar.name}: {mismatch}")
    bad = first_non_finite(ckpt.tensors)
    if bad:
        raise SamplerError(f"{ckpt.path}: non-finite weights (NaN or inf) in {bad}")
    model.load_state_dict(ckpt.tensors)
    return model.to(device).eval(), ckpt.meta
