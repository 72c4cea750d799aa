"""The per-sampler simulation configs and the BOED columns of the table."""

from __future__ import annotations

import math

import pandas as pd

from boed.evaluation import report, usefulness
from boed.simulate import SimulationConfig


def test_run_configs_share_everything_but_policy_sampler_and_n():
    base = SimulationConfig(n_images=7, scans=3, n_samples=10, seed=5)
    ref = usefulness.run_config(base, "random")
    det = usefulness.run_config(base, "harmonic", deterministic=True)
    smp = usefulness.run_config(base, "aipo", checkpoint="ck")
    assert ref.policies == ("random",) and ref.sampler_checkpoint is None
    assert det.policies == ("boed",) and det.n_samples == 1 and det.sampler == "harmonic"
    assert smp.n_samples == 10 and smp.sampler_checkpoint == "ck"
    assert {c.n_images for c in (ref, det, smp)} == {7} and {c.seed for c in (ref, det, smp)} == {5}


def test_boed_columns_and_markdown_cis():
    headline = pd.DataFrame([{"sampler": "aipo", "l1": 0.1}, {"sampler": "tv", "l1": 0.2}])
    summary = pd.DataFrame(
        [
            {"policy": p, "scans": s, "accuracy": a, "accuracy_lo": a - 0.1, "accuracy_hi": a + 0.1,
             "log_loss": 0.5, "log_loss_lo": 0.4, "log_loss_hi": 0.6}
            for p, a in (("random", 0.5), ("aipo", 0.8), ("tv", 0.6))
            for s in (0, 2)
        ]
    )  # fmt: skip
    paired = pd.DataFrame(
        [
            {"policy": "aipo", "reference": "random", "scans": 2, "accuracy": 0.3, "accuracy_lo": 0.1,
             "accuracy_hi": 0.5, "log_loss": -0.1, "log_loss_lo": -0.2, "log_loss_hi": 0.0, "mcnemar_p": 0.1},
            {"policy": "tv", "reference": "random", "scans": 2, "accuracy": 0.1, "accuracy_lo": -0.1,
             "accuracy_hi": 0.3, "log_loss": 0.0, "log_loss_lo": -0.1, "log_loss_hi": 0.1, "mcnemar_p": 0.5},
            {"policy": "tv", "reference": "aipo", "scans": 2, "accuracy": -0.2, "accuracy_lo": -0.4,
             "accuracy_hi": -0.05, "log_loss": 0.1, "log_loss_lo": 0.0, "log_loss_hi": 0.2, "mcnemar_p": 0.3},
        ]
    )  # fmt: skip
    table = report.boed_columns(headline, summary, paired, 2)
    assert table["boed_accuracy"].tolist() == [0.8, 0.6]
    assert table.loc[1, "d_accuracy_vs_aipo"] == -0.2 and math.isnan(table.loc[0, "d_accuracy_vs_aipo"])
    md = report.markdown_table(table, 2, "aipo")
    assert "| tv | 0.2000 |" in md and "-0.200 [-0.400, -0.050]" in md and "+0.300 [+0.100, +0.500]" in md
    assert md.splitlines()[2].count("–") >= 1  # aipo against itself: no value
