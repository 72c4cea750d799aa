"""Metrics of a probabilistic multi-label classifier, as pure functions.

Labels are float with NaN = unknown; every metric ignores unknown entries. A metric that is
undefined on the data (AUROC of a label with no positive or no negative) is ``nan``, never an error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) entries of ``labels`` ``(B, L)``.

    Returns 0 (with a gradient path) when no entry is known.
    """
    known = ~torch.isnan(labels)
    target = torch.where(known, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); ``nan`` if undefined."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    known = ~np.isnan(targets)
    scores, targets = scores[known], targets[known] > 0.5
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of known entries where ``probs > threshold`` agrees with the label; ``nan`` if none."""
    probs = np.asarray(probs, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    known = ~np.isnan(targets)
    if not known.any():
        return math.nan
    return float(np.mean((probs[known] > threshold) == (targets[known] > 0.5)))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins of predicted probability over known entries (all labels pooled).

    ``sum_b |B_b|/n * |mean(y in B_b) - mean(p in B_b)|`` (Guo et al. 2017, binary form).
    """
    probs = np.asarray(probs, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    known = ~np.isnan(targets)
    probs, targets = probs[known], targets[known]
    if probs.size == 0:
        return math.nan
    bins = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.sum() * abs(targets[sel].mean() - probs[sel].mean())
    return float(total / probs.size)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, lo: float = 0.05, hi: float = 20.0) -> float:
    """The single temperature T minimising the masked BCE of ``logits / T`` (golden-section on log T).

    Temperature scaling (Guo et al. 2017) keeps the ranking, so AUROC is unchanged; it fixes the
    over- or under-confidence that matters for entropies in the EIG.
    """
    logits = logits.detach().double()
    labels = labels.detach().double()

    def nll(log_t: float) -> float:
        return float(masked_bce(logits / math.exp(log_t), labels))

    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def nan_to_none(value: float) -> float | None:
    """JSON-friendly: ``nan`` becomes ``None``."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
