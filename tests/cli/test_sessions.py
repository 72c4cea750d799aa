"""`boed sessions list|show|export` on a small store written through the library."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from boed.store import Store
from cli.main import app
from cli.sessions import accuracy_by_step

LABELS = ["Mass", "Any"]


@pytest.fixture
def db(tmp_path):
    """Two policies x two images, 2 scans each, plus one failed session; returns (url, run_id)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with Store.open(url) as store:
        run_id = store.create_run({"preset": "tiny"}, sampler="aipo", sampler_sha256="ab" * 32,
                                  classifier="small", classifier_sha256=None, dataset={"images": "phantoms"},
                                  seed=3, labels=LABELS, code_version="test")  # fmt: skip
        for i, truth in enumerate([1.0, 0.0]):
            for policy, good in (("boed", True), ("random", False)):
                sid = store.start_session(run_id, image_id=f"img{i}", image_index=i, policy=policy,
                                          true_labels=[float("nan"), truth])  # fmt: skip
                for step in range(3):
                    right = good and step > 0
                    p_any = truth if right else 0.5 + (0.2 if truth == 0 else -0.2)
                    store.log_step(sid, step=step, location=None if step == 0 else (step, 2 * step),
                                   candidate=None if step == 0 else step, eig=None if step == 0 else 0.1,
                                   eig_map=None, probs=[0.3, p_any], seconds=0.25)  # fmt: skip
                store.save_array(sid, 1, "eig", np.zeros((3, 3), np.float16))
                store.finish_session(sid)
        sid = store.start_session(
            run_id, image_id="bad", image_index=9, policy="boed", true_labels=[0.0, 0.0]
        )
        store.finish_session(sid, status="failed", error="DatasetError: unreadable image bad.png")
        store.finish_run(run_id, status="done", timings={"total_s": 1.0})
    return url, run_id


def invoke(*args):
    result = CliRunner().invoke(app, ["sessions", *args])
    return result


def test_list_runs_and_sessions(db):
    url, run_id = db
    result = invoke("list", "--db", url)
    assert result.exit_code == 0, result.output
    assert run_id in result.stdout and "4/5" in result.stdout
    result = invoke("list", "--db", url, "--run", run_id)
    assert result.exit_code == 0
    assert result.stdout.count("random") == 2 and "DatasetError:" in result.stdout  # wrapped at 80 columns


def test_list_empty_store(tmp_path):
    result = invoke("list", "--db", str(tmp_path / "empty.db"))
    assert result.exit_code == 0 and "no runs in" in result.stdout


def test_show_run_prints_accuracy_by_scans(db):
    url, run_id = db
    result = invoke("show", "--db", url)  # latest run
    assert result.exit_code == 0, result.output
    assert run_id in result.stdout and "accuracy by number of scans" in result.stdout
    assert "kind" in result.stdout and "simulation" in result.stdout  # runs.kind (schema 0003)
    assert "1.000" in result.stdout and "0.000" in result.stdout


def test_show_session(db):
    url, _ = db
    result = invoke("show", "1", "--db", url)
    assert result.exit_code == 0, result.output
    assert (
        "image img0" in result.stdout
        and "P(Any)" in result.stdout
        and "eig@1 (3, 3) float16" in result.stdout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "--run", "nope"], "unknown run id 'nope'"),
        (["show", "--label", "Nodule"], "--label: unknown target 'Nodule'; valid targets: any, all, Mass"),
        (["show", "99"], "unknown session id 99"),
        (["list", "--run", "nope"], "unknown run id 'nope'"),
    ],
)
def test_user_errors_are_one_line(db, args, message):
    url, _ = db
    result = invoke(*args, "--db", url)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_unreachable_database_is_a_clear_error():
    result = invoke("list", "--db", "postgresql+psycopg://me:pw@127.0.0.1:1/boed")
    assert result.exit_code == 2
    assert "cannot open database postgresql+psycopg://me:***@127.0.0.1:1/boed" in result.stderr


