"""Shared fixtures: a real loadmgrd process on a temporary socket, driven by the real loadmgrctl."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PYTHON = sys.executable
READY_TIMEOUT = 30.0


@dataclass
class Daemon:
    """A loadmgrd started as a process with its own config, database and socket."""

    home: Path
    config_file: Path
    socket: Path
    database: Path
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stderr_path = self.home / "loadmgrd.stderr"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOADMGR_")}
        env["LOADMGR_CONFIG"] = str(self.config_file.parent)
        env.update(extra)
        return env

    def start(self, *, expect_ready: bool = True) -> subprocess.Popen[bytes]:
        """Start loadmgrd and wait for its sd_notify READY=1 (no sleeping)."""
        notify_path = self.home / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(READY_TIMEOUT)
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "loadmgrd", "--config", str(self.config_file)],
            env=self.env(NOTIFY_SOCKET=str(notify_path)),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        try:
            if expect_ready:
                while True:
                    try:
                        message = notify.recv(4096).decode()
                    except TimeoutError:
                        raise AssertionError(f"loadmgrd did not become ready:\n{self.log()}") from None
                    if "READY=1" in message:
                        break
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)
        return self.proc

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def ctl(self, *args: str, input: str | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real loadmgrctl against this daemon (optionally as another user via setpriv)."""
        command = [PYTHON, "-m", "loadmgrctl", "--socket", str(self.socket), *args]
        if user is not None:
            command = as_user(user, command)
        return subprocess.run(
            command, env=self.env(), capture_output=True, text=True, input=input, timeout=60, check=False
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.ctl(*args, input=input)
        assert result.returncode == 0, f"loadmgrctl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def rpc(self, method: str, params: Any = None, *, request_id: Any = 1) -> dict[str, Any]:
        """One raw JSON-RPC request on a fresh connection; the decoded reply."""
        line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id})
        return json.loads(raw_exchange(self.socket, line.encode() + b"\n"))


def raw_exchange(path: Path, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send ``payload`` and read one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def as_user(user: str, command: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *command]


def make_daemon(extra_config: str = "") -> Daemon:
    """A daemon home under /tmp with a short path (Unix socket paths are limited to 107 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="lm-"))
    home.chmod(0o755)  # other users (nobody) must reach the socket
    config = home / "etc" / "loadmgr_config.cfg"
    config.parent.mkdir()
    config.write_text(
        textwrap.dedent(
            f"""\
            [repository]
            database = {home}/state/loadmgr.db

            [daemon]
            socket = {home}/run/loadmgrd.sock
            admin_group = loadmgr-test-admins

            [logging]
            location = {home}/logs
            """
        )
        + textwrap.dedent(extra_config)
    )
    return Daemon(home, config, home / "run" / "loadmgrd.sock", home / "state" / "loadmgr.db")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One running daemon per test module."""
    d = make_daemon()
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture
def fresh_daemon() -> Iterator[Daemon]:
    """A daemon of the test's own (for tests that stop, kill or reconfigure it)."""
    d = make_daemon()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
