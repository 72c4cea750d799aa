"""``boed train-classifier`` and ``boed evaluate-classifier`` through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "classifiers"))

from fakes import FakeDataset  # noqa: E402

from cli.main import app  # noqa: E402

runner = CliRunner()
TRAIN_ARGS = ["--preset", "tiny", "--steps", "6", "--val-every", "3", "--n-train", "48", "--n-val", "32"]
TRAIN_ARGS += ["--device", "cpu", "--quiet", "--threads", "1"]


class OwnLabels(FakeDataset):
    """A folder-like collection with its own two binary labels, ``big`` and ``small``.

    ``big`` is FakeDataset's first finding, ``small`` its second; ``describe()`` carries a
    fingerprint of the collection and the split, as ``datasets`` does, for the provenance checks.
    """

    def __init__(self, n=48, size=32, seed=0, split="train"):
        super().__init__(n=n, size=size, seed=seed + {"train": 0, "val": 1, "test": 2}[split], n_findings=2)
        self.lab = self.lab[:, :2].clone()
        self.labels = ("big", "small")
        self.split = split

    def describe(self) -> dict:
        return {
            "source": "folder",
            "fingerprint": "f00d",
            "split": self.split,
            "split_seed": 0,
            "n": len(self),
        }


def _patch_open_dataset(monkeypatch, factory):
    import datasets

    calls = []

    def fake(images="chestxray", *, split="train", size=64, n=None, data_root=None, seed=0, **kwargs):
        calls.append({"images": images, "split": split, "size": size, "n": n, **kwargs})
        return factory(split=split, size=size, n=n, seed=seed)

    monkeypatch.setattr(datasets, "open_dataset", fake, raising=False)
    return calls


def _findings(split, size, n, seed):
    return FakeDataset(
        n=n or 48, size=size, seed=seed * 10 + {"train": 0, "val": 1, "test": 2}[split], n_findings=3
    )


def _own(split, size, n, seed):
    return OwnLabels(n=n or 48, size=size, seed=seed * 10, split=split)


@pytest.fixture
def fake_open_dataset(monkeypatch):
    """Replace ``datasets.open_dataset`` by tiny fake data (the phantom generator is tested elsewhere)."""
    return _patch_open_dataset(monkeypatch, _findings)


@pytest.fixture
def own_open_dataset(monkeypatch):
    return _patch_open_dataset(monkeypatch, _own)


def _train(tmp_dir: Path, name: str, factory, *extra: str) -> Path:
    out = tmp_dir / name
    with pytest.MonkeyPatch.context() as mp:
        _patch_open_dataset(mp, factory)
        result = runner.invoke(
            app, ["train-classifier", "--images", "folder", "--out", str(out), *TRAIN_ARGS, *extra]
        )
    assert result.exit_code == 0, result.output + str(result.exception)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny classifier on the 14 findings + Any (FakeDataset)."""
    return _train(tmp_path_factory.mktemp("clf"), "ckpt", _findings)


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> Path:
    """A tiny classifier on a collection with its own labels ``big`` and ``small``."""
    return _train(tmp_path_factory.mktemp("own"), "own", _own)


def _copy(stem: Path, folder: Path) -> Path:
    for f in stem.parent.glob(stem.name + ".*"):
        shutil.copy(f, folder / f.name)
    return folder / stem.name


