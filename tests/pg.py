"""A throw-away PostgreSQL server for the target-database tests (initdb + pg_ctl in a temp dir).

The server listens on a Unix socket only (``listen_addresses=''``) in a directory of its own,
with ``trust`` authentication for the ``postgres`` role. PostgreSQL refuses to run as root, so
as root the cluster is created and run as the ``postgres`` user (``runuser``), or as ``nobody``
(``setpriv``) when that user does not exist.

One server serves the whole test session: every conftest that offers the fixture shares it
through ``acquire``/``release`` (reference counted), and it is stopped with ``pg_ctl stop -m
fast`` when the last user lets go (or at interpreter exit, whatever happens).

No PostgreSQL server binaries at all is a test failure, not a skip: CI installs them (.ci/run).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
DATABASE = "testdb"
# The URL form the docs give operators (SQLAlchemy 2.1 + psycopg 3, the postgresql extra).
SCHEME = "postgresql"


def find_bindir() -> Path | None:
    """The directory of initdb/pg_ctl/pg_isready: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        bindir = Path(on_path).resolve().parent
        if all((bindir / tool).exists() for tool in ("pg_ctl", "pg_isready", "postgres")):
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_of)
    return Path(candidates[-1]).parent if candidates else None


def _version_of(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def free_port() -> int:
    """A TCP port nothing listens on right now (it also names the server's Unix socket file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that drops root, and the user the cluster belongs to (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        nobody = pwd.getpwnam("nobody")
        return [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--",
        ], "nobody"
    return ["runuser", "-u", "postgres", "--"], "postgres"


class PostgresServer:
    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            pytest.fail(
                "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under "
                "/usr/lib/postgresql/*/bin: install the postgresql package (.ci/run does) to run the "
                "target-database tests",
                pytrace=False,
            )
        self.bindir = bindir
        self.prefix, self.owner = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.sockdir.mkdir()
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.started = False
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            for path in (self.root, self.sockdir):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _cmd(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            cwd=self.root,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.log()}"
            )
        return result

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        self._cmd(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"
        )
        options = f"-c listen_addresses='' -k {self.sockdir} -p {self.port} -c fsync=off"
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start")
        self.started = True
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            ready = self._cmd("pg_isready", "-h", str(self.sockdir), "-p", str(self.port), check=False)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not become ready:\n{ready.stdout}{self.log()}")
            time.sleep(0.1)  # pg_isready polling: the server offers nothing to wait on
        self.create_database(DATABASE)

    def stop(self) -> None:
        if self.started:
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = DATABASE, *, scheme: str = SCHEME) -> str:
        """A SQLAlchemy URL for ``database`` over the server's Unix socket."""
        return f"{scheme}://postgres@/{database}?host={self.sockdir}&port={self.port}"

    def create_database(self, name: str) -> str:
        """Create ``name`` (if absent) and return its URL."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)


_lock = threading.Lock()
_server: PostgresServer | None = None
_users = 0


def acquire() -> PostgresServer:
    """The session's server (started on first use)."""
    global _server, _users
    with _lock:
        if _server is None:
            server = PostgresServer()
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            _server = server
            atexit.register(server.stop)
        _users += 1
        return _server


def release() -> None:
    global _server, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _server is not None:
            _server.stop()
            _server = None
            _users = 0


def postgres_server() -> Iterator[PostgresServer]:
    """Body of the session-scoped ``pg_server`` fixture of the conftests."""
    server = acquire()
    try:
        yield server
    finally:
        release()
