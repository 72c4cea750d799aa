"""Faults around ``boed simulate``: store faults vs image faults, true failed counts, --retry-failed,
SIGTERM in a real subprocess, the report folder, and values refused before anything is created."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import boed.simulate as sim
from boed.simulate import SimulationConfig, decision_memory
from boed.store import Store
from boed.store.errors import StoreWriteError
from cli.main import app
from tests.cli.toy_simulate import install

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = 3 * 4  # 3 images x (full image, boed, random, oracle)


@pytest.fixture
def toys(monkeypatch):
    install(
        lambda obj, name, value: monkeypatch.setattr(obj, name, value, raising=False), monkeypatch.setitem
    )


def _args(tmp_path, *extra, out="report"):
    return ["simulate", "--preset", "tiny", "--n-images", "3", "--scans", "2", "--db", str(tmp_path / "b.db"),
            "--device", "cpu", "--policy", "boed,random,oracle",
            *(["--out", str(tmp_path / out)] if out else ["--no-report"]), *extra]  # fmt: skip


def _resume(tmp_path, run_id, *extra):
    return ["simulate", "--resume", run_id, "--db", str(tmp_path / "b.db"), "--no-report", "--device", "cpu",
            *extra]  # fmt: skip


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "b.db"))


# ---------------------------------------------------------------- store faults vs image faults
def test_a_store_fault_stops_the_run_and_resume_completes_it(toys, tmp_path, monkeypatch):
    real = Store.log_step
    calls = {"n": 0}

    def full_disk(self, session_id, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise StoreWriteError(f"database error on {self.url}: database or disk is full")
        return real(self, session_id, **kwargs)

    monkeypatch.setattr(Store, "log_step", full_disk)
    first = runner.invoke(app, _args(tmp_path, out=None))
    assert first.exit_code == 2, first.output
    err = _one_line(first.stderr)
    assert "the store failed while writing run" in err and "database or disk is full" in err
    assert "marked interrupted" in err and "everything written before is kept" in err
    assert f"--db sqlite:///{tmp_path / 'b.db'}" in err and "Traceback" not in first.stderr
    store = _store(tmp_path)
    run_id = store.latest_run_id()
    assert f"boed simulate --resume {run_id}" in err
    run = store.get_run(run_id)
    assert run.status == "interrupted" and "database or disk is full" in run.error
    counts = store.session_counts(run_id)
    assert "failed" not in counts  # the image was not blamed
    assert counts.get("running") == 1 and counts["done"] >= 2  # the run stopped at once, nothing lost
    done_before = set(store.sessions(run_id).query("status == 'done'")["session_id"])

    monkeypatch.setattr(Store, "log_step", real)
    second = runner.invoke(app, _resume(tmp_path, run_id))
    assert second.exit_code == 0, second.output
    assert "0 failed sessions" in second.stdout
    sessions = store.sessions(run_id)
    assert len(sessions) == SESSIONS and (sessions["status"] == "done").all()
    assert done_before <= set(sessions["session_id"])  # the sessions written before were kept
    run = store.get_run(run_id)
    assert run.status == "done" and run.error is None and run.timings["failed_sessions"] == 0


def test_a_store_that_cannot_even_mark_the_run_still_resumes(toys, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise StoreWriteError("database error on x: disk I/O error")

    monkeypatch.setattr(Store, "finish_session", broken)
    monkeypatch.setattr(Store, "finish_run", broken)
    first = runner.invoke(app, _args(tmp_path, out=None))
    assert first.exit_code == 2
    assert "could not be marked and still shows 'running'" in _one_line(first.stderr)
    monkeypatch.undo()
    install(
        lambda obj, name, value: monkeypatch.setattr(obj, name, value, raising=False), monkeypatch.setitem
    )
    store = _store(tmp_path)
    run_id = store.latest_run_id()
    assert store.get_run(run_id).status == "running"
    assert runner.invoke(app, _resume(tmp_path, run_id)).exit_code == 0
    assert store.session_counts(run_id) == {"done": SESSIONS}


def test_values_the_store_refuses_fail_that_session_only():
    """A plain StoreError from log_step (what one image produced does not fit) is an image fault."""
    from boed.store.errors import StoreError
    from tests.boed.toys import BayesClassifier, FakeStore, PosteriorSampler, ToyDataset, ToyWorld

    class Picky(FakeStore):
        def log_step(self, session_id, **kw):
            if self.sessions[session_id]["policy"] == "random":
                raise StoreError("probs has 3 values but the run has 15 labels")
            super().log_step(session_id, **kw)

    world = ToyWorld(size=8, patch=4, seed=0)
    store = Picky()
    config = SimulationConfig(images="toy", n_images=2, scans=1, n_samples=2, grid=3, image_size=8,
                              patch_size=4, policies=("boed", "random"), figure_sessions=0)  # fmt: skip
    parts = ToyDataset(world, n=2), PosteriorSampler(world), BayesClassifier(world)
    run_id = sim.run_simulation(store, *parts, config)
    assert store.runs[run_id]["status"] == "done" and store.runs[run_id]["timings"]["failed_sessions"] == 2
    failed = [s for s in store.sessions.values() if s["status"] == "failed"]
    assert {s["policy"] for s in failed} == {"random"} and "probs has 3 values" in failed[0]["error"]


def test_a_store_fault_before_the_run_exists_is_one_line(toys, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise StoreWriteError("database error on x: attempt to write a readonly database")

    monkeypatch.setattr(Store, "create_run", broken)
    result = runner.invoke(app, _args(tmp_path, out=None))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "the store failed before the run started: database error on x: attempt to write a readonly" in (
        _one_line(result.stderr)
    )


# ---------------------------------------------------------------- true counts, --retry-failed
def test_failed_counts_are_those_of_the_store_across_resumes_and_retry_failed(toys, tmp_path, monkeypatch):
    real_session, real_one = sim.run_session, sim._one_session
    broken = {"on": True}

    def random_fails(image, **kwargs):  # an image fault: the random policy's sessions raise
        if broken["on"] and kwargs["policy"].name == "random":
            raise RuntimeError("sampler exploded")
        return real_session(image, **kwargs)

    calls = {"n": 0}

    def interrupt_sixth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_one(*args, **kwargs)

    monkeypatch.setattr(sim, "run_session", random_fails)
    monkeypatch.setattr(sim, "_one_session", interrupt_sixth)
    assert runner.invoke(app, _args(tmp_path, out=None)).exit_code == 130
    store = _store(tmp_path)
    run_id = store.latest_run_id()
    run = store.get_run(run_id)
    assert run.status == "interrupted" and run.error == "interrupted (Ctrl-C)"
    assert store.session_counts(run_id) == {"done": 4, "failed": 1}
    assert run.timings["failed_sessions"] == 1

    monkeypatch.setattr(sim, "_one_session", real_one)
    second = runner.invoke(app, _resume(tmp_path, run_id))
    assert second.exit_code == 0, second.output
    assert store.session_counts(run_id) == {"done": 9, "failed": 3}
    assert "3 failed sessions" in second.stdout  # the whole run's, not this process's 2
    assert store.get_run(run_id).timings["failed_sessions"] == 3

    again = runner.invoke(app, _resume(tmp_path, run_id))  # a plain resume keeps the failed ones
    assert again.exit_code == 0 and "3 failed sessions" in again.stdout

    broken["on"] = False
    retried = runner.invoke(app, _resume(tmp_path, run_id, "--retry-failed"))
    assert retried.exit_code == 0, retried.output
    assert "0 failed sessions" in retried.stdout
    assert store.session_counts(run_id) == {"done": SESSIONS}
    assert store.get_run(run_id).timings["failed_sessions"] == 0


def test_retry_failed_needs_resume(toys, tmp_path):
    result = runner.invoke(app, _args(tmp_path, "--retry-failed"))
    assert result.exit_code == 2 and "--retry-failed needs --resume RUN_ID" in result.stderr


# ---------------------------------------------------------------- SIGTERM, in a real process
def test_sigterm_marks_the_run_interrupted_and_resume_works(toys, tmp_path):
    db = tmp_path / "b.db"
    Store.open(db).close()
    cmd = [sys.executable, "-m", "tests.cli.toy_simulate", "0.3",
           *_args(tmp_path, out=None)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store.open(db)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        run_id = store.latest_run_id()
        if run_id and store.session_counts(run_id).get("done", 0) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and f"boed simulate --resume {run_id}" in _one_line(err)
    assert "Traceback" not in err
    run = store.get_run(run_id)
    assert run.status == "interrupted" and run.error == "SIGTERM"
    done = store.session_counts(run_id).get("done", 0)
    assert 3 <= done < SESSIONS

    resumed = runner.invoke(app, _resume(tmp_path, run_id))
    assert resumed.exit_code == 0, resumed.output
    sessions = store.sessions(run_id)
    assert len(sessions) == SESSIONS and not sessions.duplicated(["image_id", "policy"]).any()
    assert store.get_run(run_id).status == "done"


# ---------------------------------------------------------------- the report folder
def test_an_unwritable_out_is_refused_before_any_work(toys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, _args(tmp_path, out="a-file/report"))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"--out {blocker / 'report'}: cannot write the report there" in _one_line(result.stderr)
    assert not (tmp_path / "b.db").exists()  # refused before the store was even opened
    report = runner.invoke(
        app, ["report", "latest", "--db", str(tmp_path / "b.db"), "--out", str(blocker / "r")]
    )
    assert report.exit_code == 2 and "cannot write the report there" in _one_line(report.stderr)


def test_two_runs_do_not_share_a_report_folder(toys, tmp_path):
    first = runner.invoke(app, _args(tmp_path, out="shared"))
    assert first.exit_code == 0, first.output
    store = _store(tmp_path)
    first_id = store.latest_run_id()
    assert (tmp_path / "shared" / ".boed-run").read_text().strip() == first_id
    html = (tmp_path / "shared" / "index.html").read_text()

    second = runner.invoke(app, _args(tmp_path, out="shared"))
    assert second.exit_code == 2
    assert f"--out {tmp_path / 'shared'} already holds the report of run {first_id}" in _one_line(
        second.stderr
    )
    assert len(store.runs()) == 1  # refused before the run was created
    assert (tmp_path / "shared" / "index.html").read_text() == html

    third = runner.invoke(app, _args(tmp_path, out=None))
    third_id = store.latest_run_id()
    assert third.exit_code == 0 and third_id != first_id
    refused = runner.invoke(app, ["report", third_id, "--db", str(tmp_path / "b.db"), "--out",
                                  str(tmp_path / "shared")])  # fmt: skip
    assert refused.exit_code == 2 and f"holds the report of run {first_id}" in _one_line(refused.stderr)
    rebuilt = runner.invoke(app, ["report", first_id, "--db", str(tmp_path / "b.db"), "--out",
                                  str(tmp_path / "shared")])  # fmt: skip
    assert rebuilt.exit_code == 0, rebuilt.output  # its own folder: rebuilt in place


def test_a_folder_with_an_unmarked_report_is_not_overwritten(toys, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text("<html>an earlier report</html>")
    result = runner.invoke(app, _args(tmp_path, out="old"))
    assert result.exit_code == 2 and "already holds the report of an earlier run" in _one_line(result.stderr)
    assert (old / "index.html").read_text() == "<html>an earlier report</html>"


# ---------------------------------------------------------------- values refused before anything
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--grid", "0"], "grid must be at least 1, got 0"),
        (["--n-samples", "0"], "n-samples must be at least 1, got 0"),
        (["--grid", "-3"], "grid must be at least 1, got -3"),
        (
            ["--grid", "26"],
            "--grid 26 is more than the 25 scan positions per side of 32 px images with 8 px scans",
        ),
        (["--n-samples", "1000000000"], "--n-samples 1000000000 with --grid 5 at 32 px needs about"),
    ],
)
def test_bad_values_are_refused_before_a_run_exists(toys, tmp_path, extra, message):
    result = runner.invoke(app, _args(tmp_path, *extra))
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.stderr) and "Traceback" not in result.stderr
    assert _store(tmp_path).runs().empty  # no run row was created


def test_the_grid_limit_itself_is_accepted(toys, tmp_path):
    result = runner.invoke(app, _args(tmp_path, "--grid", "25", "--n-images", "1", "--scans", "1", out=None))
    assert result.exit_code == 0, result.output


def test_memory_is_checked_against_what_is_available(toys, tmp_path, monkeypatch):
    import cli.simulate

    config = SimulationConfig(image_size=32, patch_size=8, grid=5, n_samples=4, preset="tiny")
    monkeypatch.setattr(cli.simulate, "_available_memory", lambda device: decision_memory(config) - 1)
    result = runner.invoke(app, _args(tmp_path))
    assert result.exit_code == 2
    assert "more than the" in _one_line(result.stderr) and "lower --n-samples or --grid" in result.stderr
    monkeypatch.setattr(cli.simulate, "_available_memory", lambda device: decision_memory(config))
    assert runner.invoke(app, _args(tmp_path, "--n-images", "1", "--scans", "1", out=None)).exit_code == 0


def test_decision_memory_formula():
    config = SimulationConfig(image_size=32, patch_size=8, grid=5, n_samples=4, memory_budget=1000)
    s2, k, n = 32 * 32, 25, 4
    assert decision_memory(config) == 9 * k * s2 + 4 * n * s2 * 65 + 24 * n * k + 4 * 1000
    bigger = SimulationConfig(image_size=32, patch_size=8, grid=5, n_samples=8, memory_budget=1000)
    assert decision_memory(bigger) - decision_memory(config) == 4 * 4 * s2 * 65 + 24 * 4 * k


def test_a_really_full_database_mid_run(toys, tmp_path, monkeypatch):
    """SQLite's own "database or disk is full" (a page limit set after 4 sessions), end to end."""
    from sqlalchemy import event

    import boed.store.engine as engine_module

    limit = {"pages": None}
    recipe = engine_module._apply_sqlite_recipe

    def recipe_with_limit(engine):
        recipe(engine)

        @event.listens_for(engine, "connect")
        def _limit(dbapi_connection, _record):
            if limit["pages"]:
                dbapi_connection.execute(f"PRAGMA max_page_count={limit['pages']}")

    monkeypatch.setattr(engine_module, "_apply_sqlite_recipe", recipe_with_limit)
    real = Store.finish_session
    finished = {"n": 0}

    def fill_up_after_four(self, session_id, **kwargs):
        real(self, session_id, **kwargs)
        finished["n"] += 1
        if finished["n"] == 4:
            with self.engine.connect() as conn:
                limit["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar()
            self.engine.dispose()  # new connections get the limit

    monkeypatch.setattr(Store, "finish_session", fill_up_after_four)
    first = runner.invoke(app, _args(tmp_path, "--figures", "3", out=None))
    assert first.exit_code == 2, first.output
    assert "database or disk is full" in _one_line(first.stderr)
    limit["pages"] = None
    monkeypatch.setattr(Store, "finish_session", real)
    store = _store(tmp_path)
    run_id = store.latest_run_id()
    counts = store.session_counts(run_id)
    assert counts["done"] >= 4 and counts.get("running") == 1 and "failed" not in counts
    run = store.get_run(run_id)  # marked when that small update still fit, else left running
    assert run.status == "running" or "database or disk is full" in run.error
    print(f"\nfull database: {counts}, run {run.status}: {run.error}")
    assert runner.invoke(app, _resume(tmp_path, run_id)).exit_code == 0
    assert store.session_counts(run_id) == {"done": SESSIONS}
