"""Uncertainty of a run's results: bootstrap confidence intervals over images and paired comparisons.

Every policy of a run scans the same images, so policies are compared *paired* (image by image):

* :func:`per_image` — the per-image values whose means are the reported metrics: correctness
  (accuracy), binary entropy of the prediction, and two proper scoring rules against the truth,
  the log loss (cross-entropy, nats) and the Brier score ``(p − y)²``;
* :func:`metric_cis` — each metric (and the AUROC) with a 95 % percentile-bootstrap confidence
  interval over images;
* :func:`paired_differences` — ``policy − reference`` for each metric on the images both scanned,
  with a paired bootstrap CI (images resampled jointly), and McNemar's exact test for accuracy
  (the two-sided binomial test of the discordant pairs, ``scipy.stats.binomtest``; McNemar,
  "Note on the sampling error of the difference between correlated proportions or percentages",
  1947).

The bootstrap draws one ``(N_RESAMPLES, n)`` matrix of image indices per call and scores every
resample in one vectorised step (AUROC through its rank form, the Mann–Whitney U statistic over
``n₁·n₀``, equal to scikit-learn's ``roc_auc_score``). ``scipy.stats.bootstrap`` is not used because
an AUROC resample with one class only is undefined (NaN) and scipy's intervals then fail; here such
resamples are left out (and the CI is NaN when more than half are). Percentile intervals rather
than BCa, whose jackknife is undefined for a statistic constant on every leave-one-out sample (a
policy with accuracy 1 on a small run). With ``n`` images one image moves accuracy by ``1/n``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
N_RESAMPLES = 2000
EPS = 1e-7
METRICS = ("accuracy", "auroc", "entropy", "log_loss", "brier")
HIGHER_IS_BETTER = {"accuracy": True, "auroc": True, "entropy": False, "log_loss": False, "brier": False}


def per_image(metric: str, probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The per-image score of ``metric`` (any array shape, elementwise); its mean is the metric."""
    q = np.asarray(probs, dtype=float)
    p = np.clip(q, EPS, 1 - EPS)
    y = np.asarray(truth, dtype=float) > 0.5
    if metric == "accuracy":  # prob >= 0.5 counts as positive (boed.report.metrics.accuracy)
        return ((q >= 0.5) == y).astype(float)
    if metric == "entropy":
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))
    if metric == "log_loss":
        return -np.where(y, np.log(p), np.log(1 - p))
    if metric == "brier":
        return (q - y) ** 2
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")


def auroc_by_ranks(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AUROC along the last axis as U / (n₁·n₀) with mid-ranks for ties (scikit-learn's value);
    NaN where a row has one class only.

    Written here rather than calling ``sklearn.metrics.roc_auc_score`` because it scores all
    2,000 bootstrap resamples (rows with different numbers of positives) in one vectorised call;
    ``scipy.stats.rankdata`` does the ranking and a test pins it to scikit-learn's value."""
    from scipy.stats import rankdata

    probs, truth = np.asarray(probs, dtype=float), np.asarray(truth, dtype=float) > 0.5
    ranks = rankdata(probs, axis=-1)
    n1 = truth.sum(axis=-1)
    n0 = truth.shape[-1] - n1
    u = np.where(truth, ranks, 0.0).sum(axis=-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def statistic(metric: str, probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``metric`` along the last axis (a float for 1-D inputs, one value per row otherwise)."""
    if metric == "auroc":
        return auroc_by_ranks(probs, truth)
    return per_image(metric, probs, truth).mean(axis=-1)


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < N_RESAMPLES // 2:
        return math.nan, math.nan
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def _resamples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(N_RESAMPLES, n))


def _known(*arrays: np.ndarray) -> list[np.ndarray]:
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    keep = np.all([~np.isnan(a) for a in arrays], axis=0)
    return [a[keep] for a in arrays]


def metric_cis(probs: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict[str, float]:
    """``{metric, metric_lo, metric_hi}`` for every metric of :data:`METRICS` (95 % bootstrap CIs)."""
    p, y = _known(probs, truth)
    idx = _resamples(len(p), seed) if len(p) > 1 else None
    out: dict[str, float] = {}
    for metric in METRICS:
        value = float(statistic(metric, p, y)) if len(p) else math.nan
        lo = hi = math.nan
        if idx is not None and math.isfinite(value):
            lo, hi = _interval(statistic(metric, p[idx], y[idx]))
        out[metric], out[f"{metric}_lo"], out[f"{metric}_hi"] = value, lo, hi
    return out


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """``a − b`` for every metric on the images in both (frames with ``image_id, prob, truth``).

    Returns ``{metric, metric_lo, metric_hi}`` (paired 95 % bootstrap CIs: the same image indices
    for both policies in every resample), ``n_pairs``, and for accuracy McNemar's exact test:
    ``mcnemar_p`` with the discordant counts ``a_only`` (a right, b wrong) and ``b_only``.
    """
    from scipy.stats import binomtest

    joined = a[["image_id", "prob", "truth"]].merge(
        b[["image_id", "prob"]], on="image_id", suffixes=("_a", "_b")
    )
    pa, pb, y = _known(joined["prob_a"], joined["prob_b"], joined["truth"])
    idx = _resamples(len(y), seed) if len(y) > 1 else None
    out: dict[str, float] = {"n_pairs": float(len(y))}
    for metric in METRICS:
        diff = float(statistic(metric, pa, y) - statistic(metric, pb, y)) if len(y) else math.nan
        lo = hi = math.nan
        if idx is not None and math.isfinite(diff):
            lo, hi = _interval(statistic(metric, pa[idx], y[idx]) - statistic(metric, pb[idx], y[idx]))
        out[metric], out[f"{metric}_lo"], out[f"{metric}_hi"] = diff, lo, hi
    right_a, right_b = per_image("accuracy", pa, y) > 0.5, per_image("accuracy", pb, y) > 0.5
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    out["a_only"], out["b_only"] = float(a_only), float(b_only)
    discordant = a_only + b_only
    out["mcnemar_p"] = float(binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return out
