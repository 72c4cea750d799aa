"""Hit rate and fraction observed (boed.report.coverage): the definition of "covered", the
per-session tables, their CIs and the paired comparison."""

import math

import numpy as np
import pandas as pd
import pytest

from boed.report.coverage import (
    coverage_summary,
    covers,
    disjoint_fraction,
    overlap,
    paired_coverage,
    session_coverage,
    target_boxes,
)

LABELS = ["Mass", "Nodule", "Any"]

# (scan row, col, patch, box, covered): |P ∩ B| >= 0.5 * min(|P|, |B|)
COVER_CASES = [
    (0, 0, 16, (4, 4, 8, 8), True),  # a small box inside the scan
    (0, 0, 16, (14, 4, 18, 8), True),  # half of a 4 x 4 box inside: 8 >= 8
    (0, 0, 16, (15, 4, 19, 8), False),  # a quarter inside: 4 < 8
    (0, 0, 16, (0, 0, 40, 40), True),  # a large box that fills the scan
    (0, 0, 16, (8, 0, 40, 40), True),  # fills half the scan: 128 >= 128
    (0, 0, 16, (9, 0, 40, 40), False),  # grazes it: 112 < 128
    (20, 20, 16, (0, 0, 10, 10), False),  # elsewhere
]


@pytest.mark.parametrize(("row", "col", "patch", "box", "expected"), COVER_CASES)
def test_covers_needs_half_of_the_smaller_area(row, col, patch, box, expected):
    assert covers(row, col, patch, box) is expected


def test_overlap_and_disjoint_fraction():
    assert overlap(0, 0, 16, (8, 8, 24, 24)) == 64
    assert overlap(0, 0, 16, (16, 0, 20, 4)) == 0  # half-open boxes: row 16 is outside the scan
    np.testing.assert_allclose(
        disjoint_fraction(np.arange(6), 16, 64), [0, 1 / 16, 2 / 16, 3 / 16, 4 / 16, 5 / 16]
    )
    assert float(disjoint_fraction(40, 16, 64)) == 1.0


def test_target_boxes_of_a_label_and_of_any():
    findings = [{"label": "Mass", "box": [0, 0, 4, 4]}, {"label": "Nodule", "box": [10, 10, 12, 12]}]
    assert target_boxes(findings, ["Mass"]) == [(0, 0, 4, 4)]
    assert target_boxes(findings, ["Any"]) == [(0, 0, 4, 4), (10, 10, 12, 12)]
    assert target_boxes(None, ["Any"]) == [] and target_boxes([], ["Mass"]) == []


def _frames():
    """Three images x two policies on 32 px images, 8 px scans."""
    mass = [{"label": "Mass", "box": [0, 0, 8, 8]}]
    sessions = pd.DataFrame(
        [
            # image a: Mass positive, box top-left; b: positive by label but no box (left out);
            # c: healthy (left out of the hit rate, counted in the fraction observed)
            dict(
                session_id=1, policy="boed", image_id="a", status="done", true_labels=[1, 0, 1], findings=mass
            ),
            dict(
                session_id=2, policy="boed", image_id="b", status="done", true_labels=[1, 0, 1], findings=None
            ),
            dict(
                session_id=3, policy="boed", image_id="c", status="done", true_labels=[0, 0, 0], findings=[]
            ),
            dict(
                session_id=4,
                policy="random",
                image_id="a",
                status="done",
                true_labels=[1, 0, 1],
                findings=mass,
            ),
            dict(
                session_id=5,
                policy="random",
                image_id="b",
                status="done",
                true_labels=[1, 0, 1],
                findings=None,
            ),
            dict(
                session_id=6, policy="random", image_id="c", status="done", true_labels=[0, 0, 0], findings=[]
            ),
            dict(
                session_id=7,
                policy="full-image",
                image_id="a",
                status="done",
                true_labels=[1, 0, 1],
                findings=mass,
            ),
            dict(
                session_id=8,
                policy="boed",
                image_id="d",
                status="failed",
                true_labels=[1, 0, 1],
                findings=mass,
            ),
        ]
    )
    scans = {  # session -> scans (row, col); boed finds the box at scan 2, random never; 3 stops early
        1: [(16, 16), (0, 0)],
        2: [(0, 0), (8, 8)],
        3: [(0, 0)],
        4: [(16, 16), (16, 16)],
        5: [(0, 0), (0, 4)],
        6: [(8, 8), (24, 24)],
    }
    rows = [dict(session_id=s, step=0, row=pd.NA, col=pd.NA) for s in scans]
    rows += [
        dict(session_id=s, step=t + 1, row=r, col=c)
        for s, path in scans.items()
        for t, (r, c) in enumerate(path)
    ]
    steps = pd.DataFrame(rows).astype({"row": "Int64", "col": "Int64"})
    return sessions, steps


