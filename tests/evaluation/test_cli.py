"""``boed evaluate-samplers``: one-line errors, and end to end on the tiny preset (slow)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samplers", "aipo,aipo"], "--samplers: give distinct sampler names"),
        (["--samplers", "nope"], "unknown sampler 'nope'"),
        (["--checkpoint", "aipo"], "--checkpoint: expected NAME=VALUE"),
        (["--samplers", "aipo", "--max-images", "tv=3"], "--max-images: tv not in --samplers"),
        (["--samplers", "aipo", "--boed-samplers", "tv"], "--boed-samplers: tv not in --samplers"),
        (["--n-samples", "0"], "--n-samples must be at least 1"),
        (["--masks", "holes,nope"], "unknown mask setting 'nope'"),
        (["--parts", "nope"], "--parts: give quality, boed or both"),
    ],
)
def test_bad_options_are_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["evaluate-samplers", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _tiny_parts(tmp_path):
    from classifiers.avp_cnn import AVPCNN
    from classifiers.config import classifier_preset
    from classifiers.partial import save_classifier
    from datasets.labels import LABELS
    from generative.registry import untrained_checkpoint

    config = dataclasses.replace(classifier_preset("tiny"), labels=tuple(LABELS), image_size=32)
    save_classifier(tmp_path / "clf", AVPCNN(config))
    return tmp_path / "clf", untrained_checkpoint("aipo", tmp_path / "aipo", preset="tiny")


@pytest.mark.slow
def test_end_to_end_tiny_and_resumed_from_the_cache(tmp_path):
    clf, aipo = _tiny_parts(tmp_path)
    out = tmp_path / "eval"
    args = [
        "evaluate-samplers", "--out", str(out), "--preset", "tiny", "--images", "phantoms",
        "--samplers", "aipo,harmonic", "--checkpoint", f"aipo={aipo}", "--classifier", str(clf),
        "--n-images", "4", "--n-samples", "2", "--chunk-size", "2", "--boed-images", "2", "--scans", "1",
        "--grid-images", "1", "--allow-training-images",
    ]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.stderr + str(first.exception)
    table = pd.read_csv(out / "table.csv")
    assert table["sampler"].tolist() == ["aipo", "harmonic"]
    assert (table["n_images"] == 4).all() and table.loc[1, "div_pixel"] == 0
    assert "d_accuracy_vs_random" in table and "d_accuracy_vs_aipo" in table
    for name in (
        "table.md",
        "settings.csv",
        "boed_summary.csv",
        "boed_paired.csv",
        "curves.png",
        "ranks.png",
    ):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    chunks = sorted((out / "cache" / "aipo").glob("chunk-*.safetensors"))
    assert [c.name for c in chunks] == ["chunk-000000-000002.safetensors", "chunk-000002-000004.safetensors"]
    stamp = chunks[0].stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.stderr
    assert chunks[0].stat().st_mtime_ns == stamp  # loaded, not recomputed
    assert pd.read_csv(out / "table.csv").equals(table)
    other = runner.invoke(app, [*args[:-1], "--n-samples", "3", "--allow-training-images"])
    assert other.exit_code == 2 and "cached with other settings" in other.stderr
