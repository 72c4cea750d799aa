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
    # the paired differences against random follow, for every other policy
    assert "minus random, same images" in out and "Δ log loss" in out and "  oracle" in out
    for name in ("summary.csv", "paired.csv", "diagnostics.csv"):
        assert (tmp_path / "report" / name).is_file()
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


def _interrupt_at(monkeypatch, n: int):
    """Ctrl-C at the ``n``-th session; returns the real session function, to put back."""
    import boed.simulate as sim

    real = sim._one_session
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "_one_session", flaky)
    return real


def test_resume_completes_without_duplicates(toys, tmp_path, monkeypatch):
    import boed.simulate as sim

    real = _interrupt_at(monkeypatch, 6)
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


def test_the_runtime_is_recorded_and_a_resumed_run_keeps_it(toys, tmp_path, monkeypatch):
    import boed.simulate as sim
    import classifiers.runtime

    used = []

    def with_runtime(classifier, runtime="eager", precision="fp32"):
        used.append(runtime)
        return classifier

    monkeypatch.setattr(classifiers.runtime, "with_runtime", with_runtime)
    real = _interrupt_at(monkeypatch, 3)
    first = runner.invoke(app, _args(tmp_path, "--no-report", "--runtime", "onnx"))
    assert first.exit_code == 130
    from boed.store import Store

    store = Store.open(str(tmp_path / "b.db"))
    run_id = store.latest_run_id()
    assert store.run_config(run_id)["runtime"] == "onnx"
    monkeypatch.setattr(sim, "_one_session", real)
    second = runner.invoke(
        app,
        ["simulate", "--resume", run_id, "--db", str(tmp_path / "b.db"), "--no-report", "--device", "cpu"],
    )
    assert second.exit_code == 0, second.output
    assert used == ["onnx", "onnx"]  # the resumed run's stored runtime, not the option's default


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--policy", "boed,greedy"], "valid policies: boed, random, raster, oracle"),
        (["--target", "Cancer"], "valid targets: any, all, Atelectasis"),
        (["--sampler", "gan"], "valid samplers: aipo, aipo-r, vae"),
        (["--preset", "huge"], "valid presets"),
        (["--n-images", "0"], "n-images must be at least 1"),
        (["--runtime", "tensorrt"], "unknown --runtime 'tensorrt'; valid runtimes: eager, compile, onnx"),
    ],
)
def test_bad_input_is_one_line(toys, tmp_path, extra, message):
    result = runner.invoke(app, _args(tmp_path, *extra))
    assert result.exit_code == 2
    assert message in _flat(result.stderr)
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


def _flat(text):
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _run_record(tmp_path):
    from boed.store import Store

    store = Store.open(str(tmp_path / "b.db"))
    return store, store.get_run(store.latest_run_id())


def test_outputs_name_the_run_target(toys, tmp_path):
    import pandas as pd

    result = runner.invoke(app, _args(tmp_path, "--target", "effusion", "--policy", "boed,random"))
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "Effusion vs number of scans" in _flat(result.stdout) and "Any" not in result.stdout
    store, run = _run_record(tmp_path)
    assert run.target == "Effusion"
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert set(summary["target"]) == {"Effusion"}
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Effusion vs number of scans (Fig. 5)" in html and "Any vs" not in html
    # the summary is that of the Effusion label, not of Any
    from boed.report.metrics import summarise

    expected = summarise(store.predictions(run.run_id, label="Effusion"), 2, ["boed", "random"])
    pd.testing.assert_series_equal(summary["accuracy"], expected["accuracy"], check_names=False)
    again = runner.invoke(
        app, ["report", run.run_id, "--db", str(tmp_path / "b.db"), "--out", str(tmp_path / "r")]
    )
    assert again.exit_code == 0 and "Effusion vs number of scans" in _flat(again.stdout)
    shown = runner.invoke(app, ["sessions", "show", "--db", str(tmp_path / "b.db")])
    assert shown.exit_code == 0 and "Effusion: accuracy by number of scans" in _flat(shown.stdout)


def test_target_all_is_the_macro_mean_over_labels(toys, tmp_path):
    import pandas as pd

    result = runner.invoke(app, _args(tmp_path, "--target", "all", "--policy", "random"))
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "all (14 labels) vs number of scans" in _flat(result.stdout)
    store, run = _run_record(tmp_path)
    assert run.target == "all"
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    from boed.report.metrics import summarise

    per_label = [
        summarise(store.predictions(run.run_id, label=name), 2, ["random"]) for name in run.labels[:14]
    ]
    expected = pd.concat([t["entropy"] for t in per_label], axis=1).mean(axis=1)
    pd.testing.assert_series_equal(summary["entropy"], expected, check_names=False)


