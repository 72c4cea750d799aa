"""The store's plain values: the records it returns and the converters of what it is given.

Nothing here touches the database: :class:`RunRecord` and :class:`SessionRecord` are the frozen
dataclasses the read API returns, and the converters turn numbers, arrays, tensors and configs
into what the JSON and float columns hold (NaN and inf become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from boed.store.errors import StoreError

RUN_STATUSES = ("running", "done", "failed", "interrupted")
"""``running``; ``done``; ``failed``: stopped by an unexpected error (a bug, or a part that broke
for every image); ``interrupted``: stopped before the end by Ctrl-C, SIGTERM or a store fault
(``--resume`` continues it). ``runs.error`` says why a run stopped."""
SESSION_STATUSES = ("running", "done", "failed")
RUN_KINDS = ("simulation", "acquisition")
"""``simulation``: ``boed simulate``; ``acquisition``: a real acquisition through
``boed.acquisition.Controller`` (docs/acquisition.md)."""
MAX_ERROR_CHARS = 10_000


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` (see docs/store.md)."""

    run_id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    config: dict[str, Any]
    code_version: str
    sampler: str
    sampler_sha256: str | None
    classifier: str
    classifier_sha256: str | None
    dataset: dict[str, Any]
    seed: int
    labels: tuple[str, ...]
    timings: dict[str, Any] | None
    target: str | None = None  # the run's target: a name of ``labels`` or "all" (schema 0002)
    error: str | None = None  # why an interrupted or failed run stopped (schema 0002)
    kind: str = "simulation"  # simulation | acquisition (schema 0003)


@dataclass(frozen=True)
class SessionRecord:
    """One row of ``sessions``; ``true_labels`` in the run's label order, NaN = unknown."""

    id: int
    run_id: str
    image_id: str
    image_index: int
    policy: str
    true_labels: tuple[float, ...]
    status: str
    error: str | None
    started_at: datetime
    ended_at: datetime | None
    # the image's located findings: ({"label": name, "box": (r0, c0, r1, c1)}, ...); None: the
    # dataset gives no locations (schema 0005)
    findings: tuple[dict[str, Any], ...] | None = None


def findings_json(findings: Any) -> list[dict[str, Any]] | None:
    """Located findings as the ``sessions.findings`` column keeps them: a list of
    ``{"label": str, "box": [r0, c0, r1, c1]}`` (integers, half-open pixel box, r0 < r1, c0 < c1).

    Accepts ``datasets.phantoms.Finding`` tuples ``(name, (r0, c0, r1, c1))``, ``(name, r0, c0,
    r1, c1)`` tuples or dicts of that form; None stays None (no locations). Anything else raises
    :class:`StoreError` naming the finding.
    """
    if findings is None:
        return None
    out = []
    for k, f in enumerate(findings):
        try:
            if isinstance(f, dict):
                name, box = f["label"], f["box"]
            elif len(f) == 2:
                name, box = f
            else:
                name, box = f[0], f[1:]
            r0, c0, r1, c1 = (int(v) for v in box)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"finding {k} is not (label, (r0, c0, r1, c1)): {f!r} ({exc})") from None
        if not (r0 < r1 and c0 < c1) or min(r0, c0) < 0:
            raise StoreError(f"finding {k} ({name}) has an empty or negative box {[r0, c0, r1, c1]}")
        out.append({"label": str(name), "box": [r0, c0, r1, c1]})
    return out


def now() -> datetime:
    """The current time in UTC (every timestamp of the store)."""
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back: they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# per-step diagnostics of the decision (boed.store.models.Step, migration 0004)
DIAGNOSTICS = ("eig_se", "ess", "target_observed", "target_completions")


def finite_or_none(value: Any) -> float | None:
    """``float(value)``, or None for None, NaN and inf."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON (NaN/inf -> null, tuples -> lists, numpy/torch scalars -> numbers)."""

    def convert(v: Any) -> Any:
        if v is None or isinstance(v, bool | str | int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, list | tuple | set | frozenset):
            return [convert(x) for x in v]
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, date):  # and datetime
            return v.isoformat()
        if hasattr(v, "tolist"):  # numpy arrays and scalars, torch tensors
            return convert(v.tolist())
        raise StoreError(f"{what} is not JSON-serialisable: {type(v).__name__} value {v!r}")

    result = convert(value)
    json.dumps(result, allow_nan=False)
    return result


def floats(values: Any, what: str) -> list[float | None]:
    """A flat list of floats (None for NaN/inf) from a sequence, numpy array or tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be a sequence of numbers: {exc}") from None
    return [float(v) if math.isfinite(v) else None for v in array]


def first_line(exc: BaseException) -> str:
    """The first line of a (database driver's) error message."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + 6 random hex digits)."""
    return f"{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
