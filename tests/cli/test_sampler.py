"""``boed train-sampler`` and ``boed evaluate-sampler`` end to end on the tiny preset (phantoms)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_train_then_evaluate(tmp_path):
    out = tmp_path / "tiny-aipo"
    result = runner.invoke(
        app,
        [
            "train-sampler",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--n-train",
            "8",
            "--n-val",
            "4",
            "--val-every",
            "2",
            "--ckpt-every",
            "2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert (tmp_path / "tiny-aipo.safetensors").is_file() and (tmp_path / "tiny-aipo.train.json").is_file()
    png = tmp_path / "fig8.png"
    result = runner.invoke(
        app,
        [
            "evaluate-sampler",
            str(out),
            "--n-images",
            "2",
            "--n-samples",
            "2",
            "--json",
            "--no-classifier",
            "--png",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert [r["squares"] for r in report["by_squares"]] == list(range(6))
    assert report["elbo_bpd"] > 0 and png.is_file()
    table = runner.invoke(
        app, ["evaluate-sampler", str(out), "--n-images", "2", "--n-samples", "2", "--no-classifier"]
    )
    assert table.exit_code == 0 and "Eq. 10" in table.stdout


def test_unknown_sampler_is_a_clean_error(tmp_path):
    result = runner.invoke(
        app, ["train-sampler", "--sampler", "gan", "--preset", "tiny", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "aipo, aipo-r, vae" in result.stderr


def test_a_device_that_is_not_there_is_a_clean_error(tmp_path):
    for device, why in (("tpu", "not a device"), ("cuda", "CUDA is not available")):
        if device == "cuda" and __import__("torch").cuda.is_available():
            continue
        result = runner.invoke(
            app, ["train-sampler", "--preset", "tiny", "--device", device, "--out", str(tmp_path / "x")]
        )
        assert result.exit_code == 2, result.output
        assert f"--device {device}: {why}" in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["evaluate-sampler", str(tmp_path / "nope"), "--no-classifier"])
    assert result.exit_code == 2
    assert "not found" in result.stderr


# -- evaluate-sampler: classifier fit and training-image refusal -------------------------------------
class _Data:
    """A stand-in test split: 2 random 32-px images with the given label columns."""

    def __init__(self, labels, describe=None):
        import torch

        self.labels = tuple(labels)
        self._describe = describe or {"source": "stub", "fingerprint": "f00d", "split": "test"}
        g = torch.Generator().manual_seed(0)
        self._x = torch.rand(2, 1, 32, 32, generator=g)
        self._y = torch.ones(2, len(self.labels))

    def tensors(self):
        return self._x, self._y

    def describe(self):
        return dict(self._describe)


def _sampler_checkpoint(tmp_path, data=None):
    from tests.generative.checkpoints import edit_json, write_tiny

    path = write_tiny(tmp_path / "tiny-aipo")
    if data is not None:
        edit_json(path, lambda meta: meta.update(data=data))
    return path


def _tiny_classifier(tmp_path, labels, image_size=32):
    import dataclasses

    from classifiers.avp_cnn import AVPCNN
    from classifiers.config import classifier_preset
    from classifiers.partial import save_classifier

    config = dataclasses.replace(classifier_preset("tiny"), labels=tuple(labels), image_size=image_size)
    path = tmp_path / "clf"
    save_classifier(path, AVPCNN(config))
    return path


def _evaluate(monkeypatch, data, *args):
    import datasets

    monkeypatch.setattr(datasets, "open_dataset", lambda *a, **k: data)
    return runner.invoke(app, ["evaluate-sampler", *args, "--n-samples", "2", "--json"])


def test_classifier_with_the_data_labels_scores_completions(tmp_path, monkeypatch):
    labels = ("Effusion", "Any")
    clf = _tiny_classifier(tmp_path, labels)
    result = _evaluate(
        monkeypatch, _Data(labels), str(_sampler_checkpoint(tmp_path)), "--classifier", str(clf)
    )
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["any_accuracy_skipped"] is None
    assert report["classifier"]["checkpoint"] == str(clf) and len(report["classifier"]["sha256"]) == 64
    assert 0 <= report["any_accuracy_truth"] <= 1
    assert all(0 <= row["any_accuracy_completions"] <= 1 for row in report["by_squares"])


def test_explicit_classifier_with_other_labels_is_a_clean_error(tmp_path, monkeypatch):
    clf = _tiny_classifier(tmp_path, ("Effusion", "Any"))
    data = _Data(("Nodule", "Mass", "Any"))
    result = _evaluate(monkeypatch, data, str(_sampler_checkpoint(tmp_path)), "--classifier", str(clf))
    assert result.exit_code == 2, result.output
    assert "clf" in result.stderr and "label" in result.stderr and "Traceback" not in result.output


def test_explicit_classifier_of_another_image_size_or_missing_is_a_clean_error(tmp_path, monkeypatch):
    labels = ("Effusion", "Any")
    ckpt = str(_sampler_checkpoint(tmp_path))
    clf = _tiny_classifier(tmp_path, labels, image_size=64)
    result = _evaluate(monkeypatch, _Data(labels), ckpt, "--classifier", str(clf))
    assert result.exit_code == 2 and "64x64" in result.stderr and "32x32" in result.stderr
    missing = _evaluate(monkeypatch, _Data(labels), ckpt, "--classifier", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "nope" in missing.stderr and "not found" in missing.stderr


def test_shipped_classifier_with_other_labels_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """The default classifier whose labels differ from the data's: null and why (was an IndexError)."""
    import classifiers

    clf_path = _tiny_classifier(tmp_path, ("Effusion", "Any"))
    from classifiers.partial import load_classifier

    shipped = load_classifier(clf_path)
    monkeypatch.setattr(classifiers, "load_classifier", lambda *a, **k: shipped)
    result = _evaluate(monkeypatch, _Data(("Any",)), str(_sampler_checkpoint(tmp_path)))
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["any_accuracy_truth"] is None
    assert all(row["any_accuracy_completions"] is None for row in report["by_squares"])
    assert "labels" in report["any_accuracy_skipped"] and "--classifier" in report["any_accuracy_skipped"]
    # the table says it in one line too
    monkeypatch.setattr(classifiers, "load_classifier", lambda *a, **k: shipped)
    table = runner.invoke(app, ["evaluate-sampler", str(_sampler_checkpoint(tmp_path)), "--n-samples", "2"])
    assert table.exit_code == 0 and "Any accuracy skipped" in table.stdout


