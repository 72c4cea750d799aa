"""Acceptance test of issue 8: a dataset's own labels end to end, through the CLI alone.

A folder of PNG images with its own two binary labels (``big``: a large square, ``bright``: a
bright one, so both are visible in the images) trains a tiny classifier and a tiny sampler; a
simulation targets ``big``; the printed table, ``summary.csv``, the report (HTML, Fig. 5 and
Fig. 6 titles) and ``boed sessions show`` must all name ``big`` and never ``Any``.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
N_IMAGES = 60  # 70/10/20 split: 42 train, 6 val, 12 test


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _folder(root):
    """``N_IMAGES`` 32 px PNGs, one square each; labels.csv with columns image, big, bright."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    rows = []
    for i in range(N_IMAGES):
        big, bright = i % 2, (i // 2) % 2
        side = 20 if big else 8
        r, c = rng.integers(2, 32 - side - 1, 2)
        img = np.full((32, 32), 0.1)
        img[r : r + side, c : c + side] = 0.9 if bright else 0.45
        img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"img{i:03d}.png")
        rows.append((f"img{i:03d}.png", big, bright))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "big", "bright"])
        writer.writerows(rows)
    return root


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"boed {' '.join(map(str, args))}:\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture(autouse=True)
def _keep_threads():
    """``--threads 1`` sets torch's thread count for the whole test process: restore it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def titles(monkeypatch):
    """The titles the report gives its figures (Fig. 5 label, Fig. 6 suptitles)."""
    import boed.report.build as build

    seen = {"fig5": [], "fig6": []}
    real_performance, real_session = build.plot_performance, build.plot_session

    def plot_performance(summary, path, label):
        seen["fig5"].append(label)
        return real_performance(summary, path, label)

    def plot_session(arrays, path, patch, title=""):
        seen["fig6"].append(title)
        return real_session(arrays, path, patch, title)

    monkeypatch.setattr(build, "plot_performance", plot_performance)
    monkeypatch.setattr(build, "plot_session", plot_session)
    return seen


def test_own_labels_end_to_end_through_the_cli(tmp_path, titles):
    data = _folder(tmp_path / "data")
    common = [
        "--images",
        "folder",
        "--data-root",
        data,
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    clf, smp, db = tmp_path / "clf", tmp_path / "smp", tmp_path / "b.db"

    _ok(["train-classifier", *common, "--out", clf, "--steps", "10", "--batch-size", "8", "--quiet"])
    meta = json.loads((tmp_path / "clf.json").read_text())
    assert meta["labels"] == ["big", "bright"]  # the classifier's labels come from the data

    _ok(["train-sampler", *common, "--out", smp, "--steps", "4", "--batch-size", "8", "--n-train", "42",
         "--n-val", "4", "--val-every", "4", "--ckpt-every", "4"])  # fmt: skip

    report = tmp_path / "report"
    sim = _ok(["simulate", *common, "--target", "big", "--classifier", clf, "--sampler-checkpoint", smp,
               "--n-images", "3", "--scans", "2", "--n-samples", "2", "--policy", "boed,random,oracle",
               "--db", db, "--out", report])  # fmt: skip
    out = _flat(sim.stdout)
    assert "big vs number of scans (folder, tiny preset)" in out
    assert "0 failed sessions" in out
    assert "Any" not in sim.stdout

    from boed.store import Store

    store = Store.open(str(db))
    run = store.get_run(store.latest_run_id())
    assert run.labels == ("big", "bright") and run.target == "big" and run.config["target"] == "big"

    summary = pd.read_csv(report / "summary.csv")
    assert set(summary["target"]) == {"big"}
    assert set(summary["policy"]) == {"boed", "random", "oracle", "full-image"}
    html = (report / "index.html").read_text()
    assert "big vs number of scans (Fig. 5)" in html and "Any" not in html
    assert "sessions/session-" in html  # Fig. 6 of the boed sessions
    assert titles["fig5"] == ["big"]
    assert titles["fig6"] and all("(big = " in t and "Any" not in t for t in titles["fig6"])

    rebuilt = _ok(["report", run.run_id, "--db", db, "--out", tmp_path / "again"])
    assert (
        f"run {run.run_id}: big vs number of scans" in _flat(rebuilt.stdout) and "Any" not in rebuilt.stdout
    )
    assert titles["fig5"] == ["big", "big"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "summary.csv"), summary)

    listed = _ok(["sessions", "list", "--db", db])
    assert run.run_id in listed.stdout and "big" in listed.stdout
    shown = _ok(["sessions", "show", "--db", db])
    flat = _flat(shown.stdout)
    assert "target big" in flat and "big: accuracy by number of scans" in flat
    session_id = int(store.sessions(run.run_id).query("policy == 'boed'")["session_id"].iloc[0])
    one = _ok(["sessions", "show", str(session_id), "--db", db])
    assert "true big = " in _flat(one.stdout) and "P(big)" in one.stdout
    for output in (listed.stdout, shown.stdout, one.stdout):
        assert "Any" not in output
