"""``boed simulate --batch-episodes B`` and ``--scans-per-step k`` with the toy world's parts."""

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.cli.toy_simulate import install

runner = CliRunner()


@pytest.fixture
def toys(monkeypatch):
    install(monkeypatch.setattr, monkeypatch.setitem)


def _run(tmp_path, name, *extra):
    db = tmp_path / f"{name}.db"
    args = ["simulate", "--preset", "tiny", "--n-images", "3", "--scans", "2", "--db", str(db), "--no-report",
            "--device", "cpu", "--policy", "boed,random", *extra]  # fmt: skip
    return runner.invoke(app, args), db


def _results(db):
    from boed.store import Store

    with Store.open(db) as store:
        run_id = store.latest_run_id()
        steps = store.steps(run_id).sort_values(["image_id", "policy", "step"])
        preds = store.predictions(run_id).sort_values(["image_id", "policy", "step", "label"])
        keys = ["image_id", "policy", "step"]
        return (
            steps[[*keys, "row", "col", "candidate", "eig"]].reset_index(drop=True),
            preds[[*keys, "label", "prob"]].reset_index(drop=True),
            store.get_run(run_id).config,
        )


def test_batched_episodes_give_the_results_of_batch_one(toys, tmp_path):
    import pandas as pd

    one, db1 = _run(tmp_path, "one")
    four, db4 = _run(tmp_path, "four", "--batch-episodes", "2")
    assert one.exit_code == 0 and four.exit_code == 0, four.output
    steps1, preds1, config1 = _results(db1)
    steps4, preds4, config4 = _results(db4)
    pd.testing.assert_frame_equal(steps1, steps4)
    pd.testing.assert_frame_equal(preds1, preds4)
    assert len(steps1) == 3 * (1 + 2 * 3)
    assert config4["batch_episodes"] == 2 and config1["batch_episodes"] == 1
    assert four.stdout.split("run ")[1].split(":")[1] == one.stdout.split("run ")[1].split(":")[1]


def test_scans_per_step_logs_every_scan(toys, tmp_path):
    result, db = _run(tmp_path, "k2", "--scans-per-step", "2", "--scans", "3", "--policy", "boed")
    assert result.exit_code == 0, result.output
    steps, _, config = _results(db)
    boed = steps[steps.policy == "boed"]
    assert config["scans_per_step"] == 2 and sorted(boed.step.unique()) == [0, 1, 2, 3]
    per_session = boed[boed.step > 0].groupby("image_id")["candidate"].nunique()
    assert (per_session == 3).all()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--batch-episodes", "0"], "batch-episodes must be at least 1, got 0"),
        (["--scans-per-step", "0"], "scans-per-step must be at least 1, got 0"),
        (["--scans-per-step", "26"], "scans-per-step 26 is more than the 25 candidate locations of --grid 5"),
    ],
)
def test_bad_batch_options_are_one_line(toys, tmp_path, extra, message):
    result, db = _run(tmp_path, "bad", *extra)
    assert result.exit_code == 2 and message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr and not db.exists()
