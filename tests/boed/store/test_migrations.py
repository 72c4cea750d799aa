"""Schema upgrades of populated databases, databases made before migrations, and write faults."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import event, inspect, text

from boed.store import Store, StoreError
from boed.store.engine import make_engine
from boed.store.errors import StoreWriteError
from boed.store.migrate import alembic_config, stamp
from boed.store.models import Base

LABELS = ["Effusion", "Mass", "Any"]
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

# the tables as revision 0001 made them (Core tables: plain SQL inserts, no models of today)
_meta = sa.MetaData()
RUNS = sa.Table(
    "runs", _meta,
    *(sa.Column(n, sa.String) for n in ("run_id", "status", "code_version", "sampler", "sampler_sha256",
                                        "classifier", "classifier_sha256")),
    sa.Column("created_at", sa.DateTime(timezone=True)), sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("config", sa.JSON), sa.Column("dataset", sa.JSON), sa.Column("labels", sa.JSON),
    sa.Column("timings", sa.JSON), sa.Column("seed", sa.BigInteger),
)  # fmt: skip
SESSIONS = sa.Table(
    "sessions", _meta,
    sa.Column("id", sa.Integer), sa.Column("run_id", sa.String), sa.Column("image_id", sa.String),
    sa.Column("image_index", sa.Integer), sa.Column("policy", sa.String), sa.Column("true_labels", sa.JSON),
    sa.Column("status", sa.String), sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)), sa.Column("ended_at", sa.DateTime(timezone=True)),
)  # fmt: skip
STEPS = sa.Table(
    "steps", _meta,
    *(sa.Column(n, sa.Integer) for n in ("session_id", "step", "row", "col", "candidate")),
    sa.Column("eig", sa.Float), sa.Column("eig_map", sa.JSON), sa.Column("seconds", sa.Float),
)  # fmt: skip
PREDICTIONS = sa.Table(
    "predictions", _meta,
    sa.Column("session_id", sa.Integer), sa.Column("step", sa.Integer), sa.Column("label", sa.String),
    sa.Column("prob", sa.Float), sa.Column("truth", sa.Float),
)  # fmt: skip
ARRAYS = sa.Table(
    "arrays", _meta,
    sa.Column("session_id", sa.Integer), sa.Column("step", sa.Integer), sa.Column("name", sa.String),
    sa.Column("dtype", sa.String), sa.Column("shape", sa.JSON), sa.Column("data", sa.LargeBinary),
)  # fmt: skip


def _to_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


def _populate_first_schema(url: str) -> None:
    """Two runs (targets "mass" and the default "any"), a third with no target in its config; four
    sessions with steps, predictions and an array, written with plain SQL at revision 0001."""
    engine = make_engine(url)
    run = dict(status="done", code_version="0.1.0", sampler="aipo", sampler_sha256="a" * 64,
               classifier="densenet", classifier_sha256="b" * 64, created_at=T0, finished_at=T0,
               dataset={"images": "phantoms"}, labels=LABELS, timings={"total_s": 3.0}, seed=0)  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(RUNS), [
            run | {"run_id": "r-mass", "config": {"target": "mass", "scans": 2}},
            run | {"run_id": "r-any", "config": {"target": "any", "scans": 2}},
            run | {"run_id": "r-none", "config": {"scans": 2}, "status": "interrupted"},
        ])  # fmt: skip
        for sid, (run_id, image, status) in enumerate(
            [("r-mass", "img0", "done"), ("r-mass", "img1", "failed"), ("r-any", "img0", "done"),
             ("r-none", "img0", "running")], start=1,
        ):  # fmt: skip
            conn.execute(sa.insert(SESSIONS).values(
                id=sid, run_id=run_id, image_id=image, image_index=0, policy="boed",
                true_labels=[1.0, None, 1.0], status=status, error="boom" if status == "failed" else None,
                started_at=T0, ended_at=T0,
            ))  # fmt: skip
            for step in range(3):
                conn.execute(sa.insert(STEPS).values(
                    session_id=sid, step=step, row=None if step == 0 else step, col=None if step == 0 else 1,
                    candidate=None if step == 0 else step, eig=None if step == 0 else 0.5,
                    eig_map=None if step == 0 else [[0.1, 0.2], [0.3, None]], seconds=0.25,
                ))  # fmt: skip
                conn.execute(sa.insert(PREDICTIONS), [
                    {"session_id": sid, "step": step, "label": name, "prob": 0.1 * (step + 1), "truth": t}
                    for name, t in zip(LABELS, [1.0, None, 1.0], strict=True)
                ])  # fmt: skip
        data = np.arange(6, dtype="<f2").reshape(2, 3)
        conn.execute(sa.insert(ARRAYS).values(session_id=1, step=1, name="completions", dtype="<f2",
                                             shape=[2, 3], data=data.tobytes()))  # fmt: skip
        if conn.dialect.name == "postgresql":  # ids were given explicitly: move the sequence on
            conn.execute(text("SELECT setval(pg_get_serial_sequence('sessions', 'id'), 4)"))
    engine.dispose()


def test_populated_first_schema_upgrades_to_head_and_reads_back(store_url):
    _to_revision(store_url, "0001")
    _populate_first_schema(store_url)
    with Store.open(store_url) as store:  # upgrade to head
        runs = store.runs().set_index("run_id")
        assert runs.loc["r-mass", "target"] == "Mass"  # from the config, as the label's own name
        assert runs.loc["r-any", "target"] == "Any"
        assert pd.isna(runs.loc["r-none", "target"])
        assert runs["n_sessions"].to_dict() == {"r-mass": 2, "r-any": 1, "r-none": 1}
        assert runs.loc["r-mass", "n_failed"] == 1
        record = store.get_run("r-mass")
        assert record.target == "Mass" and record.error is None and record.config["scans"] == 2
        assert record.labels == tuple(LABELS) and record.timings == {"total_s": 3.0}
        # nothing below the runs was lost (no table rebuilt, no cascade)
        assert len(store.sessions()) == 4
        assert len(store.steps(status=None)) == 4 * 3
        assert len(store.predictions(status=None)) == 4 * 3 * len(LABELS)
        assert store.get_session(2).error == "boom"
        arrays = store.load_arrays(1)
        np.testing.assert_array_equal(arrays[(1, "completions")], np.arange(6).reshape(2, 3))
        assert store.steps("r-mass")["eig"].dropna().tolist() == [0.5, 0.5]
        # the upgraded database takes new writes and resumes
        assert store.resume_plan("r-none") == set()  # its half-written session is deleted
        new = store.create_run({"target": "any"}, sampler="s", sampler_sha256=None, classifier="c",
                               classifier_sha256=None, dataset={}, seed=0, labels=LABELS,
                               code_version="0", target="Any")  # fmt: skip
        sid = store.start_session(new, image_id="x", image_index=0, policy="boed", true_labels=[0, 0, 0])
        assert sid not in (1, 2, 3) and len(store.sessions()) == 4
        assert store.get_run(new).target == "Any"


def test_runs_of_schema_0002_read_as_simulations_and_acquisitions_are_recorded(store_url):
    """Migration 0003 adds runs.kind: every older run reads 'simulation'; a new run may be an
    'acquisition'; anything else is refused; 0003 downgrades to 0002 and back."""
    _to_revision(store_url, "0001")
    _populate_first_schema(store_url)
    _to_revision(store_url, "0002")
    with Store.open(store_url) as store:  # 0002 -> head
        runs = store.runs().set_index("run_id")
        assert runs["kind"].tolist() == ["simulation"] * 3
        assert store.get_run("r-mass").kind == "simulation"
        new = _make_run(store, kind="acquisition")
        assert store.get_run(new).kind == "acquisition" and _make_run(store) and len(store.runs()) == 5
        assert store.runs().set_index("run_id").loc[new, "kind"] == "acquisition"
        with pytest.raises(StoreError, match="unknown run kind 'scan'; valid: simulation, acquisition"):
            _make_run(store, kind="scan")
    engine = make_engine(store_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    with engine.connect() as conn:
        assert "kind" not in {c["name"] for c in inspect(conn).get_columns("runs")}
    engine.dispose()
    with Store.open(store_url) as store:
        assert store.get_run(new).kind == "simulation"  # the column came back with its default
        assert len(store.sessions()) == 4


def test_target_of_old_configs():
    from importlib import import_module

    migration = import_module("boed.store.migrations.versions.0002_run_target_and_error")
    assert migration.target_of({"target": "MASS"}, LABELS) == "Mass"
    assert migration.target_of({"target": "all"}, LABELS) == "all"
    assert migration.target_of({"target": "Nodule"}, LABELS) is None
    assert migration.target_of({}, LABELS) is None and migration.target_of(None, None) is None


def test_database_made_before_migrations_says_what_to_do(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _to_revision(url, "0001")
    _populate_first_schema(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # as create_all left it, before Alembic
    engine.dispose()
    with pytest.raises(StoreError) as err:
        Store.open(url)
    message = str(err.value)
    assert "created before the store had migrations" in message and "stamp 0001" in message
    assert "alembic.ini" in message and "\n" not in message
    stamp(url, "0001")
    with Store.open(url) as store:
        assert len(store.sessions()) == 4 and store.get_run("r-mass").target == "Mass"


def test_unversioned_tables_of_the_newest_schema_or_of_something_else(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(StoreError, match="match schema revision 0005: .*stamp 0005"):
        Store.open(url)
    other = tmp_path / "other.db"
    engine = make_engine(other)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not its schema and no alembic_version; use another database"):
        Store.open(other)
    with engine.connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()  # nothing was changed


def _make_run(store: Store, **kw) -> str:
    values = dict(sampler="s", sampler_sha256=None, classifier="c", classifier_sha256=None, dataset={},
                  seed=0, labels=LABELS, code_version="0")  # fmt: skip
    return store.create_run({}, **(values | kw))


def test_run_target_error_and_session_counts(store):
    run_id = _make_run(store, target="Mass")
    with pytest.raises(StoreError, match="run target 'Nodule' is not one of its labels"):
        _make_run(store, target="Nodule")
    for i, status in enumerate(["done", "failed", "done", None]):
        sid = store.start_session(
            run_id, image_id=f"i{i}", image_index=i, policy="boed", true_labels=[0, 0, 0]
        )
        if status:
            store.finish_session(sid, status=status, error="bad image" if status == "failed" else None)
    assert store.session_counts(run_id) == {"done": 2, "failed": 1, "running": 1}
    store.finish_run(run_id, status="interrupted", error="the store failed: disk full")
    assert store.get_run(run_id).error == "the store failed: disk full"
    assert store.runs()["error"].tolist() == ["the store failed: disk full"]
    store.resume_plan(run_id, retry_failed=True)
    run = store.get_run(run_id)
    assert run.status == "running" and run.error is None
    assert store.session_counts(run_id) == {"done": 2}
    with pytest.raises(StoreError, match="unknown run id 'nope'"):
        store.session_counts("nope")


def test_a_full_database_raises_store_write_error_and_keeps_what_was_written(tmp_path):
    """SQLite's own "database or disk is full" (a page limit): a StoreWriteError, earlier rows kept."""
    path = tmp_path / "full.db"
    Store.open(path).close()
    engine = make_engine(path)
    pages = {"limit": None}

    @event.listens_for(engine, "connect")
    def _limit(dbapi_connection, _record):
        if pages["limit"]:
            dbapi_connection.execute(f"PRAGMA max_page_count={pages['limit']}")

    store = Store(engine)
    run_id = _make_run(store)
    sid = store.start_session(run_id, image_id="a", image_index=0, policy="boed", true_labels=[0, 0, 0])
    store.finish_session(sid)
    with engine.connect() as conn:
        used = conn.exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()
    pages["limit"] = used
    big = np.zeros((64, 64, 64), dtype=np.float32)  # 1 MB: more pages than are left
    sid2 = store.start_session(run_id, image_id="b", image_index=1, policy="boed", true_labels=[0, 0, 0])
    with pytest.raises(StoreWriteError, match="database or disk is full"):
        store.save_array(sid2, 0, "completions", big)
    assert isinstance(StoreWriteError("x"), StoreError)
    pages["limit"] = None
    engine.dispose()
    counts = store.session_counts(run_id)
    assert counts == {"done": 1, "running": 1} and store.load_arrays(sid2) == {}


