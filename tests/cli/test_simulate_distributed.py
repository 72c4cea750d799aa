"""``boed simulate`` sharded across the ranks of a real torchrun job (gloo, CPU) against a real
PostgreSQL server (tests/pg.py), with the toy world's parts (tests/cli/toy_ranks.py).

* 2 ranks store exactly the rows of one process with the same seed (sessions, steps with their EIG
  maps and diagnostics, predictions, arrays), and rank 0 alone marks the run done;
* a rank killed (SIGKILL) in the middle of a session leaves the run resumable: ``--resume`` with
  1 rank completes it with no duplicated and no lost session, and the same rows as an
  uninterrupted run.

Both start real processes (torchrun, two workers that import torch, a PostgreSQL server): about
35 s of CPU each, so they are ``slow``; tests/boed/test_distributed.py covers the same logic with
ranks emulated by threads in the default suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.cli.toy_simulate import install

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "tiny", "--n-images", "6", "--scans", "2", "--policy", "boed,random", "--seed", "3",
        "--figures", "1", "--no-report", "--device", "cpu"]  # fmt: skip
POLICIES = 3  # full-image, boed, random
runner = CliRunner()


def _torchrun(n: int, db: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(n), "-m", "tests.cli.toy_ranks",
           "simulate", *ARGS, "--db", db, *extra]  # fmt: skip
    environ = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "200"} | (env or {})
    return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def _one_process(monkeypatch, db: str, *extra: str):
    install(monkeypatch.setattr, monkeypatch.setitem)
    return runner.invoke(app, ["simulate", *ARGS, "--db", db, *extra])


def _rows(db: str) -> dict:
    """Everything a run stored, keyed by (image, policy[, step, label]), without ids and timings."""
    from boed.store import Store

    with Store.open(db) as store:
        run_id = store.latest_run_id()
        sessions = store.sessions(run_id)
        steps = store.steps(run_id, status=None, eig_map=True)
        preds = store.predictions(run_id, status=None)
        arrays = {
            (row.image_id, row.policy, step, name): array.tolist()
            for row in sessions.itertuples()
            for (step, name), array in store.load_arrays(int(row.session_id)).items()
        }
        run = store.get_run(run_id)
    keep_steps = ["row", "col", "candidate", "eig", "eig_map", "eig_se", "ess", "target_observed",
                  "target_completions"]  # fmt: skip
    return {
        "run": run,
        "sessions": sorted(
            (r.image_id, int(r.image_index), r.policy, r.status, int(r.n_steps), str(r.true_labels))
            for r in sessions.itertuples()
        ),
        "steps": {
            (r["image_id"], r["policy"], int(r["step"])): repr([r[k] for k in keep_steps])
            for r in steps.to_dict("records")
        },
        "predictions": {
            (r.image_id, r.policy, int(r.step), r.label): (r.prob, r.truth) for r in preds.itertuples()
        },
        "arrays": arrays,
    }


def _same_results(a: dict, b: dict) -> None:
    assert a["sessions"] == b["sessions"]
    assert a["steps"] == b["steps"]
    assert a["predictions"] == b["predictions"]
    assert a["arrays"] == b["arrays"] and a["arrays"]


def test_two_ranks_store_exactly_the_rows_of_one_process(postgres_server, monkeypatch):
    sharded, single = postgres_server.new_url(), postgres_server.new_url()
    job = _torchrun(2, sharded)
    assert job.returncode == 0, job.stderr[-3000:]
    one = _one_process(monkeypatch, single)
    assert one.exit_code == 0, one.output
    two, ref = _rows(sharded), _rows(single)
    _same_results(two, ref)
    assert len(two["sessions"]) == 6 * POLICIES and {s[3] for s in two["sessions"]} == {"done"}
    assert two["run"].status == "done" and two["run"].timings["ranks"] == 2
    assert two["run"].timings["failed_sessions"] == 0
    # rank 0 printed the results, rank 1 only that its share is stored
    run_id = two["run"].run_id
    assert job.stdout.count(f"run {run_id}:") == 1 and f"run {run_id} (done)" in job.stdout
    assert "rank 1: its share of run" in job.stderr


def test_a_killed_rank_leaves_a_run_that_one_process_completes(postgres_server, monkeypatch):
    sharded, single = postgres_server.new_url(), postgres_server.new_url()
    job = _torchrun(2, sharded, env={"TOY_KILL_RANK": "1", "TOY_KILL_AFTER": "1"})
    assert job.returncode != 0
    from boed.store import Store

    with Store.open(sharded) as store:
        run_id = store.latest_run_id()
        before = store.sessions(run_id)
        run = store.get_run(run_id)
    # rank 1 (images 3..5) finished its full-image sessions and one scan session, then died inside
    # the next one; rank 0 was stopped by torchrun: the run is not done and has sessions missing
    assert run.status != "done"
    assert (before.status == "running").sum() >= 1 and len(before) < 6 * POLICIES
    resumed = _one_process(monkeypatch, sharded, "--resume", run_id)
    assert resumed.exit_code == 0, resumed.output
    monkeypatch.undo()
    reference = _one_process(monkeypatch, single)
    assert reference.exit_code == 0, reference.output
    after, ref = _rows(sharded), _rows(single)
    assert after["run"].run_id == run_id and after["run"].status == "done"
    pairs = [(s[0], s[2]) for s in after["sessions"]]
    assert len(pairs) == len(set(pairs)) == 6 * POLICIES  # none twice, none lost
    _same_results(after, ref)
