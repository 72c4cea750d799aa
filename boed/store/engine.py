"""Engines for the store: URL resolution, the SQLite recipe, and clear errors for bad URLs.

SQLite (FACTS.md, measured with 8 writer processes): Python's default transaction handling lost
1,394 of 1,600 read-modify-write updates, plain ``BEGIN`` raised "database is locked"; turning the
driver's own transaction handling off and starting every transaction with ``BEGIN IMMEDIATE`` (the
recipe in SQLAlchemy's sqlite dialect docs) lost none. Each connection also gets WAL,
``synchronous=NORMAL``, ``foreign_keys=ON`` and a busy timeout, so writers wait instead of failing.
Read-only work (``READ_OPTIONS``) starts with a plain ``BEGIN``: under WAL readers never block.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from boed.store.errors import StoreError

DEFAULT_PATH = Path("runs") / "boed.db"
BUSY_TIMEOUT_MS = 60_000
READ_OPTIONS = {"boed_read_only": True}


def resolve_url(url: str | os.PathLike | None = None) -> URL:
    """The SQLAlchemy URL for ``url``: ``None`` = ``runs/boed.db``; a plain path = an SQLite file."""
    if url is None:
        url = DEFAULT_PATH
    text = os.fspath(url)
    if "://" not in text:
        if not text.strip():
            raise StoreError("empty database URL")
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        return make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"malformed database URL {text!r}: {exc}") from None


def describe(url: URL) -> str:
    """The URL without its password, for messages."""
    return url.render_as_string(hide_password=True)


def _is_sqlite_file(url: URL) -> bool:
    return (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not (url.database or "").startswith("file:")
    )


def make_engine(url: str | os.PathLike | None = None) -> Engine:
    """An engine for ``url`` (see :func:`resolve_url`) with the SQLite recipe applied."""
    sa_url = resolve_url(url)
    kwargs: dict = {}
    if sa_url.get_backend_name() == "postgresql" and sa_url.get_driver_name() in ("psycopg", "psycopg2"):
        kwargs["connect_args"] = {"connect_timeout": 10}  # fail fast on an unreachable host
    if _is_sqlite_file(sa_url):
        path = Path(sa_url.database)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the database {describe(sa_url)}: {exc}") from None
    try:
        engine = create_engine(sa_url, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"cannot use database URL {describe(sa_url)}: {exc}") from None
    except ImportError as exc:
        raise StoreError(f"the driver for {describe(sa_url)} is not installed: {exc}") from None
    if engine.dialect.name == "sqlite":
        _apply_sqlite_recipe(engine)
    return engine


def _apply_sqlite_recipe(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        # take transactions out of the driver's hands: the "begin" event below starts them
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        read_only = connection.get_execution_options().get("boed_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