def test_refused_values_are_not_write_faults(store):
    """The simulation fails one session for a plain StoreError and stops the run for a
    StoreWriteError: values that do not fit must never raise the latter."""
    run_id = _make_run(store)
    sid = store.start_session(run_id, image_id="a", image_index=0, policy="p", true_labels=[0, 0, 0])
    step = dict(step=0, location=None, candidate=None, eig=None, eig_map=None, seconds=0.1)
    for call in (
        lambda: store.log_step(sid, probs=[0.5, 0.5], **step),
        lambda: store.save_array(sid, 0, "names", np.array(["x"])),
        lambda: store.log_step(sid, probs=["a", "b", "c"], **step),
    ):
        with pytest.raises(StoreError) as err:
            call()
        assert not isinstance(err.value, StoreWriteError)


def test_steps_of_older_schemas_read_null_diagnostics_and_0004_downgrades(store_url):
    """Migration 0004 adds the decision diagnostics to steps: older steps read null, new ones keep
    them; 0004 downgrades to 0003 and back."""
    _to_revision(store_url, "0001")
    _populate_first_schema(store_url)
    _to_revision(store_url, "0003")
    with Store.open(store_url) as store:  # 0003 -> head
        steps = store.steps()
        assert (
            len(steps)
            and steps[["eig_se", "ess", "target_observed", "target_completions"]].isna().all().all()
        )
    engine = make_engine(store_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    with engine.connect() as conn:
        assert "eig_se" not in {c["name"] for c in inspect(conn).get_columns("steps")}
    engine.dispose()
    with Store.open(store_url) as store:
        assert len(store.steps()) == len(steps)


def test_session_findings_round_trip_older_sessions_read_none_and_0005_downgrades(store_url):
    """Migration 0005 adds ``sessions.findings``: older sessions read None, new ones keep their
    boxes (an empty list stays empty: located, no finding); 0005 downgrades to 0004 and back."""
    _to_revision(store_url, "0001")
    _populate_first_schema(store_url)
    _to_revision(store_url, "0004")
    with Store.open(store_url) as store:  # 0004 -> head
        old = store.sessions()
        assert len(old) and all(f is None for f in old["findings"])
        run_id = old["run_id"].iloc[0]
        labels = store.get_run(run_id).labels
        boxed = store.start_session(
            run_id,
            image_id="boxed",
            image_index=90,
            policy="boed",
            true_labels=[1] * len(labels),
            findings=[("Mass", (1, 2, 5, 9)), {"label": "Nodule", "box": [0, 0, 3, 3]}],
        )
        healthy = store.start_session(
            run_id,
            image_id="healthy",
            image_index=91,
            policy="boed",
            true_labels=[0] * len(labels),
            findings=[],
        )
        with pytest.raises(StoreError, match=r"finding 0 \(Mass\) has an empty or negative box"):
            store.start_session(
                run_id,
                image_id="bad",
                image_index=92,
                policy="boed",
                true_labels=[0] * len(labels),
                findings=[("Mass", (5, 2, 5, 9))],
            )
        with pytest.raises(StoreError, match="finding 0 is not"):
            store.start_session(
                run_id,
                image_id="bad",
                image_index=92,
                policy="boed",
                true_labels=[0] * len(labels),
                findings=[("Mass", (1, 2))],
            )
        rows = store.sessions(run_id).set_index("session_id")
        assert rows.loc[boxed, "findings"] == [
            {"label": "Mass", "box": [1, 2, 5, 9]},
            {"label": "Nodule", "box": [0, 0, 3, 3]},
        ]
        assert rows.loc[healthy, "findings"] == []
        assert store.get_session(boxed).findings[0] == {"label": "Mass", "box": (1, 2, 5, 9)}
        assert store.get_session(healthy).findings == () and "bad" not in set(rows["image_id"])
    engine = make_engine(store_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        assert "findings" not in {c["name"] for c in inspect(conn).get_columns("sessions")}
    engine.dispose()
    with Store.open(store_url) as store:  # back to head: the boxes are gone, the sessions kept
        again = store.sessions(run_id)
        assert len(again) == len(rows) and all(f is None for f in again["findings"])
