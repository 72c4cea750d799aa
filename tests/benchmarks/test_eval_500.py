"""The verdicts of benchmarks/eval_500.py (issue 10's targets) on hand-made tables."""

import math

import pandas as pd
import pytest

from benchmarks import eval_500


def _paired(acc_lo=0.01, ll_hi=-0.01, hit=0.05):
    rows = []
    for k in range(0, 6):
        rows.append(
            {"policy": "boed", "scans": k, "accuracy": 0.05, "accuracy_lo": acc_lo, "accuracy_hi": 0.1,
             "log_loss": -0.05, "log_loss_lo": -0.1, "log_loss_hi": ll_hi,
             "hit_rate": hit, "hit_rate_lo": -0.01, "hit_rate_hi": 0.1}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _summary(boed_acc=0.8, random_acc=0.7, full_acc=0.9, boed_ll=0.45, random_ll=0.5, full_ll=0.4):
    return pd.DataFrame(
        [
            {"policy": "boed", "scans": 5, "accuracy": boed_acc, "log_loss": boed_ll},
            {"policy": "random", "scans": 5, "accuracy": random_acc, "log_loss": random_ll},
            {"policy": "full-image", "scans": math.nan, "accuracy": full_acc, "log_loss": full_ll},
        ]
    )


def test_all_targets_met():
    checks = eval_500.verdicts(_summary(), _paired())
    assert len(checks) == 3 * 4 + 2 and all(c["pass"] for c in checks)
    assert {c["scans"] for c in checks} == {2, 3, 4, 5}
    gap = [c for c in checks if c["target"].startswith("closes")]
    assert [c["diff"] for c in gap] == pytest.approx([0.5, 0.5])


def test_each_target_can_fail():
    assert not any(
        c["pass"]
        for c in eval_500.verdicts(_summary(), _paired(acc_lo=-0.01))
        if "accuracy CI" in c["target"]
    )
    assert not any(
        c["pass"] for c in eval_500.verdicts(_summary(), _paired(ll_hi=0.01)) if "log loss CI" in c["target"]
    )
    assert not any(
        c["pass"] for c in eval_500.verdicts(_summary(), _paired(hit=0.0)) if "hit rate" in c["target"]
    )
    short = eval_500.verdicts(_summary(boed_acc=0.74, boed_ll=0.48), _paired())
    assert [c["pass"] for c in short if c["target"].startswith("closes")] == [False, False]


def test_closed_fraction_and_complete_images():
    assert eval_500.closed_fraction(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert eval_500.closed_fraction(0.45, 0.5, 0.4) == pytest.approx(0.5)  # log loss: lower is better
    assert math.isnan(eval_500.closed_fraction(0.8, 0.7, 0.7))
    preds = pd.DataFrame(
        {
            "image_id": ["a", "a", "a", "b", "b"],
            "policy": ["full-image", "boed", "random", "full-image", "random"],
        }
    )
    assert eval_500.complete_images(preds, ("boed", "random")) == {"a"}
