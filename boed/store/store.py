"""The session store: the write path used by the simulation and the read API for research scripts.

Every method opens its own short transaction (commit on success, rollback on any error) and returns
plain values, frozen dataclasses or pandas DataFrames, never ORM rows, so a ``Store`` can be shared
by a whole run and several processes can write to one database at once (see engine.py for SQLite).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Engine, case, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session as OrmSession

from boed.store.engine import READ_OPTIONS, describe, make_engine
from boed.store.errors import StoreError
from boed.store.models import Array, Prediction, Run, Session, Step

if TYPE_CHECKING:  # pandas is imported by the read API only: writer processes start faster
    import pandas as pd

MIGRATIONS = Path(__file__).parent / "migrations"
RUN_STATUSES = ("running", "done", "failed", "interrupted")
SESSION_STATUSES = ("running", "done", "failed")
MAX_ERROR_CHARS = 10_000
MIGRATION_LOCK = 0x626F6564  # "boed": the PostgreSQL advisory lock taken while migrating


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` (see docs/store.md)."""

    run_id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    config: dict[str, Any]
    code_version: str
    sampler: str
    sampler_sha256: str | None
    classifier: str
    classifier_sha256: str | None
    dataset: dict[str, Any]
    seed: int
    labels: tuple[str, ...]
    timings: dict[str, Any] | None


