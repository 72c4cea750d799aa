"""Store backends for the contract tests: an SQLite file per test, and the throwaway PostgreSQL
server of ``tests/pg.py`` (one per test session, fixture ``postgres_server`` from
``tests/conftest.py``) with a fresh schema per test. Without the server binaries the PostgreSQL
cases skip and say why; `.ci/run` installs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from boed.store import Store


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A URL for an empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_server").new_url()


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        yield opened
