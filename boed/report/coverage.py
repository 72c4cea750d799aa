"""Where the scans went: hit rate on located findings and the fraction of the image observed.

Both are computed from the store alone: the steps' scan locations (``row, col``: the patch's
top-left pixel), the run's patch and image size, and each session's located findings
(``sessions.findings``, schema 0005: pixel boxes ``(r0, c0, r1, c1)``, half-open, of the
simulated image; phantoms give them for every image, ChestX-ray14 for the ~880 images of
``BBox_List_2017.csv``).

**Hit rate** (beyond the paper): among the *positive located* sessions of a policy, those whose
image is positive for the target and has at least one box of a target finding, the fraction in
which one of the first k scans has covered such a box (:func:`covers`). Target findings: the
target's own label (``Mass``: the Mass boxes), every finding for ``Any``, the target's labels
for ``all``. It says whether the controller looks where the pathology is. Sessions positive by
their label but without a box of the target (ChestX-ray14 images without boxes, a phantom whose
label was flipped by label noise) are left out, not counted as misses.

**Fraction observed**: the area of the union of the first k scans over the image area. Random
scans overlap and waste pixels; :func:`disjoint_fraction` is the closed form of any k scans that
do not overlap, ``min(1, k p² / S²)``, the most k scans can observe (the ``random-disjoint``
policy reaches it while disjoint candidates remain).

Each value comes with a 95 % percentile-bootstrap CI over sessions (:mod:`boed.report.stats`);
:func:`paired_coverage` compares two policies image by image (paired bootstrap; McNemar's exact
test for the hit rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

COVER_FRACTION = 0.5
"""A scan covers a box when it overlaps at least this fraction of the smaller of the two areas."""

LOCATION_METRICS = ("hit_rate", "observed")


def overlap(row: int, col: int, patch: int, box: Sequence[int]) -> int:
    """Pixels shared by the ``patch x patch`` scan at ``(row, col)`` and ``box = (r0, c0, r1, c1)``."""
    r0, c0, r1, c1 = (int(v) for v in box)
    dr = min(row + patch, r1) - max(row, r0)
    dc = min(col + patch, c1) - max(col, c0)
    return max(dr, 0) * max(dc, 0)


def covers(row: int, col: int, patch: int, box: Sequence[int], fraction: float = COVER_FRACTION) -> bool:
    """Whether the scan at ``(row, col)`` (top-left pixel, ``patch x patch``) covers ``box``.

    Covered: the scan and the box share at least ``fraction`` (default one half) of the smaller of
    the two areas, ``|P ∩ B| >= fraction * min(|P|, |B|)``. A box smaller than the scan must be at
    least half inside it (a small nodule half seen); a box larger than the scan (an effusion, a
    ChestX-ray14 box of 200 px of 1024) must fill at least half of the scan (the scan looks at
    the finding rather than grazing its edge). One scan must do it; pieces seen by several scans
    do not add up.
    """
    r0, c0, r1, c1 = (int(v) for v in box)
    area = (r1 - r0) * (c1 - c0)
    if area <= 0:
        return False
    return overlap(row, col, patch, box) >= fraction * min(area, patch * patch)


def disjoint_fraction(k: int | np.ndarray, patch: int, image_size: int) -> np.ndarray:
    """``min(1, k p² / S²)``: the fraction of an ``S x S`` image that k non-overlapping scans observe."""
    return np.minimum(1.0, np.asarray(k, dtype=float) * patch * patch / image_size**2)


def target_positive(
    true_labels: Sequence[float], labels: Sequence[str], target_labels: Sequence[str]
) -> bool:
    """True where any of the target's labels is 1 (NaN = unknown counts as not positive)."""
    values = [float(true_labels[list(labels).index(name)]) for name in target_labels if name in labels]
    return any(v == 1.0 for v in values)


def target_boxes(findings: Sequence[dict] | None, target_labels: Sequence[str]) -> list[tuple[int, ...]]:
    """The boxes of the target's findings (every finding for ``Any``) among ``findings``."""
    if not findings:
        return []
    names = set(target_labels)
    anything = any(name.lower() == "any" for name in names)
    return [tuple(f["box"]) for f in findings if anything or f["label"] in names]


def scan_paths(steps: pd.DataFrame, scans: int) -> dict[int, list[tuple[int, int]]]:
    """Per session, the ``(row, col)`` of its scans 1..``scans`` in order (fewer after an early stop)."""
    moved = steps[(steps["step"] >= 1) & (steps["step"] <= scans) & steps["row"].notna()]
    moved = moved.sort_values(["session_id", "step"])
    out: dict[int, list[tuple[int, int]]] = {}
    for sid, row, col in zip(moved["session_id"], moved["row"], moved["col"], strict=True):
        out.setdefault(int(sid), []).append((int(row), int(col)))
    return out


