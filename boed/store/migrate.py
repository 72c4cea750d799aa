"""Bringing a database to the newest schema with the Alembic migrations in migrations/."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from boed.store.engine import READ_OPTIONS, describe
from boed.store.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x626F6564  # "boed": the PostgreSQL advisory lock taken while migrating


def alembic_config():
    """An Alembic ``Config`` for the store's migrations (no ini file needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine``; a no-op read when the schema is current."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    with engine.execution_options(**READ_OPTIONS).connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return
    unknown = current - {rev.revision for rev in script.walk_revisions()}
    if unknown:
        raise StoreError(
            f"database {describe(engine.url)} has schema revision {', '.join(sorted(unknown))}, "
            "which this version of boed does not know (written by a newer version?)"
        )
    # one transaction, serialised (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL):
    # processes opening a new database at once queue up and the later ones find it current
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