@dataclass(frozen=True)
class SessionRecord:
    """One row of ``sessions``; ``true_labels`` in the run's label order, NaN = unknown."""

    id: int
    run_id: str
    image_id: str
    image_index: int
    policy: str
    true_labels: tuple[float, ...]
    status: str
    error: str | None
    started_at: datetime
    ended_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back: they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON (NaN/inf -> null, tuples -> lists, numpy/torch scalars -> numbers)."""

    def convert(v: Any) -> Any:
        if v is None or isinstance(v, bool | str | int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, list | tuple | set | frozenset):
            return [convert(x) for x in v]
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, date):  # and datetime
            return v.isoformat()
        if hasattr(v, "tolist"):  # numpy arrays and scalars, torch tensors
            return convert(v.tolist())
        raise StoreError(f"{what} is not JSON-serialisable: {type(v).__name__} value {v!r}")

    result = convert(value)
    json.dumps(result, allow_nan=False)
    return result


def _floats(values: Any, what: str) -> list[float | None]:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be a sequence of numbers: {exc}") from None
    return [float(v) if math.isfinite(v) else None for v in array]


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + 6 random hex digits)."""
    return f"{_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class Store:
    """A session store on any SQLAlchemy database. Open with :meth:`Store.open`.

    One ``Store`` serves a whole run (threads may share it); each process opens its own (do
    not carry an open Store across ``fork``).

    Write path (the simulation): :meth:`create_run`, :meth:`start_session`, :meth:`log_step`,
    :meth:`save_array`, :meth:`finish_session`, :meth:`finish_run`, :meth:`resume_plan`.
    Read API (research scripts): :meth:`runs`, :meth:`sessions`, :meth:`steps`,
    :meth:`predictions` (pandas DataFrames), :meth:`get_run`, :meth:`get_session`,
    :meth:`run_config`, :meth:`load_arrays`. Errors the user can fix raise :class:`StoreError`.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._reader = engine.execution_options(**READ_OPTIONS)

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, url: str | os.PathLike | None = None, *, migrate: bool = True) -> Store:
        """Open (and create or upgrade to the newest schema) the store at ``url``.

        ``url``: ``None`` = the SQLite file ``runs/boed.db`` under the working directory; a plain
        path = an SQLite file there (its folder is created); otherwise any SQLAlchemy URL, e.g.
        ``postgresql+psycopg://user:pw@host/db``. A malformed or unreachable URL raises StoreError.
        """
        engine = make_engine(url)
        store = cls(engine)
        if migrate:
            try:
                store._upgrade()
            except StoreError:
                engine.dispose()
                raise
            except DBAPIError as exc:
                engine.dispose()
                raise StoreError(f"cannot open database {describe(engine.url)}: {_first_line(exc)}") from None
        return store

    def _upgrade(self) -> None:
        """``alembic upgrade head``; a no-op read when the schema is current."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        heads = set(ScriptDirectory.from_config(config).get_heads())
        with self._reader.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
        if current == heads:
            return
        unknown = current - {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
        if unknown:
            raise StoreError(
                f"database {describe(self.engine.url)} has schema revision {', '.join(sorted(unknown))}, "
                "which this version of boed does not know (written by a newer version?)"
            )
        # one transaction, serialised (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL):
        # processes opening a new database at once queue up and the later ones find it current
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return describe(self.engine.url)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise StoreError(f"the database refused the write: {_first_line(exc)}") from None
        except DBAPIError as exc:
            raise StoreError(f"database error on {self.url}: {_first_line(exc)}") from None

    @contextmanager
    def _write(self) -> Iterator[OrmSession]:
        """A write transaction (BEGIN IMMEDIATE on SQLite): commits on success, else rolls back."""
        with self._guard(), OrmSession(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction, rolled back at the end."""
        with self._guard(), self._reader.connect() as conn, conn.begin():
            yield conn

    # ---------------------------------------------------------------- write path
    def create_run(
        self,
        config: dict[str, Any],
        *,
        sampler: str,
        sampler_sha256: str | None,
        classifier: str,
        classifier_sha256: str | None,
        dataset: dict[str, Any],
        seed: int,
        labels: Sequence[str],
        code_version: str,
    ) -> str:
        """Record a new run (status ``running``) and return its id."""
        labels = [str(label) for label in labels]
        if not labels or len(set(labels)) != len(labels):
            raise StoreError(f"a run needs a non-empty list of distinct label names, got {labels!r}")
        run = Run(
            run_id=new_run_id(),
            created_at=_now(),
            finished_at=None,
            status="running",
            config=_jsonable(config, "the run config"),
            code_version=str(code_version),
            sampler=str(sampler),
            sampler_sha256=sampler_sha256,
            classifier=str(classifier),
            classifier_sha256=classifier_sha256,
            dataset=_jsonable(dataset, "the dataset description"),
            seed=int(seed),
            labels=labels,
            timings=None,
        )
        with self._write() as s:
            s.add(run)
        return run.run_id

    def start_session(
        self, run_id: str, *, image_id: str, image_index: int, policy: str, true_labels: Sequence[float]
    ) -> int:
        """Start the session of one (image, policy) in a run; returns the session id.

        ``true_labels`` in the run's label order, NaN = unknown. A pair already in the run is
        refused (use :meth:`resume_plan` to skip finished pairs when resuming).
        """
        truth = _floats(true_labels, "true_labels")
        with self._write() as s:
            labels = self._run_labels(s, run_id)
            if len(truth) != len(labels):
                raise StoreError(
                    f"true_labels has {len(truth)} values but run {run_id} has {len(labels)} labels"
                )
            exists = s.scalar(
                select(Session.status).where(
                    Session.run_id == run_id, Session.image_id == str(image_id), Session.policy == str(policy)
                )
            )
            if exists is not None:
                raise StoreError(
                    f"run {run_id} already has a {exists} session for image {image_id!r} and policy "
                    f"{policy!r}; call resume_plan() first when resuming"
                )
            row = Session(
                run_id=run_id,
                image_id=str(image_id),
                image_index=int(image_index),
                policy=str(policy),
                true_labels=truth,
                status="running",
                error=None,
                started_at=_now(),
                ended_at=None,
            )
            s.add(row)
            s.flush()
            return row.id

    def log_step(
        self,
        session_id: int,
        *,
        step: int,
        location: tuple[int, int] | None,
        candidate: int | None,
        eig: float | None,
        eig_map: Sequence[Sequence[float]] | None,
        probs: Sequence[float],
        seconds: float,
    ) -> None:
        """Record one step (scan location, EIG, EIG map, timing) and its predictions, atomically.

        Step 0 is the prediction before any scan (``location=None``). ``probs`` holds one
        probability per run label, in the run's label order.
        """
        if location is not None:
            if len(location) != 2:
                raise StoreError(f"location must be (row, col) or None, got {location!r}")
            row, col = (int(v) for v in location)
        else:
            row = col = None
        p = _floats(probs, "probs")
        eig_grid = None
        if eig_map is not None:
            if hasattr(eig_map, "detach"):
                eig_map = eig_map.detach().cpu()
            eig_grid = _jsonable(np.asarray(eig_map, dtype=np.float64), "eig_map")
        with self._write() as s:
            found = s.execute(
                select(Session.status, Session.true_labels, Run.labels)
                .join(Run, Run.run_id == Session.run_id)
                .where(Session.id == session_id)
            ).one_or_none()
            if found is None:
                raise StoreError(f"unknown session id {session_id}")
            status, truth, labels = found
            if status != "running":
                raise StoreError(f"session {session_id} is already {status}; cannot log step {step}")
            if len(p) != len(labels):
                raise StoreError(f"probs has {len(p)} values but the run has {len(labels)} labels")
            if s.get(Step, (session_id, int(step))) is not None:
                raise StoreError(f"step {step} of session {session_id} is already logged")
            s.execute(
                insert(Step).values(
                    session_id=session_id,
                    step=int(step),
                    row=row,
                    col=col,
                    candidate=None if candidate is None else int(candidate),
                    eig=_finite_or_none(eig),
                    eig_map=eig_grid,
                    seconds=float(seconds),
                )
            )
            s.execute(
                insert(Prediction),
                [
                    {"session_id": session_id, "step": int(step), "label": label, "prob": prob, "truth": t}
                    for label, prob, t in zip(labels, p, truth, strict=True)
                ],
            )

    def save_array(self, session_id: int, step: int, name: str, array: Any) -> None:
        """Keep a numeric array (e.g. float16 completions) for report figures; replaces an
        array saved before under the same (session, step, name). Stored as raw little-endian
        bytes with its dtype and shape, never pickled."""
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        a = np.asarray(array)
        if a.dtype.kind not in "biufc":
            raise StoreError(f"array {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        with self._write() as s:
            if s.get(Session, session_id) is None:
                raise StoreError(f"unknown session id {session_id}")
            s.merge(
                Array(
                    session_id=session_id,
                    step=int(step),
                    name=str(name),
                    dtype=a.dtype.str,
                    shape=list(a.shape),
                    data=a.tobytes(),
                )
            )

    def finish_session(self, session_id: int, *, status: str = "done", error: str | None = None) -> None:
        """Mark a session ``done`` or ``failed`` (with the error message)."""
        if status not in ("done", "failed"):
            raise StoreError(f"unknown session status {status!r}; valid: done, failed")
        with self._write() as s:
            found = s.execute(
                update(Session)
                .where(Session.id == session_id)
                .values(
                    status=status,
                    error=None if error is None else str(error)[:MAX_ERROR_CHARS],
                    ended_at=_now(),
                )
            )
            if found.rowcount == 0:
                raise StoreError(f"unknown session id {session_id}")

    def finish_run(self, run_id: str, *, status: str, timings: dict[str, Any] | None = None) -> None:
        """Mark a run ``done``, ``failed`` or ``interrupted`` and store its timings."""
        if status not in RUN_STATUSES[1:]:
            raise StoreError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES[1:])}")
        values = {"status": status, "finished_at": _now()}
        if timings is not None:
            values["timings"] = _jsonable(timings, "timings")
        with self._write() as s:
            if s.execute(update(Run).where(Run.run_id == run_id).values(**values)).rowcount == 0:
                raise self._unknown_run(s, run_id)

    def resume_plan(self, run_id: str, *, retry_failed: bool = False) -> set[tuple[str, str]]:
        """Prepare ``run_id`` to be resumed; return the (image_id, policy) pairs to skip.

        Sessions started but never finished are deleted with their steps, predictions and
        arrays (and, with ``retry_failed``, the failed ones too), so running every pair not
        returned gives a run with no duplicated and no lost sessions. The run is marked
        ``running`` again.
        """
        stale_statuses = ["running", "failed"] if retry_failed else ["running"]
        with self._write() as s:
            if s.get(Run, run_id) is None:
                raise self._unknown_run(s, run_id)
            stale = select(Session.id).where(Session.run_id == run_id, Session.status.in_(stale_statuses))
            ids = list(s.scalars(stale))
            if ids:
                # children first: correct even where the database does not enforce ON DELETE CASCADE
                for table in (Prediction, Step, Array):
                    s.execute(delete(table).where(table.session_id.in_(ids)))
                s.execute(delete(Session).where(Session.id.in_(ids)))
            s.execute(update(Run).where(Run.run_id == run_id).values(status="running", finished_at=None))
            done = s.execute(select(Session.image_id, Session.policy).where(Session.run_id == run_id))
            return {(image_id, policy) for image_id, policy in done}

    # ---------------------------------------------------------------- records
    def get_run(self, run_id: str) -> RunRecord:
        """The run's full record; StoreError for an unknown id."""
        with self._read() as conn:
            row = conn.execute(select(Run).where(Run.run_id == run_id)).mappings().one_or_none()
            if row is None:
                raise self._unknown_run(conn, run_id)
        values = {c.key: row[c.key] for c in Run.__table__.columns}
        values["created_at"] = _utc(values["created_at"])
        values["finished_at"] = _utc(values["finished_at"])
        values["labels"] = tuple(values["labels"])
        return RunRecord(**values)

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The resolved config the run was started with."""
        return self.get_run(run_id).config

    def latest_run_id(self) -> str | None:
        """The most recently created run, or None for an empty store."""
        with self._read() as conn:
            return conn.scalar(select(Run.run_id).order_by(Run.created_at.desc(), Run.run_id.desc()).limit(1))

    def get_session(self, session_id: int) -> SessionRecord:
        """One session's record; StoreError for an unknown id."""
        with self._read() as conn:
            row = conn.execute(select(Session).where(Session.id == session_id)).mappings().one_or_none()
        if row is None:
            raise StoreError(f"unknown session id {session_id}")
        values = {c.key: row[c.key] for c in Session.__table__.columns}
        values["true_labels"] = tuple(math.nan if v is None else float(v) for v in values["true_labels"])
        values["started_at"] = _utc(values["started_at"])
        values["ended_at"] = _utc(values["ended_at"])
        return SessionRecord(**values)

    def load_arrays(self, session_id: int) -> dict[tuple[int, str], np.ndarray]:
        """Every array saved for a session: ``{(step, name): array}`` in native byte order."""
        with self._read() as conn:
            if conn.scalar(select(Session.id).where(Session.id == session_id)) is None:
                raise StoreError(f"unknown session id {session_id}")
            rows = conn.execute(
                select(Array.step, Array.name, Array.dtype, Array.shape, Array.data)
                .where(Array.session_id == session_id)
                .order_by(Array.step, Array.name)
            ).all()
        out = {}
        for step, name, dtype, shape, data in rows:
            dt = np.dtype(dtype)
            out[(step, name)] = np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
        return out

    # ---------------------------------------------------------------- read API (DataFrames)
    def runs(self) -> pd.DataFrame:
        """One row per run, oldest first: ``run_id, created_at, finished_at, status, sampler,
        sampler_sha256, classifier, classifier_sha256, seed, code_version, n_sessions, n_done,
        n_failed`` (timestamps UTC). Full configs: :meth:`get_run`."""
        counts = (
            select(
                Session.run_id,
                func.count().label("n_sessions"),
                func.sum(case((Session.status == "done", 1), else_=0)).label("n_done"),
                func.sum(case((Session.status == "failed", 1), else_=0)).label("n_failed"),
            )
            .group_by(Session.run_id)
            .subquery()
        )
        stmt = (
            select(
                Run.run_id,
                Run.created_at,
                Run.finished_at,
                Run.status,
                Run.sampler,
                Run.sampler_sha256,
                Run.classifier,
                Run.classifier_sha256,
                Run.seed,
                Run.code_version,
                func.coalesce(counts.c.n_sessions, 0).label("n_sessions"),
                func.coalesce(counts.c.n_done, 0).label("n_done"),
                func.coalesce(counts.c.n_failed, 0).label("n_failed"),
            )
            .outerjoin(counts, counts.c.run_id == Run.run_id)
            .order_by(Run.created_at, Run.run_id)
        )
        with self._read() as conn:
            df = self._frame(conn, stmt)
        return _tidy(
            df, ints=("seed", "n_sessions", "n_done", "n_failed"), times=("created_at", "finished_at")
        )

    def sessions(self, run_id: str | None = None) -> pd.DataFrame:
        """One row per session (every status): ``session_id, run_id, image_id, image_index,
        policy, status, error, started_at, ended_at, n_steps, seconds, true_labels`` (a list in
        the run's label order, NaN = unknown). ``run_id=None``: every run."""
        per_session = (
            select(
                Step.session_id,
                func.count().label("n_steps"),
                func.sum(Step.seconds).label("seconds"),
            )
            .group_by(Step.session_id)
            .subquery()
        )
        stmt = (
            select(
                Session.id.label("session_id"),
                Session.run_id,
                Session.image_id,
                Session.image_index,
                Session.policy,
                Session.status,
                Session.error,
                Session.started_at,
                Session.ended_at,
                func.coalesce(per_session.c.n_steps, 0).label("n_steps"),
                func.coalesce(per_session.c.seconds, 0.0).label("seconds"),
                Session.true_labels,
            )
            .outerjoin(per_session, per_session.c.session_id == Session.id)
            .order_by(Session.id)
        )
        with self._read() as conn:
            if run_id is not None:
                self._check_run(conn, run_id)
                stmt = stmt.where(Session.run_id == run_id)
            df = self._frame(conn, stmt)
        import pandas as pd

        truth = [[math.nan if v is None else float(v) for v in t] for t in df["true_labels"]]
        df["true_labels"] = pd.Series(truth, index=df.index, dtype=object)
        return _tidy(
            df,
            ints=("session_id", "image_index", "n_steps"),
            floats=("seconds",),
            times=("started_at", "ended_at"),
        )

    def steps(
        self, run_id: str | None = None, *, status: str | None = "done", eig_map: bool = False
    ) -> pd.DataFrame:
        """One row per step: ``run_id, session_id, policy, image_id, step, row, col, candidate,
        eig, seconds`` (+ ``eig_map`` as nested lists with ``eig_map=True``). Step 0 has no scan
        (row/col/candidate/eig missing). Only sessions with ``status`` (default ``done``; None = all)."""
        columns = [
            Session.run_id,
            Step.session_id,
            Session.policy,
            Session.image_id,
            Step.step,
            Step.row,
            Step.col,
            Step.candidate,
            Step.eig,
            Step.seconds,
        ]
        if eig_map:
            columns.append(Step.eig_map)
        stmt = (
            select(*columns).join(Session, Session.id == Step.session_id).order_by(Step.session_id, Step.step)
        )
        with self._read() as conn:
            stmt = self._filter(conn, stmt, run_id, status)
            df = self._frame(conn, stmt)
        return _tidy(
            df,
            ints=("session_id", "step"),
            nullable_ints=("row", "col", "candidate"),
            floats=("eig", "seconds"),
        )

    def predictions(
        self, run_id: str | None = None, label: str | None = None, *, status: str | None = "done"
    ) -> pd.DataFrame:
        """The long table: one row per (session, step, label): ``run_id, session_id, policy,
        image_id, step, label, prob, truth`` (truth NaN = unknown), labels in the run's order.
        ``label`` keeps one label; only sessions with ``status`` (default ``done``; None = all)."""
        stmt = (
            select(
                Session.run_id,
                Prediction.session_id,
                Session.policy,
                Session.image_id,
                Prediction.step,
                Prediction.label,
                Prediction.prob,
                Prediction.truth,
            )
            .join(Session, Session.id == Prediction.session_id)
            .order_by(Prediction.session_id, Prediction.step, Prediction.label)
        )
        with self._read() as conn:
            stmt = self._filter(conn, stmt, run_id, status)
            if label is not None:
                self._check_label(conn, run_id, label)
                stmt = stmt.where(Prediction.label == label)
            df = self._frame(conn, stmt)
            if label is None and len(df):  # labels in each run's own order, not alphabetical
                runs = conn.execute(
                    select(Run.run_id, Run.labels).where(Run.run_id.in_(df["run_id"].unique()))
                )
                order = {(run, name): i for run, labels in runs for i, name in enumerate(labels)}
                key = [order.get(pair, -1) for pair in zip(df["run_id"], df["label"], strict=True)]
                df = df.assign(_order=key).sort_values(["session_id", "step", "_order"], kind="stable")
                df = df.drop(columns="_order").reset_index(drop=True)
        return _tidy(df, ints=("session_id", "step"), floats=("prob", "truth"))

    # ---------------------------------------------------------------- helpers
    def _check_run(self, conn: Connection, run_id: str) -> None:
        if conn.scalar(select(Run.run_id).where(Run.run_id == run_id)) is None:
            raise self._unknown_run(conn, run_id)

    def _filter(self, conn: Connection, stmt, run_id: str | None, status: str | None):
        if run_id is not None:
            self._check_run(conn, run_id)
            stmt = stmt.where(Session.run_id == run_id)
        if status is not None:
            if status not in SESSION_STATUSES:
                raise StoreError(f"unknown session status {status!r}; valid: {', '.join(SESSION_STATUSES)}")
            stmt = stmt.where(Session.status == status)
        return stmt

    def _check_label(self, conn: Connection, run_id: str | None, label: str) -> None:
        stmt = select(Run.labels)
        if run_id is not None:
            stmt = stmt.where(Run.run_id == run_id)
        known: list[str] = []
        for labels in conn.scalars(stmt):
            known += [name for name in labels if name not in known]
        if label not in known:
            raise StoreError(f"unknown label {label!r}; valid: {', '.join(known) or '(no runs)'}")

    @staticmethod
    def _frame(conn: Connection, stmt) -> pd.DataFrame:
        import pandas as pd

        result = conn.execute(stmt)
        return pd.DataFrame(result.all(), columns=list(result.keys()))

    def _run_labels(self, s: OrmSession, run_id: str) -> list[str]:
        labels = s.scalar(select(Run.labels).where(Run.run_id == run_id))
        if labels is None:
            raise self._unknown_run(s, run_id)
        return labels

    @staticmethod
    def _unknown_run(conn: OrmSession | Connection, run_id: str) -> StoreError:
        recent = list(conn.scalars(select(Run.run_id).order_by(Run.created_at.desc()).limit(5)))
        hint = f"; recent runs: {', '.join(recent)}" if recent else "; the store has no runs"
        return StoreError(f"unknown run id {run_id!r}{hint}")


def _tidy(
    df: pd.DataFrame,
    *,
    ints: Sequence[str] = (),
    nullable_ints: Sequence[str] = (),
    floats: Sequence[str] = (),
    times: Sequence[str] = (),
) -> pd.DataFrame:
    """The same dtypes on every backend and for empty results: int64, Int64 (nullable),
    float64 (NaN for NULL), UTC timestamps, and pandas' string dtype for text."""
    import pandas as pd

    for name in df.columns:
        if name in ints:
            df[name] = df[name].astype("int64")
        elif name in nullable_ints:
            df[name] = df[name].astype("Int64")
        elif name in floats:
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
        elif name in times:
            df[name] = pd.to_datetime(df[name], utc=True)
        elif df[name].dtype == object and all(isinstance(v, str) or v is None for v in df[name]):
            df[name] = df[name].astype("str")
    return df
