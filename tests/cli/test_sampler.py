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


def test_missing_checkpoint_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["evaluate-sampler", str(tmp_path / "nope"), "--no-classifier"])
    assert result.exit_code == 2
    assert "not found" in result.stderr
