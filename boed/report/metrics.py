"""Metrics of a simulation, computed from the store's long prediction table (pure functions).

``predictions`` is ``Store.predictions(run_id, label=...)``: one row per (session, step, label)
with ``policy, image_id, step, prob, truth``. A session that stopped early (stopping rule) keeps
its last prediction for the remaining scans. The full-image reference (policy ``full-image``) has a
single step and is reported as one line.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from boed.policies import FULL_IMAGE


def _known(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=float)
    keep = ~np.isnan(truth) & ~np.isnan(scores)
    return scores[keep], truth[keep] > 0.5


def binary_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``) over the known labels; NaN with one
    class only (an AUROC is undefined there, and a report shows it as a gap)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = _known(scores, truth)
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, scores))


def accuracy(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of known labels predicted right, ``prob >= threshold`` counting as positive (the
    convention of ``classifiers.metrics.accuracy``; scikit-learn's ``accuracy_score``); NaN when
    none is known."""
    from sklearn.metrics import accuracy_score

    probs, truth = _known(probs, truth)
    if not truth.size:
        return math.nan
    return float(accuracy_score(truth, probs >= threshold))


def mean_binary_entropy(probs: np.ndarray) -> float:
    """Mean binary entropy (nats) of the predicted probabilities."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-7, 1 - 1e-7)
    p = p[~np.isnan(p)]
    if not p.size:
        return math.nan
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def trajectories(predictions: pd.DataFrame, scans: int) -> pd.DataFrame:
    """One row per scanning session: ``session_id, policy, image_id, truth, scans_used, 0..scans``.

    Columns ``0..scans`` hold the probability after that many scans, carried forward after an
    early stop. The full-image sessions are left out (see :func:`full_image_predictions`).
    """
    df = predictions[predictions["policy"] != FULL_IMAGE]
    if df.empty:
        return pd.DataFrame(
            columns=["session_id", "policy", "image_id", "truth", "scans_used", *range(scans + 1)]
        )
    wide = df.pivot_table(index="session_id", columns="step", values="prob", aggfunc="first")
    wide = wide.reindex(columns=range(scans + 1))
    used = wide.notna().sum(axis=1) - 1
    wide = wide.ffill(axis=1)
    meta = df.groupby("session_id").agg(
        policy=("policy", "first"), image_id=("image_id", "first"), truth=("truth", "first")
    )
    out = meta.join(wide).reset_index()
    out.insert(4, "scans_used", used.reindex(out["session_id"]).to_numpy())
    return out


def full_image_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """``image_id, prob, truth`` of the full-image reference sessions."""
    df = predictions[(predictions["policy"] == FULL_IMAGE) & (predictions["step"] == 0)]
    return df[["image_id", "prob", "truth"]].reset_index(drop=True)


def summarise(predictions: pd.DataFrame, scans: int, policies: list[str] | None = None) -> pd.DataFrame:
    """Accuracy, AUROC and mean entropy per policy and number of scans.

    Returns a long table ``policy, scans, n, accuracy, auroc, entropy, scans_used`` (``scans`` is
    NaN and ``policy == "full-image"`` for the reference line).
    """
    traj = trajectories(predictions, scans)
    order = policies or list(dict.fromkeys(traj["policy"]))
    rows = []
    for policy in order:
        sub = traj[traj["policy"] == policy]
        if sub.empty:
            continue
        for t in range(scans + 1):
            probs, truth = sub[t].to_numpy(float), sub["truth"].to_numpy(float)
            rows.append(
                dict(
                    policy=policy,
                    scans=t,
                    n=len(sub),
                    accuracy=accuracy(probs, truth),
                    auroc=binary_auroc(probs, truth),
                    entropy=mean_binary_entropy(probs),
                    scans_used=float(sub["scans_used"].mean()),
                )
            )
    full = full_image_predictions(predictions)
    if not full.empty:
        probs, truth = full["prob"].to_numpy(float), full["truth"].to_numpy(float)
        rows.append(
            dict(
                policy=FULL_IMAGE,
                scans=math.nan,
                n=len(full),
                accuracy=accuracy(probs, truth),
                auroc=binary_auroc(probs, truth),
                entropy=mean_binary_entropy(probs),
                scans_used=math.nan,
            )
        )
    return pd.DataFrame(rows, columns=["policy", "scans", "n", "accuracy", "auroc", "entropy", "scans_used"])
