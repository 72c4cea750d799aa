"""``boed evaluate-samplers`` on 2 torchrun ranks (gloo, CPU): each rank evaluates its share of the
chunks into the one cache, rank 0 merges them; the cached chunks and the table equal those of one
process. Real processes (torchrun and two workers importing torch and the samplers): ``slow``."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


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
def test_two_ranks_fill_the_cache_and_table_of_one_process(tmp_path):
    import torch
    from safetensors.torch import load_file

    clf, aipo = _tiny_parts(tmp_path)

    def args(out):
        return [
            "evaluate-samplers", "--out", str(out), "--preset", "tiny", "--images", "phantoms",
            "--samplers", "aipo,harmonic", "--checkpoint", f"aipo={aipo}", "--classifier", str(clf),
            "--n-images", "4", "--n-samples", "2", "--chunk-size", "2", "--boed-images", "0",
            "--grid-images", "1", "--allow-training-images", "--device", "cpu",
        ]  # fmt: skip

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", "2", "-m", "cli.main", *args(tmp_path / "two")]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "rank 1: its chunks are in" in job.stderr and job.stdout.count("wrote ") == 1
    one = runner.invoke(app, args(tmp_path / "one"))
    assert one.exit_code == 0, one.stderr
    for sampler in ("aipo", "harmonic"):
        names = sorted(p.name for p in (tmp_path / "one" / "cache" / sampler).glob("chunk-*.safetensors"))
        assert names == ["chunk-000000-000002.safetensors", "chunk-000002-000004.safetensors"]
        for name in names:
            a = load_file(tmp_path / "one" / "cache" / sampler / name)
            b = load_file(tmp_path / "two" / "cache" / sampler / name)
            assert a.keys() == b.keys()
            for key in a:  # exactly equal, NaN (no likelihood) included
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)
    t1, t2 = (pd.read_csv(tmp_path / d / "table.csv") for d in ("one", "two"))
    cost = [c for c in t1.columns if "second" in c or "_s" in c or "memory" in c or "mib" in c]
    pd.testing.assert_frame_equal(t1.drop(columns=cost), t2.drop(columns=cost))
