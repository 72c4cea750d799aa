"""Metrics of a probabilistic multi-label classifier, from well-kept libraries.

- AUROC and accuracy: scikit-learn (``roc_auc_score``, ``accuracy_score``).
- Expected calibration error: torchmetrics (``BinaryCalibrationError``, equal-width bins, L1).
- Temperature: ``scipy.optimize.minimize_scalar`` (bounded) on log T.

Conventions shared by every function here:

- Labels are float with NaN = unknown; every metric ignores unknown entries. Known labels must be
  0 or 1 (anything else is a :class:`ClassifierError`).
- A prediction ``p`` counts as positive when ``p >= threshold`` (default 0.5); the same
  convention as ``boed.report.metrics.accuracy``.
- A metric that is undefined on the data (AUROC of a label with no positive or no negative, any
  metric with no known label) is ``nan``, never an error. Non-finite predictions are an error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from classifiers.errors import ClassifierError

# Bounds of the temperature search: far beyond any temperature a trained network needs.
T_MIN, T_MAX = 0.05, 20.0


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) entries of ``labels`` ``(B, L)``.

    Returns 0 (with a gradient path) when no entry is known.
    """
    known = ~torch.isnan(labels)
    target = torch.where(known, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def _known(scores: np.ndarray, targets: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``(scores, targets)`` restricted to known targets; targets as bool."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if scores.shape != targets.shape:
        raise ClassifierError(f"{what}: {scores.size} predictions but {targets.size} labels")
    known = ~np.isnan(targets)
    scores, targets = scores[known], targets[known]
    if not np.isin(targets, (0.0, 1.0)).all():
        bad = targets[~np.isin(targets, (0.0, 1.0))][0]
        raise ClassifierError(f"{what}: labels must be 0, 1 or NaN (unknown), got {bad:g}")
    if not np.isfinite(scores).all():
        raise ClassifierError(
            f"{what}: {int((~np.isfinite(scores)).sum())} of {scores.size} predictions are not finite"
        )
    return scores, targets > 0.5


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``; ties count one half).

    ``nan`` when the known labels hold no positive or no negative.
    """
    from sklearn.metrics import roc_auc_score

    scores, truth = _known(scores, targets, "AUROC")
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, scores))


def accuracy(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of known labels predicted right, ``probs >= threshold`` meaning positive.

    ``sklearn.metrics.accuracy_score``; ``nan`` when no label is known.
    """
    from sklearn.metrics import accuracy_score

    probs, truth = _known(probs, targets, "accuracy")
    if truth.size == 0:
        return math.nan
    return float(accuracy_score(truth, probs >= threshold))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins of predicted probability, all entries pooled.

    ``sum_b |B_b|/n * |mean(y in B_b) - mean(p in B_b)|`` over the known entries (Guo, Pleiss,
    Sun and Weinberger, "On Calibration of Modern Neural Networks", 2017, Eq. 3, in its binary
    form), computed by ``torchmetrics.classification.BinaryCalibrationError(n_bins, norm="l1")``.
    ``nan`` when no label is known.
    """
    from torchmetrics.classification import BinaryCalibrationError

    probs, truth = _known(probs, targets, "ECE")
    if truth.size == 0:
        return math.nan
    if probs.min() < 0 or probs.max() > 1:
        # torchmetrics would silently treat such values as logits and apply a sigmoid
        raise ClassifierError("ECE: predictions must be probabilities in [0, 1]")
    metric = BinaryCalibrationError(n_bins=n_bins, norm="l1")
    return float(metric(torch.from_numpy(probs), torch.from_numpy(truth.astype(np.int64))))


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, lo: float = T_MIN, hi: float = T_MAX
) -> float:
    """The single temperature T in ``[lo, hi]`` minimising the masked BCE of ``logits / T``.

    Temperature scaling (Guo et al. 2017, section 4.2) keeps the ranking, so AUROC is unchanged; it
    fixes the over- or under-confidence that matters for entropies in the EIG. The negative
    log-likelihood is convex in 1/T, hence unimodal in log T, and
    ``scipy.optimize.minimize_scalar(method="bounded")`` (Brent) finds its minimum on
    ``[log lo, log hi]``. Returns 1.0 when no label is known.

    Args:
        logits, labels: ``(B, L)``; labels 0/1 with NaN = unknown.
    """
    from scipy.optimize import minimize_scalar

    logits = logits.detach().double().cpu()
    labels = labels.detach().double().cpu()
    if not (~torch.isnan(labels)).any():
        return 1.0
    if not torch.isfinite(logits).all():
        raise ClassifierError("temperature fit: the logits are not all finite")

    def nll(log_t: float) -> float:
        return float(masked_bce(logits / math.exp(log_t), labels))

    result = minimize_scalar(
        nll, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(result.x))


def nan_to_none(value: float | None) -> float | None:
    """JSON-friendly: ``nan`` becomes ``None``."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