def test_show_on_an_empty_store(tmp_path):
    result = invoke("show", "--db", str(tmp_path / "e.db"))
    assert result.exit_code == 2 and "has no runs yet" in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export(db, tmp_path, fmt):
    url, run_id = db
    out = tmp_path / "export"
    result = invoke("export", "--format", fmt, "--db", url, "--run", run_id, "--out", str(out))
    assert result.exit_code == 0, result.output
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    predictions = read(out / f"{run_id}-predictions.{fmt}")
    assert list(predictions.columns) == [
        "run_id",
        "session_id",
        "policy",
        "image_id",
        "step",
        "label",
        "prob",
        "truth",
    ]
    assert len(predictions) == 4 * 3 * len(LABELS)  # done sessions only
    steps = read(out / f"{run_id}-steps.{fmt}")
    assert len(steps) == 4 * 3 and "candidate" in steps.columns
    sessions = read(out / f"{run_id}-sessions.{fmt}")
    assert len(sessions) == 4
    if fmt == "csv":
        assert json.loads(sessions["true_labels"].iloc[0]) == [None, 1.0]
    else:
        assert "eig_map" in steps.columns


def test_export_everything_including_failed(db, tmp_path):
    url, _ = db
    result = invoke("export", "--db", url, "--out", str(tmp_path), "--status", "all")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "all-sessions.csv")) == 5


def test_accuracy_by_step_matches_the_toy_answers(db):
    url, run_id = db
    with Store.open(url) as store:
        table = accuracy_by_step(store.predictions(run_id, label="Any"))
    boed = table[table["policy"] == "boed"].set_index("step")["accuracy"]
    random = table[table["policy"] == "random"].set_index("step")["accuracy"]
    assert boed.tolist() == [0.0, 1.0, 1.0] and random.tolist() == [0.0, 0.0, 0.0]
    assert (table["sessions"] == 2).all()


@pytest.mark.parametrize("target", ["big", "all"])
def test_documented_analyses_follow_the_run_target(tmp_path, target):
    """docs/store.md's pandas and SQL examples give the same accuracy for a run targeting a
    dataset's own label (no Any output), and ``sessions show`` reports that target."""
    from pathlib import Path

    from sqlalchemy import text

    from boed.report import run_target

    url = f"sqlite:///{tmp_path / 'own.db'}"
    with Store.open(url) as store:
        run_id = store.create_run({"target": target}, sampler="s", sampler_sha256=None, classifier="c",
                                  classifier_sha256=None, dataset={}, seed=0, labels=["big", "bright"],
                                  code_version="test", target=target)  # fmt: skip
        for i, (big, bright, p_big, p_bright) in enumerate(
            [(1, 0, 0.9, 0.8), (0, 1, 0.6, 0.7), (1, 1, 0.7, 0.2)]
        ):
            sid = store.start_session(run_id, image_id=f"i{i}", image_index=i, policy="boed",
                                      true_labels=[float(big), float(bright)])  # fmt: skip
            store.log_step(sid, step=0, location=None, candidate=None, eig=None, eig_map=None,
                           probs=[p_big, p_bright], seconds=0.0)  # fmt: skip
            store.finish_session(sid)
        store.finish_run(run_id, status="done")
        doc = (Path(__file__).parents[2] / "docs" / "store.md").read_text()
        sql = doc.split("```sql\n", 1)[1].split("```", 1)[0]
        with store.engine.connect() as conn:
            rows = conn.execute(text(sql), {"run_id": run_id}).all()
        labels = list(run_target(store.get_run(run_id)).labels)
        p = store.predictions(run_id)
        p = p[p["label"].isin(labels)].dropna(subset=["truth"])
        p["correct"] = (p["prob"] >= 0.5) == (p["truth"] > 0.5)
    # big: right, wrong, right; bright: wrong, right, wrong
    expected = 2 / 3 if target == "big" else 3 / 6
    assert [(r.policy, r.scans, r.sessions) for r in rows] == [("boed", 0, 3)]
    assert float(rows[0].accuracy) == pytest.approx(expected) == p["correct"].mean()
    shown = invoke("show", "--db", url)
    flat = " ".join(shown.stdout.split())
    title = "big" if target == "big" else "all (2 labels)"
    assert (
        shown.exit_code == 0 and f"target {title}" in flat and f"{title}: accuracy by number of scans" in flat
    )
