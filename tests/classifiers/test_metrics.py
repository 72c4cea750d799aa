"""Metrics against independent implementations and closed forms."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from classifiers.metrics import accuracy, auroc, expected_calibration_error, fit_temperature, masked_bce

AUROC_CASES = [
    # scores, targets, expected
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied
    ([0.9, 0.8, 0.1], [1, 1, 0], 1.0),
    ([0.9, 0.8, 0.1], [0, 0, 1], 0.0),
]


@pytest.mark.parametrize("scores,targets,expected", AUROC_CASES)
def test_auroc_known_answers(scores, targets, expected):
    assert auroc(np.array(scores), np.array(targets, dtype=float)) == pytest.approx(expected)


def test_auroc_matches_sklearn_with_ties_and_nans():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 500) / 20.0  # many ties
    targets = (rng.random(500) < 0.3).astype(float)
    expected = roc_auc_score(targets, scores)
    targets_nan = np.concatenate([targets, [np.nan] * 10])
    scores_nan = np.concatenate([scores, rng.random(10)])
    assert auroc(scores_nan, targets_nan) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("targets", [[0, 0, 0], [1, 1, 1], [np.nan, np.nan, np.nan], []])
def test_auroc_undefined_is_nan(targets):
    assert math.isnan(auroc(np.full(len(targets), 0.3), np.array(targets, dtype=float)))


def test_accuracy_ignores_nan():
    assert accuracy(np.array([0.9, 0.2, 0.7, 0.1]), np.array([1, 0, 0, np.nan])) == pytest.approx(2 / 3)
    assert math.isnan(accuracy(np.array([0.5]), np.array([np.nan])))


def test_ece_known_answers():
    # perfectly calibrated bins -> 0
    probs = np.array([0.25] * 4 + [0.75] * 4)
    targets = np.array([1, 0, 0, 0] + [1, 1, 1, 0], dtype=float)
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0)
    # always 0.9, never positive -> 0.9
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)


def test_masked_bce_matches_manual_and_ignores_nan():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    manual = -(torch.log(p[0, 0]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 3
    assert masked_bce(logits, labels).item() == pytest.approx(manual.item(), rel=1e-6)
    all_nan = torch.full((2, 2), float("nan"))
    assert masked_bce(logits, all_nan).item() == 0.0


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    labels = (
        torch.rand(20000, 2, generator=g, dtype=torch.float64) < torch.sigmoid(logits / true_t)
    ).double()
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)
