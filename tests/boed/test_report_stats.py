"""Confidence intervals and paired tests of the report (boed.report.stats), with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from boed.report.metrics import compare, summarise
from boed.report.stats import auroc_by_ranks, metric_cis, paired_differences, per_image


def test_auroc_by_ranks_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40).astype(float)
    p = np.round(rng.random(40), 1)  # many ties
    assert math.isclose(float(auroc_by_ranks(p, y)), roc_auc_score(y, p), rel_tol=1e-12)
    assert math.isnan(float(auroc_by_ranks(p, np.ones(40))))


def test_point_estimates_match_the_libraries():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50).astype(float)
    p = np.clip(0.7 * y + 0.3 * rng.random(50), 0, 1)
    out = metric_cis(p, y)
    assert math.isclose(out["log_loss"], log_loss(y, p), rel_tol=1e-6)
    assert math.isclose(out["brier"], brier_score_loss(y, p), rel_tol=1e-9)
    assert math.isclose(out["accuracy"], float(np.mean((p >= 0.5) == (y > 0.5))))
    # the log loss is the mean of the per-image losses (a proper score: the right side of y)
    assert math.isclose(out["log_loss"], float(per_image("log_loss", p, y).mean()), rel_tol=1e-6)


def test_ci_brackets_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(2)

    def width(n):
        y = rng.integers(0, 2, n).astype(float)
        p = np.where(rng.random(n) < 0.8, y, 1 - y) * 0.8 + 0.1
        out = metric_cis(p, y, seed=3)
        assert out["accuracy_lo"] <= out["accuracy"] <= out["accuracy_hi"]
        assert out["auroc_lo"] <= out["auroc"] <= out["auroc_hi"]
        return out["accuracy_hi"] - out["accuracy_lo"]

    small, large = width(30), width(3000)
    # a binomial proportion's 95% interval is about ±1.96·sqrt(p(1-p)/n)
    assert 0.2 < small < 0.4 and 0.02 < large < 0.04


def test_paired_difference_and_mcnemar_by_hand():
    # 10 images, all positive: a is wrong only on image 9, b only on images 0-2
    y = np.ones(10)
    pa = np.full(10, 0.9)
    pb = np.full(10, 0.9)
    pb[:3] = 0.2
    pa[9], pb[9] = 0.2, 0.9
    a = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "prob": pa, "truth": y})
    b = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)][::-1], "prob": pb[::-1], "truth": y[::-1]})
    out = paired_differences(a, b)  # joined by image id, not by row order
    assert out["n_pairs"] == 10 and out["a_only"] == 3 and out["b_only"] == 1
    assert math.isclose(out["accuracy"], 0.9 - 0.7)
    assert math.isclose(out["mcnemar_p"], binomtest(3, 4, 0.5).pvalue)
    assert out["accuracy_lo"] <= out["accuracy"] <= out["accuracy_hi"]
    assert out["log_loss"] < 0  # a's probabilities are better: a lower loss
    swapped = paired_differences(b, a)
    assert math.isclose(swapped["accuracy"], -out["accuracy"]) and swapped["a_only"] == 1


def test_paired_ci_is_tighter_than_unpaired_for_correlated_policies():
    # two policies that share most of their errors: the paired CI of the difference is narrow
    rng = np.random.default_rng(4)
    n = 200
    y = rng.integers(0, 2, n).astype(float)
    base = np.clip(0.6 * y + 0.4 * rng.random(n), 0.01, 0.99)
    better = np.clip(base + 0.05 * (2 * y - 1), 0.01, 0.99)
    ids = [f"i{k}" for k in range(n)]
    out = paired_differences(
        pd.DataFrame({"image_id": ids, "prob": better, "truth": y}),
        pd.DataFrame({"image_id": ids, "prob": base, "truth": y}),
    )
    assert out["log_loss_hi"] < 0  # better is better on every image: the CI excludes 0
    a, b = metric_cis(better, y, seed=5), metric_cis(base, y, seed=6)
    unpaired = math.hypot(a["log_loss_hi"] - a["log_loss_lo"], b["log_loss_hi"] - b["log_loss_lo"])
    assert out["log_loss_hi"] - out["log_loss_lo"] < 0.5 * unpaired


def _predictions():
    rows = []
    rng = np.random.default_rng(7)
    for i in range(20):
        truth = float(i % 2)
        for policy, skill in (("boed", 0.3), ("random", 0.1)):
            p = 0.5
            for step in range(3):
                p = float(
                    np.clip(p + (skill if truth else -skill) + 0.05 * rng.standard_normal(), 0.01, 0.99)
                )
                rows.append(
                    dict(
                        session_id=f"{policy}{i}",
                        policy=policy,
                        image_id=f"img{i}",
                        step=step,
                        prob=p,
                        truth=truth,
                    )
                )
    return pd.DataFrame(rows)


def test_summary_has_cis_and_proper_scores():
    summary = summarise(_predictions(), 2)
    for key in ("accuracy", "auroc", "entropy", "log_loss", "brier"):
        ok = summary[f"{key}_lo"].notna()
        assert (summary.loc[ok, f"{key}_lo"] <= summary.loc[ok, key] + 1e-12).all()
        assert (summary.loc[ok, key] <= summary.loc[ok, f"{key}_hi"] + 1e-12).all()
    boed = summary[summary["policy"] == "boed"].sort_values("scans")
    assert boed["log_loss"].is_monotonic_decreasing and boed["brier"].is_monotonic_decreasing
    assert summarise(_predictions(), 2, ci=False)["accuracy_lo"].isna().all()


def test_compare_against_random():
    table = compare(_predictions(), 2, reference="random")
    assert list(table["policy"].unique()) == ["boed"] and list(table["scans"]) == [0, 1, 2]
    last = table[table["scans"] == 2].iloc[0]
    assert last["n_pairs"] == 20 and last["log_loss"] < 0 and last["log_loss_hi"] < 0
    assert compare(_predictions(), 2, reference="raster").empty


@pytest.mark.parametrize("metric", ["accuracy", "entropy", "log_loss", "brier"])
def test_per_image_scores_are_elementwise(metric):
    p, y = np.array([[0.2, 0.9], [0.6, 0.4]]), np.array([[0.0, 1.0], [1.0, 1.0]])
    flat = per_image(metric, p.ravel(), y.ravel())
    assert np.allclose(per_image(metric, p, y).ravel(), flat)
