"""What a checkpoint was trained on, recorded the same way by every trainer.

Every checkpoint's JSON holds ``data = {"train": train_set.describe(), "val": val_set.describe()}``
and ``trained_on = {"source", "fingerprint", "split_seed", "labels", "image_size"}`` (from the
training set's ``describe()``; keys a source does not report are ``None``). ``datasets.provenance``
compares these records with the data a checkpoint is later used on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def describe(ds: Any) -> dict[str, Any]:
    """``ds.describe()``, or a minimal description for objects without one."""
    try:
        return dict(ds.describe())
    except Exception:  # noqa: BLE001 - a description is informational
        return {"type": type(ds).__name__, "n": len(ds) if hasattr(ds, "__len__") else None}


def data_record(train_set: Any, val_set: Any) -> dict[str, Any]:
    """``{"train": describe(train_set), "val": describe(val_set)}``."""
    return {"train": describe(train_set), "val": describe(val_set)}


def trained_on(train_set: Any, image_size: int, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``trained_on`` record; ``labels`` default to the data's own label columns."""
    d = describe(train_set)
    if labels is None:
        labels = d.get("labels") or getattr(train_set, "labels", ()) or ()
    return {
        "source": d.get("source"),
        "fingerprint": d.get("fingerprint"),
        "split_seed": d.get("split_seed"),
        "labels": list(labels),
        "image_size": int(image_size),
    }


def resume_data_mismatch(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why ``--resume`` must not go on with ``now`` (a ``trained_on`` record), or ``None``.

    A resumed run must read the data it started on; the source fingerprints (when both known)
    must agree.
    """
    before, after = (saved or {}).get("fingerprint"), now.get("fingerprint")
    if before and after and before != after:
        return (
            f"--resume: the training data differ from the run's ({now.get('source')} fingerprint "
            f"{str(after)[:12]}…, the run trained on {str(before)[:12]}…); pass the same --images/--data-root"
        )
    return None
