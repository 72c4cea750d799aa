"""Loading AIPO sampler checkpoints (kind ``sampler``, EMA weights) back into models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boed.runtime.checkpoints import load_checkpoint
from generative.aipo import AIPO
from generative.errors import SamplerError


def load_model(path: Path | str, device: str = "cpu") -> tuple[AIPO, dict[str, Any]]:
    """Rebuild an :class:`AIPO` from a ``sampler`` checkpoint (EMA weights)."""
    from boed.config import from_dict
    from generative.config import AIPOConfig as _C

    ckpt = load_checkpoint(path, kind="sampler", device=device)
    if ckpt.meta.get("model") != "aipo-hvae":
        raise SamplerError(
            f"{ckpt.path}: not an AIPO hierarchical-VAE checkpoint (model={ckpt.meta.get('model')!r})"
        )
    config = from_dict(_C, ckpt.config)
    model = AIPO(config).to(device)
    try:
        model.load_state_dict(ckpt.tensors)
    except RuntimeError as exc:
        raise SamplerError(f"{ckpt.path}: weights do not fit the config in its metadata ({exc})") from exc
    return model.eval(), ckpt.meta
