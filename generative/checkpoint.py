"""Loading AIPO sampler checkpoints (kind ``sampler``, EMA weights) back into models.

The checks (wrong family, bad config, weights that do not fit, non-finite weights: one line naming
the file) are those of every family, :func:`generative.family.load_family_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generative.aipo import AIPO, FAMILY
from generative.family import load_family_model


def load_model(path: Path | str, device: str = "cpu") -> tuple[AIPO, dict[str, Any]]:
    """Rebuild an :class:`AIPO` from a ``sampler`` checkpoint; returns ``(model in eval mode, meta)``."""
    model, meta = load_family_model(path, FAMILY, device)
    return model, meta
