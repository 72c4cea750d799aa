"""Report metrics against independent implementations; summary from a real SQLite store."""

import math

import numpy as np
import pandas as pd
import pytest

from boed.policies import FULL_IMAGE
from boed.report.metrics import accuracy, binary_auroc, mean_binary_entropy, summarise, trajectories


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 50).astype(float)
    scores = np.round(rng.random(50) + 0.3 * truth, 1)  # ties included
    assert binary_auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))
    truth[:5] = np.nan
    keep = ~np.isnan(truth)
    assert binary_auroc(scores, truth) == pytest.approx(roc_auc_score(truth[keep], scores[keep]))
    assert math.isnan(binary_auroc(scores, np.ones(50)))


def test_accuracy_and_entropy():
    assert accuracy(np.array([0.9, 0.2, 0.5, 0.1]), np.array([1, 0, 0, np.nan])) == pytest.approx(2 / 3)
    assert mean_binary_entropy(np.array([0.5])) == pytest.approx(math.log(2))


def _long(rows):
    return pd.DataFrame(rows, columns=["session_id", "policy", "image_id", "step", "prob", "truth"])


def test_early_stopped_sessions_carry_their_last_prediction():
    df = _long(
        [
            (1, "boed", "a", 0, 0.4, 1.0),
            (1, "boed", "a", 1, 0.7, 1.0),  # stopped after 1 scan
            (2, "boed", "b", 0, 0.4, 0.0),
            (2, "boed", "b", 1, 0.3, 0.0),
            (2, "boed", "b", 2, 0.2, 0.0),
            (3, FULL_IMAGE, "a", 0, 0.9, 1.0),
            (4, FULL_IMAGE, "b", 0, 0.6, 0.0),
        ]
    )
    traj = trajectories(df, 2)
    assert traj.set_index("session_id").loc[1, 2] == pytest.approx(0.7)
    assert list(traj["scans_used"]) == [1, 2]
    summary = summarise(df, 2)
    boed = summary[summary["policy"] == "boed"].set_index("scans")
    assert boed.loc[0, "accuracy"] == 0.5 and boed.loc[2, "accuracy"] == 1.0
    assert boed.loc[2, "scans_used"] == 1.5
    full = summary[summary["policy"] == FULL_IMAGE]
    assert full["accuracy"].iloc[0] == 0.5 and math.isnan(full["scans"].iloc[0])


def test_summary_from_real_store_matches_logged_steps(tmp_path):
    from boed.report import build_report, load_summary
    from boed.simulate import SimulationConfig, run_simulation
    from boed.store import Store
    from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld

    world = ToyWorld(seed=4)
    store = Store.open(str(tmp_path / "s.db"))
    config = SimulationConfig(
        images="toy",
        n_images=4,
        scans=2,
        n_samples=4,
        grid=3,
        image_size=8,
        patch_size=4,
        policies=("boed", "random"),
        figure_sessions=1,
        figure_completions=2,
    )
    run_id = run_simulation(
        store, ToyDataset(world, n=4), PosteriorSampler(world), BayesClassifier(world), config
    )
    _, summary = load_summary(store, run_id)
    assert set(summary["policy"]) == {"boed", "random", FULL_IMAGE}
    steps = store.steps(run_id)
    assert len(steps) == 4 * (3 + 3 + 1)
    boed = steps[(steps["policy"] == "boed") & (steps["step"] > 0)]
    assert boed["eig"].notna().all() and boed["candidate"].notna().all()
    arrays = store.load_arrays(int(boed["session_id"].iloc[0]))
    assert arrays[(1, "eig")].shape == (3, 3)
    # a fresh Store object (nothing in memory) rebuilds the report
    index = build_report(Store.open(str(tmp_path / "s.db")), run_id, tmp_path / "rep")
    assert index.is_file() and any((tmp_path / "rep" / "sessions").iterdir())


