"""A throwaway PostgreSQL server (initdb + pg_ctl on a unix socket in a temporary folder, run as a
non-root user), for the store's contract tests, the sharded-simulation tests and
``benchmarks/scaleout.py``.

In tests: the session-scoped ``postgres_server`` fixture (imported by ``tests/conftest.py``), which
skips and says why without the server binaries (`.ci/run` installs them). Elsewhere:
``with running_server() as server: url = server.new_url()``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here (no binaries, or root without a user to run it as)."""


def pg_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (``pg_config --bindir``, else Debian's layout)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: use the ``postgres`` (or ``nobody``) account then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    raise Unavailable("running as root and no postgres/nobody account to start PostgreSQL as")


class PostgresServer:
    """A running throwaway server; :meth:`new_url` creates an empty schema."""

    def __init__(self, bindir: Path, root: Path, user: str | None, max_connections: int = 50):
        self.bindir, self.root, self.user = bindir, root, user
        self.data, self.socket = root / "data", root / "socket"
        self.max_connections = max_connections
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
        options = f"-k {self.socket} -c listen_addresses='' -F -c max_connections={self.max_connections}"
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


@contextmanager
def running_server(max_connections: int = 50) -> Iterator[PostgresServer]:
    """Start a server in a new temporary folder, yield it, stop it and remove the folder.

    Raises :class:`Unavailable` when no server can be started here.
    """
    bindir = pg_bindir()
    if bindir is None:
        raise Unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; `apt-get install postgresql`"
        )
    user = server_user()
    # short path: a unix socket path must stay under ~100 characters
    root = Path(tempfile.mkdtemp(prefix="boed-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chmod(root, 0o755)
    server = PostgresServer(bindir, root, user, max_connections)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway server per test session (skips, saying why, where none can start)."""
    try:
        with running_server() as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))
