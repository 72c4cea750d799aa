"""benchmarks/amortized.py: exact sessions taken from a store (``--exact-from``); the share of the
gain kept is tested in tests/boed/test_amortized.py."""

import pytest

from benchmarks import amortized as bench
from boed.eig import resolve_target
from boed.simulate import SimulationConfig, run_simulation
from boed.store import Store
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld


def _run(tmp_path, n=4):
    world = ToyWorld(seed=4)
    config = SimulationConfig(
        n_images=n, scans=2, n_samples=4, grid=3, image_size=8, patch_size=4, policies=("boed", "random")
    )
    store = Store.open(str(tmp_path / "e.db"))
    dataset = ToyDataset(world, n=n)
    run_id = run_simulation(store, dataset, PosteriorSampler(world), BayesClassifier(world), config)
    return store, run_id, dataset, resolve_target("any", list(world.labels)).labels[0]


def test_rows_from_a_store_are_its_sessions(tmp_path):
    store, run_id, dataset, label = _run(tmp_path)
    parts = {"classifier": None, "sampler": None}
    rows = bench.rows_from_store(str(tmp_path / "e.db"), dataset, parts, 2, label)
    preds = store.predictions(run_id, label=label)
    steps = store.steps(run_id)
    sessions = store.sessions(run_id)
    assert set(rows) == {"boed", "random"} and len(rows["boed"]) == len(rows["random"]) == 4
    for policy, got in rows.items():
        for row in got:
            sid = sessions[(sessions.policy == policy) & (sessions.image_id == row["image_id"])].session_id
            want = preds[preds.session_id == int(sid.iloc[0])].sort_values("step")
            assert row["probs"] == pytest.approx(list(want.prob))
            assert row["image_index"] == dataset.ids.index(row["image_id"])
            chosen = steps[steps.session_id == int(sid.iloc[0])].sort_values("step").candidate
            assert row["chosen"][0] is None and row["chosen"][1:] == [int(c) for c in chosen.iloc[1:]]


def test_rows_from_a_store_of_other_checkpoints_are_refused(tmp_path):
    _, _, dataset, label = _run(tmp_path, n=2)
    other = {"classifier": "a" * 64, "sampler": None}
    with pytest.raises(SystemExit, match="used another classifier"):
        bench.rows_from_store(str(tmp_path / "e.db"), dataset, other, 2, label)
    with pytest.raises(SystemExit, match="no run in that store"):
        bench.rows_from_store(str(tmp_path / "empty.db"), dataset, dict.fromkeys(other), 2, label)
