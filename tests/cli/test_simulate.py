"""``boed simulate`` and ``boed report`` end to end with tiny toy models (loaders monkeypatched)."""

import sys
import types

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld

runner = CliRunner()


@pytest.fixture
def toys(monkeypatch):
    """The tiny preset (32 px images, 8 px scans, 5 x 5 grid, N = 4) with the toy world's models."""
    world = ToyWorld(size=32, patch=8, seed=4)
    loaded = {}

    def load_classifier(path=None, *, preset="cpu", device="cpu"):
        loaded["classifier"] = (path, preset, device)
        return BayesClassifier(world)

    def build_sampler(name, checkpoint=None, *, preset="cpu", device="cpu"):
        loaded["sampler"] = (name, checkpoint, preset)
        sampler = PosteriorSampler(world)
        sampler.name, sampler.sha256 = name, "0" * 64
        return sampler

    def open_dataset(images="chestxray", *, split="train", size=64, n=None, data_root=None, seed=0, **kw):
        loaded["dataset"] = (images, split, size, n)
        return ToyDataset(world, n=n or 4, seed=seed + 1)

    import classifiers
    import datasets

    registry = types.ModuleType("generative.registry")
    registry.SAMPLERS = ("aipo", "aipo-r", "vae")
    registry.build_sampler = build_sampler
    monkeypatch.setitem(sys.modules, "generative.registry", registry)
    monkeypatch.setattr(classifiers, "load_classifier", load_classifier)
    monkeypatch.setattr(datasets, "open_dataset", open_dataset, raising=False)
    return loaded


def _args(tmp_path, *extra):
    return [
        "simulate",
        "--preset",
        "tiny",
        "--n-images",
        "3",
        "--scans",
        "2",
        "--db",
        str(tmp_path / "b.db"),
        "--out",
        str(tmp_path / "report"),
        "--device",
        "cpu",
        "--policy",
        "boed,random,oracle",
        *extra,
    ]


def test_simulate_end_to_end_and_report(toys, tmp_path):
    result = runner.invoke(app, _args(tmp_path))
    assert result.exit_code == 0, result.output + str(result.exception)
    out = result.stdout
    for word in ("accuracy", "AUROC", "entropy", "boed (n=3)", "random (n=3)", "oracle (n=3)", "full image"):
        assert word in out
    assert toys["dataset"] == ("chestxray", "test", 32, 3) and toys["sampler"][0] == "aipo"
    index = tmp_path / "report" / "index.html"
    html = index.read_text()
    assert "fig5.png" in html and "sessions/session-" in html
    assert "http://" not in html and "https://" not in html  # no network needed
    assert (tmp_path / "report" / "fig5.png").stat().st_size > 1000

    # the report is rebuilt from the store alone
    from boed.store import Store

    run_id = Store.open(str(tmp_path / "b.db")).latest_run_id()
    again = runner.invoke(
        app, ["report", run_id, "--db", str(tmp_path / "b.db"), "--out", str(tmp_path / "r2")]
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r2" / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "r2" / "sessions").iterdir()) == sorted(
        p.name for p in (tmp_path / "report" / "sessions").iterdir()
    )


def test_resume_completes_without_duplicates(toys, tmp_path, monkeypatch):
    import boed.simulate as sim

    real = sim._one_session
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "_one_session", flaky)
    first = runner.invoke(app, _args(tmp_path, "--no-report"))
    assert first.exit_code == 130
    assert "boed simulate --resume" in first.stderr.replace("\n", "")
    from boed.store import Store

    store = Store.open(str(tmp_path / "b.db"))
    run_id = store.latest_run_id()
    assert store.get_run(run_id).status == "interrupted"
    monkeypatch.setattr(sim, "_one_session", real)
    second = runner.invoke(
        app,
        ["simulate", "--resume", run_id, "--db", str(tmp_path / "b.db"), "--no-report", "--device", "cpu"],
    )
    assert second.exit_code == 0, second.output
    sessions = store.sessions(run_id)
    assert len(sessions) == 3 * 4
    assert not sessions.duplicated(["image_id", "policy"]).any()
    assert store.get_run(run_id).status == "done"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--policy", "boed,greedy"], "valid policies: boed, random, raster, oracle"),
        (["--target", "Cancer"], "valid targets: any, all, Atelectasis"),
        (["--sampler", "gan"], "valid samplers: aipo, aipo-r, vae"),
        (["--preset", "huge"], "valid presets"),
        (["--n-images", "0"], "n-images must be at least 1"),
    ],
)
def test_bad_input_is_one_line(toys, tmp_path, extra, message):
    result = runner.invoke(app, _args(tmp_path, *extra))
    assert result.exit_code == 2
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_parts_that_do_not_fit_are_refused_before_work(toys, tmp_path):
    # cpu preset wants 64 px; the toy models are 32 px
    result = runner.invoke(
        app, [*_args(tmp_path)[:1], "--n-images", "2", "--db", str(tmp_path / "b.db"), "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "image sizes do not fit" in result.stderr
    from boed.store import Store

    assert Store.open(str(tmp_path / "b.db")).runs().empty


def test_unreachable_database_is_a_clear_error(toys, tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    result = runner.invoke(app, ["report", "latest", "--db", url])
    assert result.exit_code == 2 and "error" in result.stderr and "Traceback" not in result.stderr


def test_unknown_run_id(tmp_path):
    result = runner.invoke(app, ["report", "nope", "--db", str(tmp_path / "b.db")])
    assert result.exit_code == 2 and "nope" in result.stderr
