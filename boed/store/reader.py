"""The store's read API, for research scripts: records, arrays and pandas DataFrames."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, case, func, select

from boed.store.base import StoreBase
from boed.store.errors import StoreError
from boed.store.models import Array, Prediction, Run, Session, Step
from boed.store.records import SESSION_STATUSES, RunRecord, SessionRecord, utc

if TYPE_CHECKING:  # pandas is imported by the read API only: writer processes start faster
    import pandas as pd


class ReadAPI(StoreBase):
    """Read API (research scripts): :meth:`runs`, :meth:`sessions`, :meth:`steps`,
    :meth:`predictions` (pandas DataFrames), :meth:`get_run`, :meth:`get_session`,
    :meth:`run_config`, :meth:`latest_run_id`, :meth:`load_arrays`."""

    # ---------------------------------------------------------------- records
    def get_run(self, run_id: str) -> RunRecord:
        """The run's full record; StoreError for an unknown id."""
        with self._read() as conn:
            row = conn.execute(select(Run).where(Run.run_id == run_id)).mappings().one_or_none()
            if row is None:
                raise self._unknown_run(conn, run_id)
        values = {c.key: row[c.key] for c in Run.__table__.columns}
        values["created_at"] = utc(values["created_at"])
        values["finished_at"] = utc(values["finished_at"])
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
        if values["findings"] is not None:
            values["findings"] = tuple(
                {"label": f["label"], "box": tuple(f["box"])} for f in values["findings"]
            )
        values["started_at"] = utc(values["started_at"])
        values["ended_at"] = utc(values["ended_at"])
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
        """One row per run, oldest first: ``run_id, created_at, finished_at, status, kind, target,
        sampler, sampler_sha256, classifier, classifier_sha256, seed, code_version, n_sessions,
        n_done, n_failed, error`` (timestamps UTC; ``kind``: simulation or acquisition). Full
        configs: :meth:`get_run`."""
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
                Run.kind,
                Run.target,
                Run.sampler,
                Run.sampler_sha256,
                Run.classifier,
                Run.classifier_sha256,
                Run.seed,
                Run.code_version,
                func.coalesce(counts.c.n_sessions, 0).label("n_sessions"),
                func.coalesce(counts.c.n_done, 0).label("n_done"),
                func.coalesce(counts.c.n_failed, 0).label("n_failed"),
                Run.error,
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
        the run's label order, NaN = unknown), ``findings`` (the image's located findings, a list
        of ``{"label", "box": [r0, c0, r1, c1]}``; None where the dataset gives no locations).
        ``run_id=None``: every run."""
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
                Session.findings,
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
        located = pd.Series(list(df["findings"]), index=df.index, dtype=object)
        df = _tidy(
            df.drop(columns="findings"),
            ints=("session_id", "image_index", "n_steps"),
            floats=("seconds",),
            times=("started_at", "ended_at"),
        )
        df["findings"] = located  # lists or None (never text, which _tidy makes of all-None columns)
        return df

    def steps(
        self, run_id: str | None = None, *, status: str | None = "done", eig_map: bool = False
    ) -> pd.DataFrame:
        """One row per step: ``run_id, session_id, policy, image_id, step, row, col, candidate,
        eig, seconds, eig_se, ess, target_observed, target_completions`` (+ ``eig_map`` as nested
        lists with ``eig_map=True``). Step 0 has no scan (row/col/candidate/eig missing); the four
        diagnostics of the decision are missing where no EIG was estimated. Only sessions with
        ``status`` (default ``done``; None = all)."""
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
            Step.eig_se,
            Step.ess,
            Step.target_observed,
            Step.target_completions,
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
            floats=("eig", "seconds", "eig_se", "ess", "target_observed", "target_completions"),
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