def test_session_coverage_hits_by_scan_and_observed_fraction():
    sessions, steps = _frames()
    table = session_coverage(sessions, steps, LABELS, ["Mass"], scans=2, patch=8, image_size=32).set_index(
        "session_id"
    )
    assert sorted(table.index) == [1, 2, 3, 4, 5, 6]  # no full-image, no failed session
    assert table.loc[1, ["hit_0", "hit_1", "hit_2"]].tolist() == [0.0, 0.0, 1.0]
    assert table.loc[4, ["hit_0", "hit_1", "hit_2"]].tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(table.loc[2, "hit_2"]) and math.isnan(table.loc[3, "hit_2"])  # not located
    assert table.loc[1, "observed_2"] == pytest.approx(2 * 64 / 1024)
    assert table.loc[4, "observed_2"] == pytest.approx(64 / 1024)  # the same scan twice
    assert table.loc[5, "observed_2"] == pytest.approx((64 + 32) / 1024)  # overlapping by half
    assert table.loc[3, "observed_2"] == pytest.approx(64 / 1024)  # stopped early: kept
    # for Any every finding counts; for Nodule no session is located
    anything = session_coverage(sessions, steps, LABELS, ["Any"], 2, 8, 32).set_index("session_id")
    assert anything.loc[1, "hit_2"] == 1.0
    nodule = session_coverage(sessions, steps, LABELS, ["Nodule"], 2, 8, 32)
    assert nodule["hit_2"].isna().all()


def test_coverage_summary_and_paired_comparison():
    sessions, steps = _frames()
    table = session_coverage(sessions, steps, LABELS, ["Mass"], 2, 8, 32)
    summary = coverage_summary(table, 2, 8, 32).set_index(["policy", "scans"])
    assert summary.loc[("boed", 2.0), "hit_rate"] == 1.0 and summary.loc[("boed", 2.0), "hit_n"] == 1
    assert summary.loc[("random", 2.0), "hit_rate"] == 0.0
    assert math.isnan(summary.loc[("boed", 2.0), "hit_rate_lo"])  # one session: no CI
    assert summary.loc[("boed", 1.0), "observed_disjoint"] == pytest.approx(64 / 1024)
    boed = summary.loc[("boed", 2.0)]
    assert boed["observed"] == pytest.approx(np.mean([128, 128, 64]) / 1024)
    assert boed["observed_lo"] <= boed["observed"] <= boed["observed_hi"]
    paired = paired_coverage(table, "boed", "random", 2)
    assert paired["hit_rate"] == 1.0 and paired["hit_n"] == 1 and paired["hit_mcnemar_p"] == 1.0
    assert paired["observed"] == pytest.approx(np.mean([64, 32, -64]) / 1024)


def test_hit_rate_ci_and_mcnemar_on_many_sessions():
    n = 40
    rows = []
    for i in range(n):  # policy a hits 30 of 40, b hits 10: the same images
        for policy, hit in (("a", i < 30), ("b", i < 10)):
            rows.append(
                {"policy": policy, "image_id": str(i), "located": True, "hit_0": 0.0, "hit_1": float(hit)}
            )
    table = pd.DataFrame(rows).assign(observed_0=0.0, observed_1=0.25)
    summary = coverage_summary(table, 1, 16, 64).set_index(["policy", "scans"])
    lo, hi = summary.loc[("a", 1.0), ["hit_rate_lo", "hit_rate_hi"]]
    assert lo < 0.75 < hi and hi - lo < 0.35
    paired = paired_coverage(table, "a", "b", 1)
    assert paired["hit_rate"] == pytest.approx(0.5) and paired["hit_rate_lo"] > 0
    assert paired["hit_mcnemar_p"] < 1e-4  # 20 discordant pairs, all for a


def test_a_simulation_stores_the_boxes_and_a_bad_box_fails_only_its_image():
    from boed.simulate import SimulationConfig, run_simulation
    from tests.boed.toys import BayesClassifier, FakeStore, PosteriorSampler, ToyDataset, ToyWorld

    class Located(ToyDataset):
        def findings(self, i):
            return [("Nodule", (0, 0, 4, 4))] if i != 1 else [("Nodule", (4, 4, 4, 9))]  # image 1: empty box

    world = ToyWorld(seed=4)
    config = SimulationConfig(
        n_images=3, scans=1, n_samples=3, grid=3, image_size=8, patch_size=4, policies=("random",)
    )
    store = FakeStore()
    run_simulation(store, Located(world, n=3), PosteriorSampler(world), BayesClassifier(world), config)
    by_image = {}
    for s in store.sessions.values():
        by_image.setdefault(s["image_index"], []).append(s)
    assert all(s["status"] == "done" and s["findings"] == [("Nodule", (0, 0, 4, 4))] for s in by_image[0])
    assert all(s["status"] == "failed" and "empty or negative box" in s["error"] for s in by_image[1])
    assert all(s["status"] == "done" for s in by_image[2]) and store.runs["run0"]["status"] == "done"