def _own_label_run(tmp_path, target):
    """A run of a classifier with two labels of its own (no Any output), written through the store."""
    from boed.store import Store

    store = Store.open(str(tmp_path / "own.db"))
    run_id = store.create_run(
        {"scans": 1, "policies": ["boed"], "target": target, "patch_size": 4},
        sampler="s",
        sampler_sha256=None,
        classifier="c",
        classifier_sha256=None,
        dataset={"images": "folder", "warnings": ["the sampler checkpoint was trained on other data"]},
        seed=0,
        labels=["big", "bright"],
        code_version="test",
        target=target,
    )
    # big: always right after the scan; bright: always wrong
    for i, (big, bright) in enumerate([(1.0, 0.0), (0.0, 1.0)]):
        sid = store.start_session(
            run_id, image_id=f"i{i}", image_index=i, policy="boed", true_labels=[big, bright]
        )
        store.log_step(
            sid, step=0, location=None, candidate=None, eig=None, eig_map=None, probs=[0.5, 0.5], seconds=0
        )
        store.log_step(sid, step=1, location=(0, 0), candidate=0, eig=0.1, eig_map=[[0.1]],
                       probs=[big, 1 - bright], seconds=0)  # fmt: skip
        for name, value in (("observed", np.zeros((8, 8))), ("mask", np.zeros((8, 8))),
                            ("completions", np.zeros((1, 8, 8))), ("ig", np.zeros((1, 1, 1))),
                            ("eig", np.zeros((1, 1))), ("location", np.zeros(2))):  # fmt: skip
            store.save_array(sid, 1, name, np.asarray(value, dtype=np.float32))
        store.finish_session(sid)
    store.finish_run(run_id, status="done")
    return store, run_id


@pytest.mark.parametrize("target", ["big", "all"])
def test_report_of_a_run_without_an_any_output_names_its_target(tmp_path, monkeypatch, target):
    import boed.report.build as build

    store, run_id = _own_label_run(tmp_path, target)
    seen = {}
    monkeypatch.setattr(build, "plot_performance", lambda s, path, label: seen.setdefault("fig5", label))
    monkeypatch.setattr(
        build, "plot_session", lambda a, path, p, title: seen.setdefault("fig6", []).append(title)
    )
    index = build.build_report(store, run_id, tmp_path / "rep")
    html = index.read_text()
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert set(summary["target"]) == {target} and "Any" not in html
    after = summary[summary["scans"] == 1]["accuracy"].iloc[0]
    if target == "big":
        assert seen["fig5"] == "big" and "big vs number of scans (Fig. 5)" in html
        assert seen["fig6"] == ["image i0 (big = 1)", "image i1 (big = 0)"]
        assert after == 1.0
    else:  # macro mean of big (1.0) and bright (0.0)
        assert seen["fig5"] == "all (2 labels)" and "all (2 labels) vs number of scans" in html
        assert seen["fig6"] == ["image i0 (all: positive big)", "image i1 (all: positive bright)"]
        assert after == 0.5
    assert "warning: the sampler checkpoint was trained on other data" in html


def test_macro_mean_skips_unknown_values():
    from boed.report.build import _macro_mean

    a = pd.DataFrame({"policy": ["p", "p"], "scans": [0, 1], "n": [2, 2], "accuracy": [1.0, 0.5],
                      "auroc": [math.nan, 1.0], "entropy": [0.2, 0.4], "scans_used": [1.0, 1.0]})  # fmt: skip
    b = a.assign(accuracy=[0.0, 0.5], auroc=[math.nan, 0.0], entropy=[0.4, 0.0])
    out = _macro_mean([a, b])
    assert out["accuracy"].tolist() == [0.5, 0.5] and out["entropy"].tolist() == pytest.approx([0.3, 0.2])
    assert math.isnan(out["auroc"].iloc[0]) and out["auroc"].iloc[1] == 0.5
    c = a.assign(auroc=[0.8, math.nan])
    assert _macro_mean([a, c])["auroc"].tolist()[1] == 1.0  # NaN left out of the mean, not counted as 0
