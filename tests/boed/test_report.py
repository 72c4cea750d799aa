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
