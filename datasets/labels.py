"""The label schema: the 14 ChestX-ray14 findings in the dataset's own spelling, plus ``Any``.

Label vectors are float32 with NaN for "unknown". ``Any`` is 1 when at least one finding is
present, 0 when every finding is known to be absent, NaN otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
ANY = "Any"
LABELS: tuple[str, ...] = (*FINDINGS, ANY)
NO_FINDING = "No Finding"

# Spellings seen in NIH side files (BBox_List_2017.csv says "Infiltrate").
_ALIASES = {"infiltrate": "Infiltration", "pleural thickening": "Pleural_Thickening"}
_CANONICAL = {name.lower(): name for name in FINDINGS} | _ALIASES


class LabelError(ValueError):
    """A label name that is not part of the schema."""


def canonical_finding(name: str) -> str:
    """Return the schema spelling of ``name`` (case-insensitive, NIH aliases accepted)."""
    key = name.strip().lower()
    if key not in _CANONICAL:
        raise LabelError(f"unknown finding {name!r}; valid findings: {', '.join(FINDINGS)}")
    return _CANONICAL[key]


def label_index(name: str, labels: Sequence[str] = LABELS) -> int:
    """Index of ``name`` in ``labels``; the error lists the valid names."""
    for i, label in enumerate(labels):
        if label.lower() == name.strip().lower():
            return i
    raise LabelError(f"unknown label {name!r}; valid labels: {', '.join(labels)}")


def any_from_findings(findings: np.ndarray) -> np.ndarray:
    """``Any`` from finding columns ``(..., 14)``: 1 if any is 1, 0 if all are 0, else NaN."""
    findings = np.asarray(findings, dtype=np.float32)
    positive = np.nansum(findings == 1, axis=-1) > 0
    all_known_negative = np.all(findings == 0, axis=-1)
    out = np.full(findings.shape[:-1], np.nan, dtype=np.float32)
    out[all_known_negative] = 0.0
    out[positive] = 1.0
    return out


def vector_from_findings(present: Iterable[str]) -> np.ndarray:
    """A fully known label vector ``(15,)`` from the names of the findings present."""
    vec = np.zeros(len(LABELS), dtype=np.float32)
    for name in present:
        vec[FINDINGS.index(canonical_finding(name))] = 1.0
    vec[-1] = any_from_findings(vec[:-1])
    return vec


def parse_finding_labels(text: str | float | None) -> np.ndarray:
    """Turn an NIH ``Finding Labels`` cell ("Cardiomegaly|Effusion", "No Finding") into ``(15,)``.

    An empty or missing cell gives all-NaN (unknown), not "no finding".
    """
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return np.full(len(LABELS), np.nan, dtype=np.float32)
    parts = [p.strip() for p in str(text).split("|") if p.strip()]
    if len(parts) == 1 and parts[0].lower() == NO_FINDING.lower():
        return vector_from_findings([])
    return vector_from_findings(parts)


def finding_labels_string(vec: np.ndarray) -> str:
    """Inverse of :func:`parse_finding_labels` for fully known vectors."""
    present = [name for name, v in zip(FINDINGS, vec[: len(FINDINGS)], strict=True) if v == 1]
    return "|".join(present) if present else NO_FINDING
