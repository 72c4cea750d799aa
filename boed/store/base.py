"""The store's base: an engine, its short transactions and the errors they raise.

Every method of the store opens its own short transaction (commit on success, rollback on any
error), so one store can be shared by a whole run and several processes can write to one
database at once (see engine.py for SQLite). The write path (writer.py) and the read API
(reader.py) build on :class:`StoreBase`; store.py composes them into ``Store``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session as OrmSession

from boed.store.engine import READ_OPTIONS, describe
from boed.store.errors import StoreError, StoreWriteError
from boed.store.models import Run
from boed.store.records import first_line


class StoreBase:
    """An engine with write and read transactions; see :class:`boed.store.Store`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._reader = engine.execution_options(**READ_OPTIONS)

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return describe(self.engine.url)

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def _guard(self, write: bool = False) -> Iterator[None]:
        """Database errors as one-line StoreErrors; in a write, as :class:`StoreWriteError`."""
        error = StoreWriteError if write else StoreError
        try:
            yield
        except IntegrityError as exc:
            raise error(f"the database refused the write: {first_line(exc)}") from None
        except DBAPIError as exc:
            raise error(f"database error on {self.url}: {first_line(exc)}") from None

    @contextmanager
    def _write(self) -> Iterator[OrmSession]:
        """A write transaction (BEGIN IMMEDIATE on SQLite): commits on success, else rolls back."""
        with (
            self._guard(write=True),
            OrmSession(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction, rolled back at the end."""
        with self._guard(), self._reader.connect() as conn, conn.begin():
            yield conn

    def _check_run(self, conn: Connection, run_id: str) -> None:
        if conn.scalar(select(Run.run_id).where(Run.run_id == run_id)) is None:
            raise self._unknown_run(conn, run_id)

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
