"""The daemon's life: start-up, locking, the socket file, signals, configuration errors, restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmgrd.repository import load_migrations
from tests.conftest import PYTHON, Daemon, make_daemon

SCHEMA_VERSION = len(load_migrations())

EXIT_TIMEOUT = 30.0
JOB_FILE = "job_step,job_step_function,job_step_command\n10,run_command,true\n20,run_command,true\n"


def wait_exit(d: Daemon) -> int:
    """Wait for a daemon that is expected to stop on its own; its exit code."""
    assert d.proc is not None
    try:
        return d.proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"loadmgrd did not exit by itself:\n{d.log()}") from None


def ping_ok(d: Daemon) -> None:
    reply = d.rpc("ping")
    assert "result" in reply, reply
    assert d.proc is not None and reply["result"]["pid"] == d.proc.pid


@pytest.fixture
def second_home() -> Iterator[Path]:
    """A scratch directory for a second daemon's stderr and notify socket."""
    home = Path(tempfile.mkdtemp(prefix="lm2-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def other_daemon() -> Iterator[Daemon]:
    """A second daemon of the test's own, stopped and removed afterwards."""
    d = make_daemon()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


# ---------------------------------------------------------------------------- start-up


def test_start_creates_database_and_socket(fresh_daemon: Daemon) -> None:
    assert not fresh_daemon.database.exists()
    assert not fresh_daemon.socket.exists()
    fresh_daemon.start()
    st = os.stat(fresh_daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666, oct(stat.S_IMODE(st.st_mode))
    assert fresh_daemon.database.is_file()
    info = fresh_daemon.json("repo", "info")
    assert info["schema_version"] == SCHEMA_VERSION
    assert Path(info["database"]) == fresh_daemon.database
    ping_ok(fresh_daemon)


def test_second_daemon_on_the_same_repository_refuses(fresh_daemon: Daemon, second_home: Path) -> None:
    fresh_daemon.start()
    second = Daemon(second_home, fresh_daemon.config_file, fresh_daemon.socket, fresh_daemon.database)
    try:
        second.start(expect_ready=False)
        assert wait_exit(second) == 1
        lines = [line for line in second.log().splitlines() if "already using the repository" in line]
        assert lines, second.log()
        assert "another loadmgrd" in lines[0]
        assert fresh_daemon.proc is not None and str(fresh_daemon.proc.pid) in lines[0], "names the holder's pid"
    finally:
        second.stop()
    assert fresh_daemon.socket.exists(), "the refused daemon must not remove the first one's socket"
    ping_ok(fresh_daemon)


def test_second_daemon_on_the_same_socket_refuses(fresh_daemon: Daemon, other_daemon: Daemon) -> None:
    fresh_daemon.start()
    text = other_daemon.config_file.read_text()
    assert f"socket = {other_daemon.socket}\n" in text
    other_daemon.config_file.write_text(
        text.replace(f"socket = {other_daemon.socket}\n", f"socket = {fresh_daemon.socket}\n")
    )
    other_daemon.start(expect_ready=False)
    assert wait_exit(other_daemon) == 1
    lines = [line for line in other_daemon.log().splitlines() if "already serving" in line]
    assert lines, other_daemon.log()
    assert "another loadmgrd" in lines[0] and str(fresh_daemon.socket) in lines[0]
    assert fresh_daemon.socket.exists(), "the refused daemon must not remove the first one's socket"
    ping_ok(fresh_daemon)


def test_stale_socket_is_replaced(fresh_daemon: Daemon) -> None:
    fresh_daemon.socket.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(fresh_daemon.socket))  # closed without unlinking: nobody listens on it
    assert stat.S_ISSOCK(fresh_daemon.socket.lstat().st_mode)
    fresh_daemon.start()
    ping_ok(fresh_daemon)
    assert "removed stale socket" in fresh_daemon.log()
    assert stat.S_IMODE(os.stat(fresh_daemon.socket).st_mode) == 0o666


@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_stale_socket_of_another_user_is_refused_naming_its_owner(mode: int) -> None:
    """loadmgrd as nobody, a dead socket of root's in a sticky directory (as in /tmp): nobody can
    neither probe a 0600 socket nor remove root's file; both refusals name the owner, and nothing
    claims to have removed it."""
    from tests.reliability.support import nobody_user

    user = nobody_user()
    home = Path(tempfile.mkdtemp(prefix="lm-"))
    try:
        home.chmod(0o755)
        own = home / "own"
        own.mkdir()
        os.chown(own, user.uid, user.gid)
        shared = home / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        path = shared / "loadmgrd.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(str(path))  # root's, closed without unlinking: nobody listens on it
        path.chmod(mode)
        config = own / "loadmgr_config.cfg"
        config.write_text(
            f"[repository]\ndatabase = {own}/loadmgr.db\n\n[daemon]\nsocket = {path}\n\n"
            f"[logging]\nlocation = {own}/logs\n"
        )
        os.chown(config, user.uid, user.gid)
        result = subprocess.run(
            user.command([PYTHON, "-m", "loadmgrd", "--config", str(config)]),
            env={k: v for k, v in os.environ.items() if not k.startswith(("LOADMGR_", "NOTIFY_"))},
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert result.returncode == 1, result
        assert "uid 0 (root)" in result.stderr, result.stderr
        assert ("cannot check socket" if mode == 0o600 else "cannot remove the stale socket") in result.stderr
        assert "removed stale socket" not in result.stderr
        assert "Traceback" not in result.stderr
        assert stat.S_ISSOCK(path.lstat().st_mode), "root's socket file must be left in place"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_non_socket_at_the_socket_path_is_left_alone(fresh_daemon: Daemon) -> None:
    fresh_daemon.socket.parent.mkdir(parents=True)
    fresh_daemon.socket.write_text("precious data\n")
    fresh_daemon.start(expect_ready=False)
    assert wait_exit(fresh_daemon) == 1
    assert "not a socket" in fresh_daemon.log()
    assert fresh_daemon.socket.is_file()
    assert fresh_daemon.socket.read_text() == "precious data\n"


# ---------------------------------------------------------------------------- stopping


def test_sigterm_stops_cleanly_and_removes_the_socket(fresh_daemon: Daemon) -> None:
    proc = fresh_daemon.start()
    assert fresh_daemon.socket.exists()
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(fresh_daemon) == 0
    assert not fresh_daemon.socket.exists()
    assert "Traceback" not in fresh_daemon.log()


class Notified:
    """loadmgrd started by the test itself with NOTIFY_SOCKET pointing at the test's datagram socket."""

    def __init__(self, d: Daemon) -> None:
        self.path = d.home / "my-notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(EXIT_TIMEOUT)
        self.messages: list[str] = []
        try:
            with open(d.stderr_path, "ab") as stderr:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(
                    [PYTHON, "-m", "loadmgrd", "--config", str(d.config_file)],
                    env=d.env(NOTIFY_SOCKET=str(self.path)),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
        except BaseException:
            self.sock.close()
            raise

    def receive_until(self, word: str) -> str:
        """Collect datagrams until one has ``word`` as a line; that datagram."""
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {word} from loadmgrd; got {self.messages!r}") from None
            self.messages.append(message)
            if word in message.splitlines():
                return message

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def notified(fresh_daemon: Daemon) -> Iterator[Notified]:
    n = Notified(fresh_daemon)
    try:
        yield n
    finally:
        n.close()


def test_sd_notify_ready_then_stopping(notified: Notified) -> None:
    ready = notified.receive_until("READY=1")
    assert f"MAINPID={notified.proc.pid}" in ready.splitlines()
    assert not any("STOPPING=1" in m for m in notified.messages)
    notified.proc.send_signal(signal.SIGTERM)
    notified.receive_until("STOPPING=1")
    assert notified.proc.wait(timeout=EXIT_TIMEOUT) == 0


def test_sighup_with_a_broken_config_keeps_the_daemon_serving(fresh_daemon: Daemon, notified: Notified) -> None:
    notified.receive_until("READY=1")
    good = fresh_daemon.config_file.read_text()
    assert "[jobs]" not in good
    # A visible change beside the fault: none of the broken file may take effect.
    fresh_daemon.config_file.write_text(good + "\n[jobs]\njob_file_delimiter = ;\n\n[daemon2]\nx = 1\n")
    notified.proc.send_signal(signal.SIGHUP)
    notified.receive_until("RELOADING=1")
    notified.receive_until("READY=1")
    assert notified.proc.poll() is None
    reply = fresh_daemon.rpc("ping")
    assert reply["result"]["pid"] == notified.proc.pid
    assert "reload rejected" in fresh_daemon.log()
    assert "daemon2" in fresh_daemon.log()  # the reason names the bad section
    semicolons = fresh_daemon.home / "semi.csv"
    semicolons.write_text("job_step;job_step_function;job_step_command\n10;run_command;true\n")
    refused = fresh_daemon.ctl("job", "import", "semi", str(semicolons))
    assert refused.returncode == 1 and "job_file_delimiter" in refused.stderr, refused
    notified.proc.send_signal(signal.SIGTERM)
    assert notified.proc.wait(timeout=EXIT_TIMEOUT) == 0


def test_sigterm_with_an_idle_client_connected(fresh_daemon: Daemon) -> None:
    proc = fresh_daemon.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.settimeout(EXIT_TIMEOUT)
        idle.connect(str(fresh_daemon.socket))
        idle.sendall(b'{"jsonrpc":"2.0","method":"ping","id":1}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = idle.recv(65536)
            assert chunk, "connection closed before the reply"
            reply += chunk
        assert b'"result"' in reply
        proc.send_signal(signal.SIGTERM)  # the client stays connected and silent
        assert wait_exit(fresh_daemon) == 0
        assert idle.recv(65536) == b"", "the daemon closes open connections when it stops"
    assert not fresh_daemon.socket.exists()


def test_sigterm_lets_an_in_flight_request_finish(fresh_daemon: Daemon) -> None:
    proc = fresh_daemon.start()
    batch = [{"jsonrpc": "2.0", "method": "ping", "id": i} for i in range(2000)]  # a long request
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(EXIT_TIMEOUT)
        client.connect(str(fresh_daemon.socket))
        first = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": "first"}).encode()
        client.sendall(first + b"\n" + json.dumps(batch).encode() + b"\n")
        with client.makefile("rb") as stream:
            assert b'"first"' in stream.readline()  # the daemon is now working on the batch
            proc.send_signal(signal.SIGTERM)
            rest = stream.read()  # until the daemon closes the connection
        assert wait_exit(fresh_daemon) == 0
    assert rest.endswith(b"\n"), f"no reply to the in-flight request (got {len(rest)} bytes)"
    replies = json.loads(rest)
    assert [r["id"] for r in replies] == list(range(2000))


# ---------------------------------------------------------------------------- configuration errors


def _run_with_config(tmp: Path, body: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "bad.cfg"
    config.write_text(body)
    return subprocess.run(
        [PYTHON, "-m", "loadmgrd", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("LOADMGR_", "NOTIFY_SOCKET"))},
    )


def _config(home: Path, daemon_extra: str) -> str:
    return textwrap.dedent(
        f"""\
        [repository]
        database = {home}/state/loadmgr.db

        [daemon]
        socket = {home}/run/loadmgrd.sock
        {daemon_extra}

        [logging]
        location = {home}/logs
        """
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("colour = blue", "daemon.colour"),
        ("max_request_bytes = lots", "daemon.max_request_bytes"),
        ("max_request_bytes = 10", "daemon.max_request_bytes"),
        ("socket_mode = 0999", "daemon.socket_mode"),
    ],
)
def test_bad_config_exits_2_naming_key_and_line(tmp_path: Path, setting: str, expected: str) -> None:
    home = tmp_path / "h"
    result = _run_with_config(tmp_path, _config(home, setting))  # the setting is on line 6
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "line 6" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (home / "run" / "loadmgrd.sock").exists()
    assert not (home / "state" / "loadmgr.db").exists()


def test_unknown_section_exits_2(tmp_path: Path) -> None:
    body = _config(tmp_path / "h", "") + "\n[deamon]\nsocket = /tmp/x.sock\n"
    result = _run_with_config(tmp_path, body)
    assert result.returncode == 2, result.stderr
    assert "[deamon]" in result.stderr and "line 11" in result.stderr, result.stderr


# ---------------------------------------------------------------------------- data survives, repo commands


def test_restart_keeps_data(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    job_file = fresh_daemon.home / "keep.csv"
    job_file.write_text(JOB_FILE)
    fresh_daemon.ok("job", "import", "keepme", str(job_file), "--group", "g1")
    fresh_daemon.ok("process", "add", "keep-proc", "--subject_area", "sales")
    assert fresh_daemon.stop() == 0
    assert not fresh_daemon.socket.exists()
    fresh_daemon.start()
    jobs = fresh_daemon.json("listall")
    assert [(j["job_name"], j["job_group"]) for j in jobs] == [("keepme", "g1")]
    view = fresh_daemon.json("job", "view", "keepme")
    assert [s["job_step"] for s in view["steps"]] == [10, 20]
    process = fresh_daemon.json("process", "view", "keep-proc")
    assert process["process"]["subject_area"] == "sales"


def test_repo_create_is_idempotent(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    for _ in range(2):
        out = fresh_daemon.ok("repo", "create")
        assert f"schema version {SCHEMA_VERSION}" in out and "already up to date" in out, out
    reply = fresh_daemon.rpc("repo.create")
    assert reply["result"]["migrations_applied"] == [], reply
    assert reply["result"]["schema_version"] == SCHEMA_VERSION


def test_repo_maintenance_toggles_and_sets(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()

    def mode() -> bool:
        value = fresh_daemon.rpc("ping")["result"]["maintenance_mode"]
        assert isinstance(value, bool)
        return value

    assert fresh_daemon.json("ping")["maintenance_mode"] is False
    assert "maintenance mode is ON" in fresh_daemon.ok("repo", "maintenance")
    assert fresh_daemon.json("ping")["maintenance_mode"] is True
    assert "maintenance mode is OFF" in fresh_daemon.ok("repo", "maintenance")
    assert fresh_daemon.json("ping")["maintenance_mode"] is False
    for _ in range(2):  # explicit, so idempotent
        assert "maintenance mode is ON" in fresh_daemon.ok("repo", "maintenance", "--on")
        assert mode() is True
    assert fresh_daemon.json("repo", "info")["maintenance_mode"] is True
    assert "maintenance mode ON" in fresh_daemon.ok("ping")
    for _ in range(2):
        assert "maintenance mode is OFF" in fresh_daemon.ok("repo", "maintenance", "--off")
        assert mode() is False
    assert "maintenance" not in fresh_daemon.ok("ping")


def test_maintenance_mode_survives_a_restart(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    fresh_daemon.ok("repo", "maintenance", "--on")
    assert fresh_daemon.stop() == 0
    fresh_daemon.start()
    assert fresh_daemon.json("ping")["maintenance_mode"] is True


# ---------------------------------------------------------------------------- the client without a daemon


def test_client_without_daemon_exits_5(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADMGR_")}
    env["LOADMGR_CONFIG"] = str(tmp_path)  # no config there
    result = subprocess.run(
        [PYTHON, "-m", "loadmgrctl", "--socket", "/nonexistent/x.sock", "ping"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 5, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loadmgrctl: error: cannot reach loadmgrd at /nonexistent/x.sock"), lines
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_client_after_daemon_stopped_exits_5(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    assert fresh_daemon.stop() == 0
    result = fresh_daemon.ctl("listall")
    assert result.returncode == 5, result
    assert result.stderr.startswith(f"loadmgrctl: error: cannot reach loadmgrd at {fresh_daemon.socket}")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_ping_json_shape(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    out = fresh_daemon.ok("ping", "--json")
    result = json.loads(out)
    assert result["schema_version"] == SCHEMA_VERSION
    assert fresh_daemon.proc is not None and result["pid"] == fresh_daemon.proc.pid
    assert result["peer"]["uid"] == os.getuid()
    assert Path(result["database"]) == fresh_daemon.database
