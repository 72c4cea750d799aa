"""Opening a store: URLs, the SQLite recipe, migrations, and clear errors for bad databases."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from boed.store import Store, StoreError
from boed.store.engine import resolve_url
from boed.store.store import MIGRATIONS

TABLES = {"alembic_version", "runs", "sessions", "steps", "predictions", "arrays"}


def test_default_is_runs_boed_db_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store.open() as store:
        assert store.url == "sqlite:///runs/boed.db"
        assert set(inspect(store.engine).get_table_names()) == TABLES
    assert (tmp_path / "runs" / "boed.db").is_file()


def test_a_plain_path_is_an_sqlite_file_and_its_folder_is_created(tmp_path):
    path = tmp_path / "deep" / "er" / "x.db"
    with Store.open(path) as store:
        assert store.engine.dialect.name == "sqlite"
    assert path.is_file()
    assert resolve_url(str(path)).database == str(path)


def test_sqlite_connections_use_the_recipe(tmp_path):
    with Store.open(tmp_path / "x.db") as store, store.engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in
                  ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}  # fmt: skip
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 60000}


def test_writes_begin_immediate_and_reads_do_not(tmp_path):
    with Store.open(tmp_path / "x.db") as store:
        seen: list[str] = []
        from sqlalchemy import event

        event.listen(store.engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
        run_id = store.create_run(
            {}, sampler="s", sampler_sha256=None, classifier="c", classifier_sha256=None,
            dataset={}, seed=0, labels=["Any"], code_version="0",
        )  # fmt: skip
        assert seen[0] == "BEGIN IMMEDIATE"
        seen.clear()
        store.get_run(run_id)
        assert seen[0] == "BEGIN"


def test_memory_database_works(tmp_path):
    with Store.open("sqlite://") as store:
        assert store.runs().empty


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql+psycopg://nobody@/nodb?host=/nonexistent-socket-dir", "cannot open database postgresql"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/nodb", "cannot open database .*Connection refused"),
        ("nosuchdb://host/db", "cannot use database URL nosuchdb://host/db"),
        ("postgresql+psycopg://u:pw@host:notaport/db", "malformed database URL|cannot use database URL"),
        ("   ", "empty database URL"),
    ],
)
def test_bad_urls_give_one_clear_error(url, message):
    with pytest.raises(StoreError, match=message):
        Store.open(url)


def test_password_is_hidden_in_errors():
    with pytest.raises(StoreError) as info:
        Store.open("postgresql+psycopg://me:s3cret@127.0.0.1:1/nodb")
    assert "s3cret" not in str(info.value) and "me:***@" in str(info.value)


def test_not_a_database_file(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database .*junk.db: .*not a database"):
        Store.open(path)


def test_schema_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "x.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="schema revision 9999, which this version of boed does not know"):
        Store.open(path)


def test_migrations_go_down_and_up_again(tmp_path):
    path = tmp_path / "x.db"
    with Store.open(path) as store:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(inspect(store.engine).get_table_names()) == {"alembic_version"}
    with Store.open(path) as store:
        assert set(inspect(store.engine).get_table_names()) == TABLES
