"""``boed simulate`` with located findings (hit rate, fraction observed), ``--seeds`` and
``--first-completions``, end to end on the toy world (loaders monkeypatched)."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.boed.toys import ToyDataset, ToyWorld
from tests.cli.toy_simulate import install

runner = CliRunner()
BOXES = {"Effusion": (0, 0, 8, 8), "Nodule": (24, 24, 32, 32)}


class LocatedToyDataset(ToyDataset):
    """The toy images with a box for each positive finding (like the phantoms' ``findings``)."""

    def findings(self, i):
        lab = self[i]["lab"]
        return [(name, BOXES[name]) for name in BOXES if float(lab[self.labels.index(name)]) == 1.0]


@pytest.fixture
def located(monkeypatch):
    install(monkeypatch.setattr, monkeypatch.setitem)
    world = ToyWorld(size=32, patch=8, seed=4)

    def open_dataset(images="chestxray", *, split="train", size=64, n=None, data_root=None, seed=0, **kw):
        return LocatedToyDataset(world, n=n or 4, seed=seed + 1)

    import datasets

    monkeypatch.setattr(datasets, "open_dataset", open_dataset)


def _args(tmp_path, *extra):
    return [
        "simulate",
        "--preset",
        "tiny",
        "--n-images",
        "6",
        "--scans",
        "2",
        "--db",
        str(tmp_path / "b.db"),
        "--device",
        "cpu",
        "--policy",
        "boed,random,random-disjoint",
        *extra,
    ]


def test_hit_rate_and_fraction_observed_reach_table_csvs_and_report(located, tmp_path):
    result = runner.invoke(app, _args(tmp_path, "--out", str(tmp_path / "r"), "--first-completions", "12"))
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "hit rate" in result.stdout and "fraction observed" in result.stdout
    assert "no overlap k·p²/S²" in result.stdout and "Δ hit rate" in result.stdout
    # the shared first decision and its Monte Carlo standard error
    assert "first BOED decision (shared by 6 sessions, N = 12 completions)" in result.stdout
    assert " ± " in result.stdout.split("first BOED decision")[1]
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    for column in ("hit_rate", "hit_rate_lo", "hit_rate_hi", "hit_n", "observed", "observed_disjoint"):
        assert column in summary
    curves = summary[summary["policy"] != "full-image"].set_index(["policy", "scans"])
    assert (curves.loc[(slice(None), 0.0), "hit_rate"] == 0).all()  # nothing scanned yet
    # 8 px scans of 32 px images: a disjoint scan is 1/16 of the image
    assert curves.loc[("random-disjoint", 2.0), "observed"] == pytest.approx(2 / 16)
    assert curves.loc[("random", 2.0), "observed"] <= 2 / 16 + 1e-12
    assert curves.loc[("boed", 1.0), "observed_disjoint"] == pytest.approx(1 / 16)
    paired = pd.read_csv(tmp_path / "r" / "paired.csv")
    assert {"hit_rate", "hit_rate_lo", "hit_mcnemar_p", "observed"} <= set(paired.columns)
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Hit rate" in html and "Fraction of the image observed" in html and "coverage.png" in html
    assert "first BOED decision (shared by 6 sessions, N = 12 completions)" in html
    assert (tmp_path / "r" / "coverage.png").stat().st_size > 1000

    # the store alone: the boxes are kept per session and the report is rebuilt from them
    from boed.store import Store

    store = Store.open(str(tmp_path / "b.db"))
    run_id = store.latest_run_id()
    assert store.run_config(run_id)["first_completions"] == 12
    sessions = store.sessions(run_id)
    assert any(f for f in sessions["findings"])
    again = runner.invoke(
        app, ["report", run_id, "--db", str(tmp_path / "b.db"), "--out", str(tmp_path / "r2")]
    )
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r2" / "summary.csv"), summary)


def test_seeds_repeat_the_run_and_report_the_spread(located, tmp_path):
    result = runner.invoke(
        app, _args(tmp_path, "--out", str(tmp_path / "s"), "--seeds", "0,3", "--no-report")
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "mean ± sd over seeds 0" in result.stdout
    spread = pd.read_csv(tmp_path / "s" / "seeds.csv")
    assert {"policy", "scans", "metric", "n_seeds", "mean", "sd", "seed_0", "seed_3"} <= set(spread.columns)
    runs = pd.read_csv(tmp_path / "s" / "seeds-runs.csv")
    assert runs["seed"].tolist() == [0, 3]

    from boed.store import Store

    store = Store.open(str(tmp_path / "b.db"))
    assert [store.get_run(r).seed for r in runs["run_id"]] == [0, 3]
    row = spread[
        (spread["policy"] == "boed") & (spread["scans"] == 2) & (spread["metric"] == "accuracy")
    ].iloc[0]
    values = [float(row["seed_0"]), float(row["seed_3"])]
    assert row["mean"] == pytest.approx(sum(values) / 2)
    assert row["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)  # sample sd of two


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--seeds", "1,1"], "--seeds needs distinct integers"),
        (["--seeds", "0,1", "--resume", "20260101-000000-abcdef"], "--seeds starts new runs"),
        (["--first-completions", "0"], "first-completions must be at least 1"),
    ],
)
def test_bad_seed_and_first_decision_options_are_one_line(located, tmp_path, extra, message):
    result = runner.invoke(app, _args(tmp_path, *extra))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
