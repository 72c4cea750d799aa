"""Frozen dataclass configs, named presets, and strict overrides.

``PRESETS`` holds the acquisition geometry shared by every part (image size, scan patch, grid,
number of completions). Model-specific configs live beside their models (classifiers/,
generative/) with presets of the same names, and every checkpoint and run stores its resolved
config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An unknown preset, an unknown key or a bad value in a config override."""


@dataclass(frozen=True)
class Preset:
    """Acquisition geometry of a preset (see the table in docs/ARCHITECTURE.md)."""

    name: str
    image_size: int
    patch_size: int
    grid: int = 17
    n_samples: int = 10


PRESETS: dict[str, Preset] = {
    "cpu": Preset("cpu", image_size=64, patch_size=16),
    "paper": Preset("paper", image_size=256, patch_size=64),
    # for tests: a few seconds end to end
    "tiny": Preset("tiny", image_size=32, patch_size=8, grid=5, n_samples=4),
}


def get_preset(name: str, table: dict[str, T] | None = None) -> T:
    """Look ``name`` up in ``table`` (default: :data:`PRESETS`); the error lists the valid names."""
    table = PRESETS if table is None else table
    if name not in table:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(table)}")
    return table[name]


def override(config: T, **changes: Any) -> T:
    """``dataclasses.replace`` that rejects unknown keys with a clear message (``None`` = keep)."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {type(config).__name__}; "
            f"valid: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) dataclass config."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a flat dataclass config from :func:`to_dict` output; unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)
