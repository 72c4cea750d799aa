"""Store backends for the contract tests: an SQLite file per test, and a throwaway PostgreSQL
server (initdb + pg_ctl on a unix socket in a temporary folder, one per test session, run as a
non-root user) with a fresh database per test. Without the server binaries the PostgreSQL cases
skip and say why; `.ci/run` installs them."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from boed.store import Store


def _pg_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: use the ``postgres`` (or ``nobody``) account then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    pytest.skip("running as root and no postgres/nobody account to start PostgreSQL as")


class PostgresServer:
    """A running throwaway server; :meth:`new_url` creates an empty database."""

    def __init__(self, bindir: Path, root: Path, user: str | None):
        self.bindir, self.root, self.user = bindir, root, user
        self.data, self.socket = root / "data", root / "socket"
        self._counter = itertools.count()

    def _run(self, *args: str) -> None:
        kwargs = {"user": self.user} if self.user else {}
        result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=self.root, **kwargs)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}{log}")

    def start(self) -> None:
        self.socket.mkdir()
        if self.user:
            info = pwd.getpwnam(self.user)
            for path in (self.root, self.socket):
                os.chown(path, info.pw_uid, info.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "boed", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
        options = f"-k {self.socket} -c listen_addresses='' -F -c max_connections=50"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "start")  # fmt: skip
        self._run(str(self.bindir / "createdb"), "-h", str(self.socket), "-U", "boed", "boed")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, schema: str | None = None) -> str:
        url = f"postgresql+psycopg://boed@/boed?host={self.socket}"
        return url if schema is None else f"{url}&options=-csearch_path%3D{schema}"

    def new_url(self) -> str:
        """A URL whose tables go to a new, empty schema (cheaper than a database per test)."""
        import psycopg

        name = f"t{next(self._counter)}"
        with psycopg.connect(f"host={self.socket} user=boed dbname=boed", autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `apt-get install postgresql`")
    user = _server_user()
    # short path: a unix socket path must stay under ~100 characters
    root = Path(tempfile.mkdtemp(prefix="boed-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chmod(root, 0o755)
    server = PostgresServer(bindir, root, user)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            pass
        shutil.rmtree(root, ignore_errors=True)


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
