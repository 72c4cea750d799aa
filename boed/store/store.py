"""The session store: the write path used by the simulation and the read API for research scripts.

``Store`` is composed of the parts along the store's seams: the records and value converters
(records.py), the transactions (base.py), the write path (writer.py), the read API with pandas
DataFrames (reader.py) and the migrations (migrate.py). Every method opens its own short
transaction (commit on success, rollback on any error) and returns plain values, frozen
dataclasses or pandas DataFrames, never ORM rows, so a ``Store`` can be shared by a whole run and
several processes can write to one database at once (see engine.py for SQLite).
"""

from __future__ import annotations

import os

from sqlalchemy.exc import DBAPIError

from boed.store.engine import make_engine
from boed.store.errors import StoreError
from boed.store.migrate import MIGRATIONS, upgrade
from boed.store.reader import ReadAPI
from boed.store.records import (
    RUN_KINDS,
    RUN_STATUSES,
    SESSION_STATUSES,
    RunRecord,
    SessionRecord,
    first_line,
    new_run_id,
)
from boed.store.writer import WritePath

__all__ = [
    "MIGRATIONS",
    "RUN_KINDS",
    "RUN_STATUSES",
    "SESSION_STATUSES",
    "RunRecord",
    "SessionRecord",
    "Store",
    "new_run_id",
]


class Store(WritePath, ReadAPI):
    """A session store on any SQLAlchemy database. Open with :meth:`Store.open`.

    One ``Store`` serves a whole run (threads may share it); each process opens its own (do
    not carry an open Store across ``fork``).

    Write path (the simulation): :meth:`create_run`, :meth:`start_session`, :meth:`log_step`,
    :meth:`save_array`, :meth:`finish_session`, :meth:`finish_run`, :meth:`resume_plan`.
    Read API (research scripts): :meth:`runs`, :meth:`sessions`, :meth:`steps`,
    :meth:`predictions` (pandas DataFrames), :meth:`get_run`, :meth:`get_session`,
    :meth:`run_config`, :meth:`load_arrays`. Errors the user can fix raise :class:`StoreError`.
    """

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
                upgrade(engine)
            except StoreError:
                engine.dispose()
                raise
            except DBAPIError as exc:
                engine.dispose()
                raise StoreError(f"cannot open database {store.url}: {first_line(exc)}") from None
        return store

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"