def test_images_the_sampler_was_trained_on_are_refused(tmp_path, monkeypatch):
    described = {"source": "stub", "fingerprint": "f00d", "split": "test", "split_seed": 0}
    trained = {"train": dict(described, split="train"), "val": dict(described, split="test")}
    ckpt = str(_sampler_checkpoint(tmp_path, data=trained))
    result = _evaluate(monkeypatch, _Data(("Any",), described), ckpt, "--no-classifier")
    assert result.exit_code == 2
    assert "tiny-aipo" in result.stderr and "--allow-training-images" in result.stderr
    allowed = _evaluate(
        monkeypatch, _Data(("Any",), described), ckpt, "--no-classifier", "--allow-training-images"
    )
    assert allowed.exit_code == 0, allowed.output + allowed.stderr
    assert any("allowed by --allow-training-images" in note for note in json.loads(allowed.stdout)["notes"])


def test_kind_mismatch_is_a_clean_error(tmp_path):
    from tests.generative.checkpoints import write_tiny

    path = write_tiny(tmp_path / "rev", "aipo-r")
    result = runner.invoke(app, ["evaluate-sampler", str(path), "--no-classifier"])
    assert result.exit_code == 2
    assert "'aipo-r' sampler checkpoint, requested as 'aipo'" in result.stderr


def _train_args(out, *extra):
    return [
        "train-sampler",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--n-train",
        "4",
        "--n-val",
        "2",
        "--quiet",
        *extra,
    ]


def test_set_changes_a_config_field(tmp_path):
    out = tmp_path / "narrow"
    result = runner.invoke(app, _train_args(out, "--set", "width=4", "--set", "ema_rate=0.5"))
    assert result.exit_code == 0, result.output + result.stderr
    config = json.loads((tmp_path / "narrow.json").read_text())["config"]
    assert config["width"] == 4 and config["ema_rate"] == 0.5


def test_set_rejects_unknown_fields_and_wrong_types(tmp_path):
    result = runner.invoke(app, _train_args(tmp_path / "a", "--set", "wdth=4"))
    assert result.exit_code == 2 and "--set wdth: not a field" in result.stderr
    result = runner.invoke(app, _train_args(tmp_path / "b", "--set", "width=wide"))
    assert result.exit_code == 2 and "width" in result.stderr and "expected int" in result.stderr
    result = runner.invoke(app, _train_args(tmp_path / "c", "--set", "width"))
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr
    assert not (tmp_path / "a.safetensors").exists()


def test_unknown_sampler_lists_the_trainable_ones(tmp_path):
    result = runner.invoke(app, _train_args(tmp_path / "x", "--sampler", "pixelcnn-typo"))
    assert result.exit_code == 2 and "trainable samplers: aipo, aipo-r, vae" in result.stderr


def test_samplers_command_lists_the_registry():
    from generative.registry import SAMPLERS

    result = runner.invoke(app, ["samplers"])
    assert result.exit_code == 0, result.output
    for name in SAMPLERS:
        assert name in result.stdout
