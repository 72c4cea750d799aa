"""Frozen dataclass configs, named presets, and strict overrides.

``PRESETS`` holds the acquisition geometry shared by every part (image size, scan patch, grid,
number of completions). Model-specific configs live beside their models (classifiers/,
generative/) with presets of the same names, and every checkpoint and run stores its resolved
config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An unknown preset, an unknown key or a bad value in a config or a config override.

    ``field`` names the offending config field when there is one (else ``None``).
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


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
    """Rebuild a dataclass config from :func:`to_dict` output (e.g. read back from JSON).

    Every value is checked against the field's annotation: ``int``, ``float`` (an int is accepted
    and converted), ``bool``, ``str``, ``tuple[X, ...]`` / ``tuple[X, Y]`` of those (a JSON list
    becomes a tuple), ``X | None``, and other classes by ``isinstance``. A field annotated with
    anything else (``Any``, a ``Literal``, ...) is passed through unchecked.

    Raises:
        ConfigError: ``data`` is not a dict, has unknown keys, lacks a field without a default,
            or a value of the wrong type; the message names the field, the expected type and the
            value (``config field growth_rate: expected int, got 'twelve'``) and ``.field`` holds
            the field's name.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config of {cls.__name__}: expected a JSON object, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} for {cls.__name__}", field=unknown[0])
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config of {cls.__name__} lacks field(s) {', '.join(missing)}", field=missing[0])
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # annotations that cannot be resolved here: leave unchecked
        hints = {}
    kwargs = {}
    for name, value in data.items():
        ok, converted = _convert(value, hints.get(name, Any))
        if not ok:
            raise ConfigError(
                f"config field {name}: expected {_type_name(hints[name])}, got {_show(value)}", field=name
            )
        kwargs[name] = converted
    return cls(**kwargs)


def _convert(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(True, value converted to tp)`` if ``value`` is a valid ``tp``, else ``(False, None)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return True, value
    if tp is type(None):
        return value is None, None
    if origin in (typing.Union, types.UnionType):
        for member in args:
            ok, converted = _convert(value, member)
            if ok:
                return True, converted
        return False, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    if tp is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            return False, None
        if not args:  # bare ``tuple``
            members = [Any] * len(value)
        elif len(args) == 2 and args[1] is Ellipsis:
            members = [args[0]] * len(value)
        else:
            members = [a for a in args if a != ()]  # ``tuple[()]`` is the empty tuple
        if len(members) != len(value):
            return False, None
        out = []
        for item, member in zip(value, members, strict=True):
            ok, converted = _convert(item, member)
            if not ok:
                return False, None
            out.append(converted)
        return True, tuple(out)
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # an annotation this checker does not know: pass through


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})" if args else "a list"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