@pytest.mark.parametrize("target", ["big", "any"])
def test_target_is_checked_against_the_classifier_labels(toys, tmp_path, monkeypatch, target):
    import classifiers
    from tests.boed.toys import BayesClassifier, ToyWorld

    world = ToyWorld(size=32, patch=8, seed=4)

    def own_labels(path=None, *, preset="cpu", device="cpu"):
        clf = BayesClassifier(world)
        clf.labels = ("big", "bright")
        return clf

    monkeypatch.setattr(classifiers, "load_classifier", own_labels)
    result = runner.invoke(app, _args(tmp_path, "--target", target))
    assert result.exit_code == 2
    err = _flat(result.stderr)
    if target == "big":  # accepted as a name; the toy's outputs then do not fit its 2 labels
        assert "valid targets" not in err and "labels" in err
    else:
        assert (
            "target 'any' needs a classifier with an 'Any' output" in err
            and "valid targets: all, big, bright" in err
        )


def _provenance_parts(monkeypatch, split):
    """The toy dataset described as a folder collection, and a classifier trained on its ``split``."""
    from tests.boed.toys import ToyDataset

    description = {"source": "folder", "fingerprint": "f" * 64, "split": "test", "split_seed": 0,
                   "labels": [], "size": 32, "n": 3}  # fmt: skip
    monkeypatch.setattr(ToyDataset, "describe", lambda self: dict(description))
    import classifiers

    real = classifiers.load_classifier

    def trained(*args, **kw):
        clf = real(*args, **kw)
        clf.meta = {"data": {"train": description | {"split": split}, "val": description | {"split": "val"}}}
        return clf

    monkeypatch.setattr(classifiers, "load_classifier", trained)


def test_simulating_on_training_images_is_refused(toys, tmp_path, monkeypatch):
    _provenance_parts(monkeypatch, split="test")
    result = runner.invoke(app, _args(tmp_path))
    assert result.exit_code == 2
    err = _flat(result.stderr)
    assert (
        "classifier checkpoint was trained on images of this dataset" in err
        and "--allow-training-images" in err
    )
    assert "Traceback" not in result.stderr
    from boed.store import Store

    assert Store.open(str(tmp_path / "b.db")).runs().empty  # refused before the run was created
    allowed = runner.invoke(app, _args(tmp_path, "--allow-training-images", "--no-report"))
    assert allowed.exit_code == 0, allowed.output
    assert "warning: the classifier checkpoint was trained on these images" in _flat(allowed.stderr)
    _, run = _run_record(tmp_path)
    assert run.config["allow_training_images"] is True
    assert any("trained on these images" in w for w in run.dataset["warnings"])


def test_other_training_source_warns_and_is_recorded(toys, tmp_path, monkeypatch):
    _provenance_parts(monkeypatch, split="train")
    import tests.boed.toys as toys_module

    monkeypatch.setattr(
        toys_module.ToyDataset,
        "describe",
        lambda self: {"source": "dicom", "fingerprint": "d" * 64, "split": "test"},
    )
    result = runner.invoke(app, _args(tmp_path))
    assert result.exit_code == 0, result.output
    assert "warning: the classifier checkpoint was trained on other data" in _flat(result.stderr)
    _, run = _run_record(tmp_path)
    assert any("folder images" in w and "dicom images" in w for w in run.dataset["warnings"])
    assert "warning: the classifier checkpoint" in (tmp_path / "report" / "index.html").read_text()


def test_a_nan_checkpoint_fails_every_session_and_says_so(toys, tmp_path, monkeypatch):
    """A classifier whose outputs are NaN (a NaN weight) must not produce 'done' sessions with null
    probabilities: every session fails with the reason, the failed count is true, the report builds."""
    import classifiers
    from tests.boed.toys import NaNClassifier, ToyWorld

    world = ToyWorld(size=32, patch=8, seed=4)
    monkeypatch.setattr(classifiers, "load_classifier", lambda *a, **k: NaNClassifier(world))
    result = runner.invoke(app, _args(tmp_path))
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "12 failed sessions" in _flat(result.stdout)
    store, run = _run_record(tmp_path)
    sessions = store.sessions(run.run_id)
    assert len(sessions) == 12 and (sessions["status"] == "failed").all()
    errors = sessions.set_index("policy")["error"]
    assert errors.drop("full-image").str.contains("step 0: the classifier returned non-finite").all()
    assert errors["full-image"].str.contains("the classifier returned non-finite probabilities").all()
    assert store.steps(run.run_id, status=None)["eig"].isna().all()  # no NaN EIG recorded as a result
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Failed sessions" in html and "non-finite probabilities" in html
