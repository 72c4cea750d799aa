"""``boed build-retrieval-index`` end to end on the tiny preset (phantoms), and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_build_index_then_sample(tmp_path):
    out = tmp_path / "index"
    args = ["build-retrieval-index", "--preset", "tiny", "--n-train", "12", "--out", str(out)]
    result = runner.invoke(app, [*args, "--pca", "4", "--shift", "1", "--noise-std", "0.2"])
    assert result.exit_code == 0, result.output + result.stderr
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["kind"] == "sampler" and meta["model"] == "retrieval-index"
    assert meta["config"] == {"image_size": 32, "n_images": 12, "pca": 4, "noise_std": 0.2, "shift": 1}
    assert meta["data"]["train"]["split"] == "train" and meta["trained_on"]["image_size"] == 32
    assert meta["command"].startswith("boed ")  # the command line that built it

    from generative.registry import build_sampler

    s = build_sampler("retrieval", out, preset="tiny")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :8] = 1
    got = s.sample(torch.rand(1, 1, 32, 32) * mask, mask, 3, generator=torch.Generator().manual_seed(0))
    assert got.images.shape == (3, 1, 1, 32, 32) and got.info["ess"].shape == (1,)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--noise-std", "0"], "--noise-std"),
        (["--shift", "-1"], "--shift"),
        (["--pca", "0"], "--pca"),
        (["--pca", "50"], "--pca 50"),
        (["--n-train", "0"], "--n-train"),
        (["--preset", "huge"], "unknown preset"),
    ],
)
def test_bad_options_are_one_line(tmp_path, extra, message):
    args = [
        "build-retrieval-index",
        "--preset",
        "tiny",
        "--n-train",
        "6",
        "--out",
        str(tmp_path / "i"),
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "i.safetensors").exists()
