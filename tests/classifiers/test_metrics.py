"""Metrics against hand-computed answers, independent computations and known constructions."""

import math

import numpy as np
import pytest
import torch

from classifiers.errors import ClassifierError
from classifiers.metrics import (
    accuracy,
    auroc,
    expected_calibration_error,
    fit_temperature,
    masked_bce,
    nan_to_none,
)

AUROC_CASES = [
    # scores, targets, expected (by counting (positive, negative) pairs, ties = 1/2)
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 3 of 4 pairs ordered right
    ([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1], 0.875),  # one tied pair: (1 + 0.5 + 1 + 1) / 4
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied
    ([0.9, 0.8, 0.1], [1, 1, 0], 1.0),
    ([0.9, 0.8, 0.1], [0, 0, 1], 0.0),
]


@pytest.mark.parametrize("scores,targets,expected", AUROC_CASES)
def test_auroc_known_answers(scores, targets, expected):
    assert auroc(np.array(scores), np.array(targets, dtype=float)) == pytest.approx(expected)


def _pair_count_auroc(scores, truth):
    """Independent AUROC: the fraction of (positive, negative) pairs ordered right, ties 1/2."""
    pos, neg = scores[truth == 1], scores[truth == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_ignores_nan_labels_and_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 300) / 20.0  # many ties
    targets = (rng.random(300) < 0.3).astype(float)
    expected = _pair_count_auroc(scores, targets)
    # unknown labels with scores that would change the answer if they were counted
    scores_nan = np.concatenate([scores, np.ones(50)])
    targets_nan = np.concatenate([targets, [np.nan] * 50])
    assert auroc(scores_nan, targets_nan) == pytest.approx(expected, abs=1e-12)
    assert auroc(scores_nan, np.where(np.isnan(targets_nan), 0.0, targets_nan)) != pytest.approx(expected)


@pytest.mark.parametrize("targets", [[0, 0, 0], [1, 1, 1], [np.nan, np.nan, np.nan], [1, np.nan, 1], []])
def test_auroc_of_one_class_is_nan_not_an_exception(targets):
    assert math.isnan(auroc(np.full(len(targets), 0.3), np.array(targets, dtype=float)))


def test_accuracy_threshold_convention_and_nan():
    # p >= 0.5 is positive: 0.5 on a positive is right, on a negative wrong
    assert accuracy(np.array([0.5]), np.array([1.0])) == 1.0
    assert accuracy(np.array([0.5]), np.array([0.0])) == 0.0
    assert accuracy(np.array([0.9, 0.2, 0.7, 0.1]), np.array([1, 0, 0, np.nan])) == pytest.approx(2 / 3)
    assert accuracy(np.array([0.3, 0.3]), np.array([1.0, 0.0]), threshold=0.25) == 0.5
    assert math.isnan(accuracy(np.array([0.5]), np.array([np.nan])))


def test_ece_of_a_perfectly_calibrated_construction_is_zero():
    # in each bin the mean prediction equals the frequency of positives
    probs = np.array([0.25] * 4 + [0.75] * 4 + [0.1] * 10)
    targets = np.array([1, 0, 0, 0] + [1, 1, 1, 0] + [1] + [0] * 9, dtype=float)
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed_values():
    # bin of 0.1: 2 positives -> |1 - 0.1| = 0.9; bin of 0.8: 1 of 2 -> |0.5 - 0.8| = 0.3; weights 1/2
    probs = np.array([0.1, 0.1, 0.8, 0.8])
    assert expected_calibration_error(probs, np.array([1.0, 1, 1, 0])) == pytest.approx(0.6)
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)
    # the number of bins is used: with one bin, 0.3 and 0.7 average to the frequency 1/2
    probs, targets = np.array([0.3, 0.7]), np.array([0.0, 1.0])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.3)
    assert expected_calibration_error(probs, targets, n_bins=1) == pytest.approx(0.0)
    # unknown labels are left out, not counted as negatives
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1.0, np.nan])) == pytest.approx(0.1)
    assert math.isnan(expected_calibration_error(np.array([0.5]), np.array([np.nan])))


def test_ece_matches_an_independent_binning_on_random_data():
    rng = np.random.default_rng(3)
    probs = rng.random((400, 3))
    targets = (rng.random((400, 3)) < probs**2).astype(float)
    p, y = probs.ravel(), targets.ravel()
    bins = np.minimum((p * 15).astype(int), 14)
    expected = sum(
        (bins == b).mean() * abs(y[bins == b].mean() - p[bins == b].mean()) for b in np.unique(bins)
    )
    assert expected_calibration_error(probs, targets) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "fn,args,message",
    [
        (auroc, ([0.2, np.nan], [0.0, 1.0]), "not finite"),
        (accuracy, ([0.2, np.inf], [0.0, 1.0]), "not finite"),
        (expected_calibration_error, ([0.2, 1.5], [0.0, 1.0]), r"in \[0, 1\]"),
        (auroc, ([0.2, 0.4], [0.0, 0.3]), "0, 1 or NaN"),
        (auroc, ([0.2, 0.4, 0.5], [0.0, 1.0]), "3 predictions but 2 labels"),
    ],
)
def test_bad_metric_inputs_are_clear_errors(fn, args, message):
    with pytest.raises(ClassifierError, match=message):
        fn(*map(np.array, args))


def test_masked_bce_matches_manual_and_ignores_nan():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    manual = -(torch.log(p[0, 0]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 3
    assert masked_bce(logits, labels).item() == pytest.approx(manual.item(), rel=1e-6)
    all_nan = torch.full((2, 2), float("nan"))
    assert masked_bce(logits, all_nan).item() == 0.0


def _synthetic(true_t: float, n: int = 20000, seed: int = 1):
    """Labels drawn from ``sigmoid(logits / true_t)``: the maximum-likelihood temperature is ~true_t."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, 2, generator=g, dtype=torch.float64) < torch.sigmoid(logits / true_t)).double()
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    logits, labels = _synthetic(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_ignores_unknown_labels_and_respects_bounds():
    logits, labels = _synthetic(2.0)
    t = fit_temperature(logits, labels)
    # unknown labels on extra, badly overconfident logits must not move the fit
    extra = torch.full((5000, 2), 30.0, dtype=torch.float64)
    t_nan = fit_temperature(torch.cat([logits, extra]), torch.cat([labels, torch.full_like(extra, math.nan)]))
    assert t_nan == pytest.approx(t, rel=1e-4)
    # the optimum (~2) lies outside [0.1, 1]: the fit stops at the upper bound
    assert fit_temperature(logits, labels, lo=0.1, hi=1.0) == pytest.approx(1.0, abs=1e-3)
    assert fit_temperature(logits, torch.full_like(labels, math.nan)) == 1.0


def test_nan_to_none():
    assert nan_to_none(math.nan) is None and nan_to_none(None) is None and nan_to_none(0.25) == 0.25
