"""Bringing a database to the newest schema with the Alembic migrations in migrations/."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

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
        # only now, serialised: another process may have created the schema since the read above
        if not MigrationContext.configure(conn).get_current_heads():
            _refuse_unversioned_tables(conn, engine)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


# columns each revision added to an existing table (a table's columns at a revision are those of
# the models minus what later revisions added)
ADDED_COLUMNS = {
    "0002": {"runs": {"target", "error"}},
    "0003": {"runs": {"kind"}},
    "0004": {"steps": {"eig_se", "ess", "target_observed", "target_completions"}},
    "0005": {"sessions": {"findings"}},
}


def _columns_at(revision: str) -> dict[str, set[str]]:
    from boed.store.models import Base

    tables = {name: {c.name for c in table.columns} for name, table in Base.metadata.tables.items()}
    for later, added in ADDED_COLUMNS.items():
        if later > revision:
            for name, columns in added.items():
                tables[name] -= columns
    return tables


def _refuse_unversioned_tables(conn: Connection, engine: Engine) -> None:
    """A database with the store's tables but no ``alembic_version`` was made before the store had
    migrations (``create_all``): upgrading would fail with "table runs already exists". Say which
    revision its tables match and the one command that records it."""
    from boed.store.models import Base

    names = set(inspect(conn).get_table_names())
    ours = names & set(Base.metadata.tables)
    if not ours:
        return
    found = {name: {c["name"] for c in inspect(conn).get_columns(name)} for name in ours}
    url = describe(engine.url)
    match = [rev for rev in sorted(ADDED_COLUMNS | {"0001": {}}, reverse=True) if found == _columns_at(rev)]
    if not match:
        raise StoreError(
            f"database {url} has tables named like the store's ({', '.join(sorted(ours))}) but not its "
            "schema and no alembic_version; use another database"
        )
    raise StoreError(
        f"database {url} was created before the store had migrations (tables, no alembic_version); "
        f"its tables match schema revision {match[0]}: record that once with `alembic -c "
        f"{MIGRATIONS / 'alembic.ini'} -x url='{url}' "
        f"stamp {match[0]}` (or boed.store.migrate.stamp(url, '{match[0]}')), then open it again"
    )


def stamp(url, revision: str) -> None:
    """Record ``revision`` as the schema of the database at ``url`` without running migrations
    (``alembic stamp``): for a database created before the store had migrations, after checking
    that its tables match that revision (the error of :func:`upgrade` says which one)."""
    from alembic import command

    from boed.store.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.stamp(config, revision)
    finally:
        engine.dispose()
