"""Alembic environment of the session store.

``Store.open`` runs ``upgrade head`` with its own connection (``config.attributes["connection"]``).
From a shell, for a new revision after changing boed/store/models.py::

    .venv/bin/alembic -c boed/store/migrations/alembic.ini -x url=sqlite:///runs/dev.db upgrade head
    .venv/bin/alembic -c boed/store/migrations/alembic.ini -x url=sqlite:///runs/dev.db \
        revision --autogenerate -m "what changed"

SQLite cannot ALTER most things in place, so migrations run in batch mode there.
"""

from __future__ import annotations

from alembic import context

from boed.store.engine import make_engine
from boed.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = make_engine(url or None)
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; pass -x url=... instead")
run_migrations_online()
