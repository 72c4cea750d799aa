"""The store contract: one test class, run against every backend (SQLite file, PostgreSQL)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from boed.store import RunRecord, SessionRecord, Store, StoreError
from boed.store.models import Array, Base

LABELS = ["Effusion", "Mass", "Any"]
NAN = float("nan")


def make_run(store: Store, **changes) -> str:
    values = dict(
        sampler="aipo",
        sampler_sha256="a" * 64,
        classifier="densenet-small",
        classifier_sha256="b" * 64,
        dataset={"images": "phantoms", "split": "test", "n": 4},
        seed=7,
        labels=LABELS,
        code_version="0.1.0",
    )
    values.update(changes)
    config = values.pop("config", {"preset": "cpu", "scans": 2, "policies": ["boed", "random"]})
    return store.create_run(config, **values)


def run_session(store, run_id, image_id="img0", policy="boed", scans=2, finish="done", truth=(1.0, 0.0, 1.0)):
    """A whole session: step 0 (no scan) then ``scans`` scans; probabilities rise with the step."""
    sid = store.start_session(
        run_id, image_id=image_id, image_index=0, policy=policy, true_labels=list(truth)
    )
    for step in range(scans + 1):
        store.log_step(
            sid,
            step=step,
            location=None if step == 0 else (4 * step, 8),
            candidate=None if step == 0 else 10 + step,
            eig=None if step == 0 else 0.5 / step,
            eig_map=None if step == 0 else [[0.0, 0.5 / step], [0.25, NAN]],
            probs=[0.1 * step, 0.2, 0.3 + 0.2 * step],
            seconds=0.5,
        )
    if finish:
        store.finish_session(sid, status=finish, error="boom" if finish == "failed" else None)
    return sid


class TestStoreContract:
    # ------------------------------------------------------------ schema
    def test_migrated_schema_equals_models(self, store):
        with store.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == []

    def test_processes_creating_one_new_database_at_once(self, store_url):
        """Migrations are serialised, so simultaneous first opens queue up instead of failing."""
        code = (
            "import sys; from boed.store import Store; s = Store.open(sys.argv[1]); "
            "s.create_run({}, sampler='s', sampler_sha256=None, classifier='c', classifier_sha256=None, "
            "dataset={}, seed=0, labels=['Any'], code_version='0')"
        )
        procs = [subprocess.Popen([sys.executable, "-c", code, store_url], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]  # fmt: skip
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        with Store.open(store_url) as store, store.engine.connect() as conn:
            assert len(store.runs()) == 4
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1

    def test_open_twice_is_a_no_op(self, store_url, store):
        run_id = make_run(store)
        with Store.open(store_url) as again:
            assert again.get_run(run_id).run_id == run_id

    # ------------------------------------------------------------ runs
    def test_run_round_trip(self, store):
        config = {"preset": "cpu", "nan": NAN, "shape": (2, 3), "nested": {"path": Path("/x")}}
        run_id = make_run(store, config=config, sampler_sha256=None)
        run = store.get_run(run_id)
        assert isinstance(run, RunRecord)
        assert run.status == "running" and run.finished_at is None and run.timings is None
        assert run.config == {"preset": "cpu", "nan": None, "shape": [2, 3], "nested": {"path": "/x"}}
        assert store.run_config(run_id) == run.config
        assert run.labels == tuple(LABELS) and run.seed == 7 and run.sampler_sha256 is None
        assert run.created_at.tzinfo is not None
        with pytest.raises(AttributeError):
            run.status = "done"  # frozen
        store.finish_run(run_id, status="done", timings={"total_s": 1.5, "per_step": [0.1, 0.2]})
        run = store.get_run(run_id)
        assert run.status == "done" and run.finished_at >= run.created_at
        assert run.timings == {"total_s": 1.5, "per_step": [0.1, 0.2]}
        assert store.latest_run_id() == run_id

    def test_run_ids_are_unique(self, store):
        assert len({make_run(store) for _ in range(5)}) == 5

    def test_unknown_run_is_a_clear_error(self, store):
        run_id = make_run(store)
        for call in (
            lambda: store.get_run("nope"),
            lambda: store.run_config("nope"),
            lambda: store.resume_plan("nope"),
            lambda: store.finish_run("nope", status="done"),
            lambda: store.sessions("nope"),
            lambda: store.predictions("nope"),
            lambda: store.start_session(
                "nope", image_id="a", image_index=0, policy="boed", true_labels=[0] * 3
            ),
        ):
            with pytest.raises(StoreError, match=f"unknown run id 'nope'; recent runs: {run_id}"):
                call()

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"labels": []}, "non-empty list of distinct label names"),
            ({"labels": ["Any", "Any"]}, "distinct"),
            ({"config": {"f": object()}}, "not JSON-serialisable"),
        ],
    )
    def test_bad_run_refused(self, store, changes, message):
        with pytest.raises(StoreError, match=message):
            make_run(store, **changes)

    def test_step_diagnostics_round_trip(self, store):
        run_id = make_run(store)
        sid = store.start_session(
            run_id, image_id="d", image_index=0, policy="boed", true_labels=[1.0, 0.0, 0.0]
        )
        store.log_step(
            sid, step=0, location=None, candidate=None, eig=None, eig_map=None, probs=[0.5] * 3, seconds=0.1
        )
        diag = {"eig_se": 0.01, "ess": 7.5, "target_observed": 0.4, "target_completions": float("nan")}
        store.log_step(sid, step=1, location=(0, 0), candidate=0, eig=0.2, eig_map=None, probs=[0.6] * 3,
                       seconds=0.1, diagnostics=diag)  # fmt: skip
        with pytest.raises(StoreError, match="unknown step diagnostics gap"):
            store.log_step(sid, step=2, location=(0, 0), candidate=0, eig=0.2, eig_map=None, probs=[0.6] * 3,
                           seconds=0.1, diagnostics={"gap": 1.0})  # fmt: skip
        store.finish_session(sid, status="done")
        row = store.steps(run_id).set_index("step").loc[1]
        assert (row["eig_se"], row["ess"], row["target_observed"]) == (0.01, 7.5, 0.4)
        assert math.isnan(row["target_completions"])  # non-finite values are stored as null
        assert len(store.steps(run_id)) == 2  # the refused step left nothing behind

    def test_bad_run_status_refused(self, store):
        with pytest.raises(StoreError, match="valid: done, failed, interrupted"):
            store.finish_run(make_run(store), status="finished")

    # ------------------------------------------------------------ sessions and steps
    def test_session_round_trip(self, store):
        run_id = make_run(store)
        sid = run_session(store, run_id, truth=(1.0, NAN, 0.0))
        record = store.get_session(sid)
        assert isinstance(record, SessionRecord)
        assert record.status == "done" and record.error is None and record.ended_at >= record.started_at
        assert record.true_labels[0] == 1.0 and math.isnan(record.true_labels[1])

        steps = store.steps(run_id, eig_map=True)
        assert list(steps.columns) == [
            "run_id", "session_id", "policy", "image_id", "step", "row", "col", "candidate", "eig",
            "seconds", "eig_se", "ess", "target_observed", "target_completions", "eig_map",
        ]  # fmt: skip
        assert steps[["eig_se", "ess", "target_observed", "target_completions"]].isna().all().all()
        assert steps["step"].tolist() == [0, 1, 2]
        assert steps["row"].isna().tolist() == [True, False, False] and steps["row"].iloc[1] == 4
        assert steps["eig"].iloc[2] == pytest.approx(0.25) and math.isnan(steps["eig"].iloc[0])
        assert steps["eig_map"].iloc[1] == [[0.0, 0.5], [0.25, None]] and steps["eig_map"].iloc[0] is None

        preds = store.predictions(run_id)
        assert list(preds.columns) == [
            "run_id",
            "session_id",
            "policy",
            "image_id",
            "step",
            "label",
            "prob",
            "truth",
        ]
        assert len(preds) == 3 * len(LABELS)
        any_ = store.predictions(run_id, label="Any")
        assert any_["prob"].tolist() == pytest.approx([0.3, 0.5, 0.7])
        assert (any_["truth"] == 0.0).all()
        assert store.predictions(run_id, label="Mass")["truth"].isna().all()
        for column in ("run_id", "policy", "image_id", "label"):
            assert isinstance(preds[column].dtype, pd.StringDtype)

    def test_numpy_and_torch_values_are_accepted(self, store):
        import torch

        run_id = make_run(store, seed=np.int64(3), config={"lr": np.float32(0.5), "n": torch.tensor(4)})
        sid = store.start_session(run_id, image_id="a", image_index=np.int64(0), policy="boed",
                                  true_labels=torch.tensor([1.0, float("nan"), 0.0]))  # fmt: skip
        loc = torch.tensor([3, 5])
        store.log_step(sid, step=torch.tensor(1), location=(loc[0], loc[1]), candidate=np.int64(7),
                       eig=torch.tensor(0.25), eig_map=torch.full((3, 3), 0.5, dtype=torch.float64),
                       probs=torch.tensor([0.1, 0.2, 0.3]), seconds=np.float32(0.5))  # fmt: skip
        store.save_array(sid, 1, "observed", torch.zeros(2, 2, dtype=torch.float16))
        store.finish_session(sid)
        assert store.run_config(run_id) == {"lr": 0.5, "n": 4} and store.get_run(run_id).seed == 3
        step = store.steps(run_id, eig_map=True).iloc[0]
        assert (step["row"], step["col"], step["candidate"], step["eig"]) == (3, 5, 7, 0.25)
        assert step["eig_map"] == [[0.5] * 3] * 3
        preds = store.predictions(run_id)
        assert preds["label"].tolist() == LABELS  # the run's label order
        assert preds["prob"].tolist() == pytest.approx([0.1, 0.2, 0.3])
        assert store.load_arrays(sid)[(1, "observed")].dtype == np.float16

    def test_duplicate_pair_refused(self, store):
        run_id = make_run(store)
        run_session(store, run_id)
        with pytest.raises(StoreError, match="already has a done session for image 'img0'"):
            store.start_session(run_id, image_id="img0", image_index=0, policy="boed", true_labels=[0, 0, 0])
        store.start_session(run_id, image_id="img0", image_index=0, policy="random", true_labels=[0, 0, 0])

    def test_wrong_label_count_refused(self, store):
        run_id = make_run(store)
        with pytest.raises(StoreError, match="true_labels has 2 values but run .* has 3 labels"):
            store.start_session(run_id, image_id="a", image_index=0, policy="boed", true_labels=[0, 1])
        sid = store.start_session(run_id, image_id="a", image_index=0, policy="boed", true_labels=[0, 1, 1])
        with pytest.raises(StoreError, match="probs has 4 values"):
            store.log_step(sid, step=0, location=None, candidate=None, eig=None, eig_map=None,
                           probs=[0.1] * 4, seconds=0.0)  # fmt: skip

    def test_step_logged_twice_or_after_finish_refused(self, store):
        run_id = make_run(store)
        sid = store.start_session(run_id, image_id="a", image_index=0, policy="boed", true_labels=[0, 1, 1])
        step = dict(location=None, candidate=None, eig=None, eig_map=None, probs=[0.1] * 3, seconds=0.0)
        store.log_step(sid, step=0, **step)
        with pytest.raises(StoreError, match="step 0 of session .* is already logged"):
            store.log_step(sid, step=0, **step)
        store.finish_session(sid, status="failed", error="sampler exploded")
        with pytest.raises(StoreError, match="is already failed"):
            store.log_step(sid, step=1, **step)
        with pytest.raises(StoreError, match="unknown session id 999"):
            store.log_step(999, step=0, **step)
        with pytest.raises(StoreError, match="unknown session id 999"):
            store.finish_session(999)
        with pytest.raises(StoreError, match="valid: done, failed"):
            store.finish_session(sid, status="ok")
        sessions = store.sessions(run_id)
        assert sessions["status"].tolist() == ["failed"] and sessions["error"].tolist() == [
            "sampler exploded"
        ]
        assert store.predictions(run_id).empty  # failed sessions are left out by default
        assert len(store.predictions(run_id, status=None)) == 3

    # ------------------------------------------------------------ arrays
    @pytest.mark.parametrize("dtype", ["float16", "float32", ">f4", "uint8", "bool", "int64"])
    def test_arrays_round_trip_as_raw_little_endian(self, store, dtype):
        run_id = make_run(store)
        sid = run_session(store, run_id)
        array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
        store.save_array(sid, 1, "completions", array)
        store.save_array(sid, 0, "observed", np.ones((4, 4), np.float32))
        arrays = store.load_arrays(sid)
        assert sorted(arrays) == [(0, "observed"), (1, "completions")]
        got = arrays[(1, "completions")]
        assert got.dtype == np.dtype(dtype).newbyteorder("=") and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, array)
        with store.engine.connect() as conn:
            stored = conn.execute(select(Array.dtype, Array.data).where(Array.name == "completions")).one()
        assert stored.data == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        assert stored.dtype in ("<" + np.dtype(dtype).str[1:], "|" + np.dtype(dtype).str[1:])

    def test_array_replaced_and_bad_arrays_refused(self, store):
        sid = run_session(store, make_run(store))
        store.save_array(sid, 1, "eig", np.zeros(3, np.float32))
        store.save_array(sid, 1, "eig", np.ones(3, np.float32))
        np.testing.assert_array_equal(store.load_arrays(sid)[(1, "eig")], np.ones(3))
        with pytest.raises(StoreError, match="only numeric arrays"):
            store.save_array(sid, 1, "names", np.array(["a", "b"], dtype=object))
        with pytest.raises(StoreError, match="unknown session id 999"):
            store.save_array(999, 1, "eig", np.zeros(3))
        with pytest.raises(StoreError, match="unknown session id 999"):
            store.load_arrays(999)

    # ------------------------------------------------------------ resume
    def test_resume_plan_deletes_half_written_sessions(self, store):
        run_id = make_run(store)
        run_session(store, run_id, "img0", "boed")
        run_session(store, run_id, "img0", "random", finish="failed")
        half = run_session(store, run_id, "img1", "boed", finish=None)
        store.save_array(half, 1, "completions", np.zeros((2, 2), np.float16))
        store.finish_run(run_id, status="interrupted", timings={})

        assert store.resume_plan(run_id) == {("img0", "boed"), ("img0", "random")}
        assert store.get_run(run_id).status == "running" and store.get_run(run_id).finished_at is None
        with pytest.raises(StoreError, match="unknown session id"):
            store.get_session(half)
        assert set(store.steps(run_id, status=None)["session_id"]) == set(
            store.sessions(run_id)["session_id"]
        )
        with store.engine.connect() as conn:
            assert conn.execute(select(Array.session_id)).all() == []

        # the resumed run redoes the missing pair once: nothing duplicated, nothing lost
        run_session(store, run_id, "img1", "boed")
        sessions = store.sessions(run_id)
        assert sorted(zip(sessions["image_id"], sessions["policy"], strict=True)) == [
            ("img0", "boed"), ("img0", "random"), ("img1", "boed"),
        ]  # fmt: skip
        assert len(store.predictions(run_id, status=None)) == 3 * 3 * len(LABELS)

        assert store.resume_plan(run_id, retry_failed=True) == {("img0", "boed"), ("img1", "boed")}

    # ------------------------------------------------------------ read API
    def test_runs_and_sessions_frames(self, store):
        first, second = make_run(store), make_run(store, seed=8)
        run_session(store, first, "img0", "boed")
        run_session(store, first, "img1", "boed", finish="failed")
        run_session(store, second, "img0", "random", scans=1)
        runs = store.runs()
        assert runs["run_id"].tolist() == [first, second]
        assert runs[["n_sessions", "n_done", "n_failed"]].values.tolist() == [[2, 1, 1], [1, 1, 0]]
        assert str(runs["created_at"].dtype).endswith("UTC]")
        sessions = store.sessions()
        assert len(sessions) == 3 and sessions["n_steps"].tolist() == [3, 3, 2]
        assert sessions["seconds"].tolist() == pytest.approx([1.5, 1.5, 1.0])
        assert store.sessions(second)["policy"].tolist() == ["random"]
        assert len(store.steps()) == 3 + 2 and len(store.steps(first)) == 3
        assert len(store.predictions(label="Any")) == 3 + 2

    def test_empty_frames_have_their_columns(self, store):
        assert "n_sessions" in store.runs().columns and store.runs().empty
        assert "true_labels" in store.sessions().columns
        assert "candidate" in store.steps().columns
        assert list(store.predictions().columns)[-3:] == ["label", "prob", "truth"]

    def test_unknown_label_or_status_lists_valid_ones(self, store):
        run_id = make_run(store)
        with pytest.raises(StoreError, match="unknown label 'Nodule'; valid: Effusion, Mass, Any"):
            store.predictions(run_id, label="Nodule")
        with pytest.raises(StoreError, match="valid: running, done, failed"):
            store.steps(status="complete")

    def test_documented_sql_gives_accuracy_by_scans(self, store):
        """The plain-SQL example of docs/store.md, on this backend, against pandas."""
        doc = (Path(__file__).parents[3] / "docs" / "store.md").read_text()
        sql = doc.split("```sql\n", 1)[1].split("```", 1)[0]
        run_id = make_run(store)
        for i, truth in enumerate([1.0, 0.0, 1.0]):
            run_session(store, run_id, f"img{i}", "boed", truth=(0.0, 0.0, truth))
            run_session(store, run_id, f"img{i}", "random", truth=(0.0, 0.0, truth))
        run_session(store, run_id, "unknown", "boed", truth=(0.0, 0.0, NAN))
        run_session(store, run_id, "broken", "boed", finish="failed")
        with store.engine.connect() as conn:
            rows = conn.execute(text(sql), {"run_id": run_id}).all()
        p = store.predictions(run_id, label="Any").dropna(subset=["truth"])
        p["correct"] = (p["prob"] >= 0.5) == (p["truth"] > 0.5)
        expected = p.groupby(["policy", "step"])["correct"].agg(["size", "mean"]).reset_index()
        assert [(r.policy, r.scans, r.sessions) for r in rows] == list(
            zip(expected["policy"], expected["step"], expected["size"], strict=True)
        )
        assert [float(r.accuracy) for r in rows] == pytest.approx(expected["mean"].tolist())
        assert {r.sessions for r in rows} == {3}

    # ------------------------------------------------------------ concurrency
    def test_concurrent_writers_lose_nothing(self, store_url, store):
        workers, n_sessions, n_steps = 4, 15, 4
        run_id = make_run(store)
        script = Path(__file__).with_name("concurrent_writer.py")
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), store_url, run_id, str(w), str(n_sessions), str(n_steps)],
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for w in range(workers)
        ]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        elapsed = time.perf_counter() - start
        assert [p.returncode for p in procs] == [0] * workers, errors
        sessions = store.sessions(run_id)
        assert len(sessions) == workers * n_sessions and (sessions["status"] == "done").all()
        assert (sessions["n_steps"] == n_steps).all()
        assert len(store.predictions(run_id)) == workers * n_sessions * n_steps * len(LABELS)
        writes = workers * n_sessions * (n_steps + 2)
        print(
            f"\n{store_url.split(':')[0]}: {workers} processes, {writes} write transactions, "
            f"0 lost, {elapsed:.1f} s"
        )