def session_coverage(
    sessions: pd.DataFrame,
    steps: pd.DataFrame,
    labels: Sequence[str],
    target_labels: Sequence[str],
    scans: int,
    patch: int,
    image_size: int,
) -> pd.DataFrame:
    """One row per done scanning session: ``session_id, policy, image_id, located`` (positive for
    the target with a box of it) and, for k = 0..scans, ``hit_k`` (bool: a target box covered by
    one of the first k scans; NaN where not ``located``) and ``observed_k`` (fraction of the image
    seen after k scans). A session that stopped early keeps its last values."""
    from boed.policies import FULL_IMAGE

    done = sessions[(sessions["status"] == "done") & (sessions["policy"] != FULL_IMAGE)]
    paths = scan_paths(steps, scans)
    findings = done["findings"] if "findings" in done else pd.Series([None] * len(done), index=done.index)
    rows = []
    for rec, located_findings in zip(done.itertuples(), findings, strict=True):
        path = paths.get(int(rec.session_id), [])
        boxes = target_boxes(located_findings, target_labels)
        located = bool(boxes) and target_positive(rec.true_labels, labels, target_labels)
        row: dict[str, Any] = {
            "session_id": int(rec.session_id),
            "policy": str(rec.policy),
            "image_id": str(rec.image_id),
            "located": located,
        }
        seen = np.zeros((image_size, image_size), dtype=bool)
        hit = False
        for k in range(scans + 1):
            if 1 <= k <= len(path):
                r, c = path[k - 1]
                seen[r : r + patch, c : c + patch] = True
                hit = hit or any(covers(r, c, patch, box) for box in boxes)
            row[f"hit_{k}"] = float(hit) if located else math.nan
            row[f"observed_{k}"] = float(seen.mean())
        rows.append(row)
    columns = ["session_id", "policy", "image_id", "located"]
    columns += [f"{m}_{k}" for k in range(scans + 1) for m in ("hit", "observed")]
    return pd.DataFrame(rows, columns=columns)


def _mean_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    from boed.report.stats import _interval, _resamples

    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    lo, hi = _interval(values[_resamples(len(values), seed)].mean(axis=1))
    return mean, lo, hi


def coverage_summary(table: pd.DataFrame, scans: int, patch: int, image_size: int) -> pd.DataFrame:
    """Per policy and k = 0..scans: ``hit_rate`` (with ``hit_rate_lo/_hi``, its 95 % bootstrap CI,
    and ``hit_n``, the positive located sessions), ``observed`` (with CI) and
    ``observed_disjoint`` (:func:`disjoint_fraction`)."""
    rows = []
    for policy, sub in table.groupby("policy", sort=False):
        for k in range(scans + 1):
            hits = sub[f"hit_{k}"].to_numpy(float)
            hit, hit_lo, hit_hi = _mean_ci(hits)
            seen, seen_lo, seen_hi = _mean_ci(sub[f"observed_{k}"].to_numpy(float))
            rows.append(
                {
                    "policy": policy,
                    "scans": float(k),
                    "hit_rate": hit,
                    "hit_rate_lo": hit_lo,
                    "hit_rate_hi": hit_hi,
                    "hit_n": int((~np.isnan(hits)).sum()),
                    "observed": seen,
                    "observed_lo": seen_lo,
                    "observed_hi": seen_hi,
                    "observed_disjoint": float(disjoint_fraction(k, patch, image_size)),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "policy",
            "scans",
            "hit_rate",
            "hit_rate_lo",
            "hit_rate_hi",
            "hit_n",
            "observed",
            "observed_lo",
            "observed_hi",
            "observed_disjoint",
        ],
    )


def paired_coverage(
    table: pd.DataFrame, policy: str, reference: str, k: int, seed: int = 0
) -> dict[str, float]:
    """``policy − reference`` after k scans on the same images: ``hit_rate`` (over images located
    and positive, the same for both), ``observed``, each with a paired 95 % bootstrap CI, and
    McNemar's exact test of the hits (``hit_mcnemar_p``)."""
    from scipy.stats import binomtest

    from boed.report.stats import _interval, _resamples

    a, b = table[table["policy"] == policy], table[table["policy"] == reference]
    joined = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    out: dict[str, float] = {}
    for metric in ("hit", "observed"):
        va, vb = joined[f"{metric}_{k}_a"].to_numpy(float), joined[f"{metric}_{k}_b"].to_numpy(float)
        keep = ~np.isnan(va) & ~np.isnan(vb)
        d = va[keep] - vb[keep]
        key = "hit_rate" if metric == "hit" else metric
        out[key] = float(d.mean()) if len(d) else math.nan
        lo = hi = math.nan
        if len(d) > 1:
            lo, hi = _interval(d[_resamples(len(d), seed)].mean(axis=1))
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
        if metric == "hit":
            out["hit_n"] = float(len(d))
            a_only, b_only = int((d > 0).sum()), int((d < 0).sum())
            n = a_only + b_only
            out["hit_mcnemar_p"] = float(binomtest(a_only, n, 0.5).pvalue) if n else 1.0
    return out


def load_coverage(store: Any, run_id: str, target_labels: Sequence[str]) -> pd.DataFrame:
    """:func:`session_coverage` of a run read from the store (its config gives scans, patch and
    image size; its labels the order of ``true_labels``)."""
    run = store.get_run(run_id)
    config = run.config or {}
    return session_coverage(
        store.sessions(run_id),
        store.steps(run_id),
        list(run.labels),
        list(target_labels),
        int(config.get("scans", 5)),
        int(config.get("patch_size", 16)),
        int(config.get("image_size", 64)),
    )
