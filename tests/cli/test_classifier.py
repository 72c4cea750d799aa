"""``boed train-classifier`` and ``boed evaluate-classifier`` through typer's CliRunner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "classifiers"))

from fakes import FakeDataset  # noqa: E402

from cli.main import app  # noqa: E402

runner = CliRunner()


@pytest.fixture
def fake_open_dataset(monkeypatch):
    """Replace ``datasets.open_dataset`` by tiny fake data (the phantom generator is tested elsewhere)."""
    import datasets

    calls = []

    def fake(images="chestxray", *, split="train", size=64, n=None, data_root=None, seed=0, **_):
        calls.append({"images": images, "split": split, "size": size, "n": n})
        offset = {"train": 0, "val": 1, "test": 2}[split]
        return FakeDataset(n=n or 48, size=size, seed=seed * 10 + offset, n_findings=3)

    monkeypatch.setattr(datasets, "open_dataset", fake, raising=False)
    return calls


@pytest.fixture
def trained(tmp_path, fake_open_dataset) -> Path:
    out = tmp_path / "ckpt"
    result = runner.invoke(
        app,
        [
            "train-classifier",
            "--images",
            "phantoms",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--steps",
            "6",
            "--val-every",
            "3",
            "--n-train",
            "48",
            "--n-val",
            "32",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "validation" in result.output and "accuracy Any" in result.output
    return out


def test_train_then_evaluate_table_and_json(trained, fake_open_dataset):
    assert Path(f"{trained}.safetensors").exists() and Path(f"{trained}.state.json").exists()
    assert {c["split"] for c in fake_open_dataset} == {"train", "val"}
    result = runner.invoke(app, ["evaluate-classifier", str(trained), "--images", "phantoms", "--n", "40"])
    assert result.exit_code == 0, result.output
    for text in ("Cardiomegaly", "0 sq", "5 sq", "full", "n/a", "accuracy Any"):
        assert text in result.output
    result = runner.invoke(
        app, ["evaluate-classifier", str(trained), "--images", "phantoms", "--n", "40", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [c["squares"] for c in data["conditions"]] == [0, 1, 2, 3, 4, 5, None]
    assert data["conditions"][-1]["auroc"]["Hernia"] is None and "Hernia" in data["undefined"]
    assert data["checkpoint"]["sha256"] and data["n_images"] == 40


def test_resume_continues(trained, fake_open_dataset):
    result = runner.invoke(
        app,
        [
            "train-classifier",
            "--out",
            str(trained),
            "--preset",
            "tiny",
            "--resume",
            "--steps",
            "8",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    meta = json.loads(Path(f"{trained}.json").read_text())
    assert meta["training"]["state"]["step"] == 8


def test_bad_checkpoints_are_one_line_errors(tmp_path, trained):
    result = runner.invoke(app, ["evaluate-classifier", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
    weights = Path(f"{trained}.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    result = runner.invoke(app, ["evaluate-classifier", str(trained)])
    assert result.exit_code == 2 and "sha256 mismatch" in result.stderr


def test_unknown_preset_and_bad_data(tmp_path, fake_open_dataset, monkeypatch):
    result = runner.invoke(app, ["train-classifier", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert result.exit_code == 2 and "unknown preset 'huge'" in result.stderr
    import datasets

    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: FakeDataset(n=8, size=16), raising=False)
    result = runner.invoke(
        app, ["train-classifier", "--out", str(tmp_path / "x"), "--preset", "tiny", "--quiet", "--steps", "2"]
    )
    assert result.exit_code == 2 and "needs (n, 1, 32, 32)" in result.stderr


def test_evaluate_rejects_mismatched_data(trained, monkeypatch):
    import datasets

    def other_labels(*a, **k):
        ds = FakeDataset(n=8, size=32)
        ds.labels = ds.labels[:14]
        return ds

    monkeypatch.setattr(datasets, "open_dataset", other_labels, raising=False)
    result = runner.invoke(app, ["evaluate-classifier", str(trained)])
    assert result.exit_code == 2 and "label set does not match" in result.stderr
    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: FakeDataset(n=8, size=64), raising=False)
    result = runner.invoke(app, ["evaluate-classifier", str(trained)])
    assert result.exit_code == 2 and "trained on 32x32" in result.stderr