def test_a_collection_s_own_labels_end_to_end(own, own_open_dataset):
    meta = json.loads(Path(f"{own}.json").read_text())
    assert meta["labels"] == ["big", "small"] and meta["config"]["labels"] == ["big", "small"]
    result = runner.invoke(app, ["evaluate-classifier", str(own), "--images", "folder", "--n", "40"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "Any" not in result.output
    rows = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert rows.count("big") == 3 and rows.count("small") == 3  # AUROC, accuracy, ECE sections
    for heading in ("AUROC", "accuracy", "ECE"):
        assert heading in rows
    data = json.loads(
        runner.invoke(app, ["evaluate-classifier", str(own), "--images", "folder", "--json"]).stdout
    )
    assert data["labels"] == ["big", "small"]
    assert set(data["conditions"][-1]["accuracy"]) == {"big", "small"}


def test_label_option_reports_only_that_label(own, own_open_dataset):
    result = runner.invoke(
        app,
        ["evaluate-classifier", str(own), "--n", "24", "--images", "folder", "--label", "small", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["labels"] == ["small"] and set(data["conditions"][0]["auroc"]) == {"small"}
    result = runner.invoke(app, ["evaluate-classifier", str(own), "--images", "folder", "--label", "Any"])
    assert result.exit_code == 2 and "--label Any: not a label of both" in result.stderr
    assert "choose from big, small" in result.stderr


def test_training_images_are_refused_unless_allowed(own, own_open_dataset):
    result = runner.invoke(app, ["evaluate-classifier", str(own), "--images", "folder", "--split", "train"])
    assert result.exit_code == 2 and "--allow-training-images" in result.stderr
    assert "trained on images of this dataset" in result.stderr and "Traceback" not in result.stderr
    result = runner.invoke(
        app,
        [
            "evaluate-classifier",
            str(own),
            "--images",
            "folder",
            "--split",
            "val",
            "--allow-training-images",
            "--n",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning:" in text and "checkpoint's val split" in text
    # the split seed the classifier was trained with is the default of --split-seed
    assert own_open_dataset[-1]["split_seed"] == 0


def test_training_split_seed_is_read_defensively():
    from cli.common import recorded_split_seed

    assert recorded_split_seed({"data": {"train": {"split_seed": 7}}}) == 7
    assert recorded_split_seed({}, {"data": {"train": {"split_seed": 2}}}) == 2
    for meta in ({}, {"data": "x"}, {"data": {"train": None}}, {"data": {"train": {"split_seed": True}}}):
        assert recorded_split_seed(meta) is None


def test_data_without_any_label_of_the_classifier(own, fake_open_dataset):
    result = runner.invoke(app, ["evaluate-classifier", str(own), "--images", "phantoms"])
    assert result.exit_code == 2 and "no label in common" in result.stderr
    assert "classifier: big, small" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_train_then_evaluate_table_at_80_columns_and_json(trained, fake_open_dataset, monkeypatch):
    from cli.common import console

    # the console's width is pinned here: a rich Console reads $COLUMNS only when it is created
    assert Path(f"{trained}.safetensors").exists()
    monkeypatch.setattr(console, "_width", 80)
    result = runner.invoke(app, ["evaluate-classifier", str(trained), "--images", "phantoms", "--n", "40"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.output
    header = next(line for line in lines if "0 sq" in line)
    assert header.split()[1:] == [
        "0",
        "sq",
        "1",
        "sq",
        "2",
        "sq",
        "3",
        "sq",
        "4",
        "sq",
        "5",
        "sq",
        "full",
        "pos",
        "neg",
    ]
    rows = [line.split()[0] for line in lines if line.strip()]
    assert rows.count("Pleural_Thickening") == 3 and rows.count("Any") == 3
    assert "ECE" in rows and "n/a:" in rows
    monkeypatch.setattr(console, "_width", 60)
    narrow = runner.invoke(app, ["evaluate-classifier", str(trained), "--images", "phantoms", "--n", "40"])
    assert narrow.exit_code == 0 and "…" not in narrow.output
    too_long = [line for line in narrow.output.splitlines() if len(line) > 60]
    assert not too_long, too_long
    result = runner.invoke(
        app, ["evaluate-classifier", str(trained), "--images", "phantoms", "--n", "40", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [c["squares"] for c in data["conditions"]] == [0, 1, 2, 3, 4, 5, None]
    assert data["conditions"][-1]["auroc"]["Hernia"] is None and "Hernia" in data["undefined"]
    assert data["checkpoint"]["sha256"] and data["n_images"] == 40


def test_data_labels_the_classifier_lacks_are_left_out_and_named(trained, monkeypatch):
    def more_labels(split, size, n, seed):
        ds = _findings(split, size, n, seed)
        ds.labels = (*ds.labels[:-1], "Tumour")  # the data's last column is not a classifier label
        return ds

    _patch_open_dataset(monkeypatch, more_labels)
    result = runner.invoke(app, ["evaluate-classifier", str(trained), "--images", "folder", "--n", "16"])
    assert result.exit_code == 0, result.output
    assert "left out (the classifier has no output for them): Tumour" in result.output
    assert "left out (not in the data): Any" in result.output
    monkeypatch.setattr(
        __import__("datasets"), "open_dataset", lambda *a, **k: FakeDataset(n=8, size=64), raising=False
    )
    result = runner.invoke(app, ["evaluate-classifier", str(trained)])
    assert result.exit_code == 2 and "trained on 32x32" in result.stderr


def test_labels_option_trains_on_a_chosen_subset(tmp_path, fake_open_dataset):
    out = _train(tmp_path, "sub", _findings, "--labels", "Cardiomegaly, Any")
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["labels"] == ["Cardiomegaly", "Any"]
    result = runner.invoke(
        app, ["evaluate-classifier", str(out), "--n", "24", "--images", "phantoms", "--json"]
    )
    data = json.loads(result.stdout)
    assert data["labels"] == ["Cardiomegaly", "Any"] and "Atelectasis" in data["left_out"]["data_only"]


@pytest.mark.parametrize("value", ["a,,b", ",", " "])
def test_labels_option_must_be_names(tmp_path, fake_open_dataset, value):
    result = runner.invoke(
        app, ["train-classifier", "--out", str(tmp_path / "x"), *TRAIN_ARGS, "--labels", value]
    )
    assert result.exit_code == 2 and "--labels: expected comma-separated label names" in result.stderr


def test_resume_continues(trained, tmp_path, fake_open_dataset):
    copy = _copy(trained, tmp_path)
    result = runner.invoke(
        app,
        ["train-classifier", "--out", str(copy), "--preset", "tiny", "--resume", "--steps", "8", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    meta = json.loads(Path(f"{copy}.json").read_text())
    assert meta["training"]["state"]["step"] == 8


def test_bad_checkpoints_are_one_line_errors(tmp_path, trained):
    result = runner.invoke(app, ["evaluate-classifier", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
    copy = _copy(trained, tmp_path)
    weights = Path(f"{copy}.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    result = runner.invoke(app, ["evaluate-classifier", str(copy)])
    assert result.exit_code == 2 and "sha256 mismatch" in result.stderr


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("growth_rate", "twelve", "config field growth_rate: expected int, got 'twelve'"),
        ("init_features", 16, "weights do not fit the config: "),
    ],
)
def test_checkpoint_config_errors_are_one_line(tmp_path, trained, field, value, message):
    copy = _copy(trained, tmp_path)
    sidecar = Path(f"{copy}.json")
    meta = json.loads(sidecar.read_text())
    meta["config"][field] = value  # the sha256 covers the weights only: still valid
    sidecar.write_text(json.dumps(meta))
    result = runner.invoke(app, ["evaluate-classifier", str(copy)])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_nan_weights_are_refused(tmp_path, trained):
    from boed.runtime.checkpoints import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained)
    tensors = {k: v.clone() for k, v in ckpt.tensors.items()}
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name].view(-1)[0] = torch.nan
    save_checkpoint(tmp_path / "nan", tensors, {k: v for k, v in ckpt.meta.items() if k != "sha256"})
    result = runner.invoke(app, ["evaluate-classifier", str(tmp_path / "nan")])
    assert result.exit_code == 2 and f"tensor {name} holds 1 non-finite value" in result.stderr


def test_unknown_preset_and_bad_data(tmp_path, fake_open_dataset, monkeypatch):
    result = runner.invoke(app, ["train-classifier", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert result.exit_code == 2 and "unknown preset 'huge'" in result.stderr
    import datasets

    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: FakeDataset(n=8, size=16), raising=False)
    result = runner.invoke(
        app, ["train-classifier", "--out", str(tmp_path / "x"), "--preset", "tiny", "--quiet", "--steps", "2"]
    )
    assert result.exit_code == 2 and "32" in result.stderr and "Traceback" not in result.stderr
