"""Operating loadmgrd under systemd: the unit files, the sd_notify protocol (READY, STATUS,
RELOADING, STOPPING, WATCHDOG), socket activation, SIGHUP / SIGUSR1, online backup and
``repo check``, start-up faults, migration logging, and the logrotate example.

Every daemon is a real process on a real socket. Synchronisation is on events: sd_notify
datagrams on a socket the test binds, the ``watch`` long poll, marker files written by steps;
a bounded polling loop with a deadline is used only where no event exists (a log line).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadmgrd.repository import Repository, load_migrations
from tests.conftest import PYTHON, Daemon, raw_exchange
from tests.support import POLL, WAIT_TIMEOUT, call, q, wait_for_status

REPO_ROOT = Path(__file__).resolve().parents[2]
LOADMGRD_BIN = Path(PYTHON).parent / "loadmgrd"

EXIT_GRACE = 5.0  # how long a daemon that reported a fatal error may take to exit

# Environment a test process may itself have inherited from systemd: never pass it on by accident.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# Socket activation: put the listening socket on fd 3, set LISTEN_PID to this very process (exec
# keeps the pid) and become loadmgrd. argv: FD PROGRAM ARGS...
_ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


# ---------------------------------------------------------------------------- helpers


def has_line(word: str) -> Callable[[str], bool]:
    return lambda message: word in message.splitlines()


class Launched:
    """loadmgrd started by the test itself (optionally through a wrapper command), with
    NOTIFY_SOCKET on a datagram socket the test binds; every datagram is kept in order."""

    def __init__(
        self,
        d: Daemon,
        *,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        notify: str | None = "own",
        args: Sequence[str] = (),
    ) -> None:
        self.d = d
        self.messages: list[str] = []
        self.sock: socket.socket | None = None
        self.path = d.home / "test-notify.sock"
        variables = {k: v for k, v in d.env().items() if k not in _SYSTEMD_ENV}
        if notify == "own":
            self.path.unlink(missing_ok=True)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(str(self.path))
            self.path.chmod(0o777)  # a daemon running as another user may send too
            variables["NOTIFY_SOCKET"] = str(self.path)
        elif notify is not None:
            variables["NOTIFY_SOCKET"] = notify
        variables.update(env or {})
        command = [*wrapper, PYTHON, "-m", "loadmgrd", "--config", str(d.config_file), *args]
        try:
            with open(d.stderr_path, "ab") as stderr:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(
                    command,
                    env=variables,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                    pass_fds=tuple(pass_fds),
                )
        except BaseException:
            self.close()
            raise

    def receive(self, timeout: float) -> str | None:
        """The next datagram, or None after ``timeout`` seconds."""
        assert self.sock is not None
        self.sock.settimeout(max(timeout, 0.001))
        try:
            message = self.sock.recv(65536).decode()
        except TimeoutError:
            return None
        self.messages.append(message)
        return message

    def receive_until(self, predicate: Callable[[str], bool], what: str, timeout: float = WAIT_TIMEOUT) -> str:
        """Collect datagrams until one satisfies ``predicate``; that datagram."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {what} from loadmgrd within {timeout} s; got {self.messages!r}\n{self.d.log()}"
                )
            message = self.receive(remaining)
            if message is not None and predicate(message):
                return message

    def wait_ready(self) -> str:
        return self.receive_until(has_line("READY=1"), "READY=1")

    def terminate(self) -> int:
        """SIGTERM and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"loadmgrd did not stop on SIGTERM:\n{self.d.log()}") from None

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.path.unlink(missing_ok=True)


@pytest.fixture
def launch(fresh_daemon: Daemon) -> Iterator[Callable[..., Launched]]:
    """Start loadmgrd processes for ``fresh_daemon``'s home; all are killed at the end."""
    started: list[Launched] = []

    def make(**kwargs: Any) -> Launched:
        launched = Launched(fresh_daemon, **kwargs)
        started.append(launched)
        return launched

    yield make
    for launched in started:
        launched.close()


@dataclass
class Gate:
    """A step that says something, touches a marker, blocks until released, then says more."""

    directory: Path
    name: str

    @property
    def mark(self) -> Path:
        return self.directory / f"{self.name}.started"

    @property
    def release(self) -> Path:
        return self.directory / f"{self.name}.release"

    def command(self, before: str = "", after: str = "") -> str:
        return (
            f"echo {q(before or 'gate-' + self.name)}; touch {q(str(self.mark))}; "
            f"while [ ! -f {q(str(self.release))} ]; do sleep 0.05; done; echo {q(after or 'released')}"
        )

    def wait_started(self, timeout: float = WAIT_TIMEOUT) -> None:
        wait_for(self.mark.exists, f"{self.mark} to appear", timeout)

    def open(self) -> None:
        self.release.touch()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Callable[[str], Gate]]:
    """Make gates; every one is opened at the end of the test so no step stays blocked."""
    made: list[Gate] = []

    def make(name: str) -> Gate:
        gate = Gate(tmp_path, name)
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.open()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> None:
    """Bounded polling for things that have no event (files, log lines)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def one_step_job(d: Daemon, directory: Path, name: str, command: str) -> None:
    path = directory / f"{name}.csv"
    escaped = "".join("\\" + ch if ch in (",", '"', "\\") else ch for ch in command)
    path.write_text(f"job_step,job_step_function,job_step_command\n10,run_command,{escaped}\n")
    d.ok("job", "import", name, str(path))


def start_job(d: Daemon, job: str) -> dict[str, Any]:
    result = call(d, "start", {"name": job})
    assert result["results"] and result["results"][0]["started"], result
    return dict(result["results"][0])


def ping_pid(path: Path) -> int:
    reply = json.loads(raw_exchange(path, b'{"jsonrpc":"2.0","method":"ping","id":1}\n', timeout=10))
    assert "result" in reply, reply
    return int(reply["result"]["pid"])


def ctl_in(d: Daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """loadmgrctl run from another working directory."""
    return subprocess.run(
        [PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), *args],
        env=d.env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def log_after(d: Daemon, offset: int) -> str:
    return d.log()[offset:]


# ============================================================================ 1. unit files


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    assert os.access(LOADMGRD_BIN, os.X_OK), f"{LOADMGRD_BIN} is not an executable (is the package installed?)"
    units = tmp_path / "units"
    units.mkdir()
    service_text = (REPO_ROOT / "systemd" / "loadmgrd.service").read_text()
    assert "ExecStart=/opt/loadmgr/bin/loadmgrd\n" in service_text
    (units / "loadmgrd.service").write_text(service_text.replace("/opt/loadmgr/bin/loadmgrd", str(LOADMGRD_BIN)))
    shutil.copy(REPO_ROOT / "systemd" / "loadmgrd.socket", units / "loadmgrd.socket")

    def verify(*names: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [analyze, "verify", *(str(units / n) for n in names)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=units,
        )

    # The verifier really checks in this environment: a broken copy is rejected.
    broken = units / "broken.service"
    broken.write_text(
        service_text.replace("/opt/loadmgr/bin/loadmgrd", "/nonexistent/loadmgrd").replace(
            "KillMode=mixed", "KillMode=mixd"
        )
    )
    control = verify("broken.service")
    assert control.returncode != 0 or "mixd" in control.stderr, "systemd-analyze verify catches nothing here"
    broken.unlink()

    result = verify("loadmgrd.service", "loadmgrd.socket")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    problems = [
        line
        for line in output.splitlines()
        if "loadmgrd.service" in line or "loadmgrd.socket" in line or str(units) in line
    ]
    assert problems == [], output


# ============================================================================ 2. the notify protocol


def test_notify_ready_status_stopping_and_watchdog(
    fresh_daemon: Daemon, launch: Callable[..., Launched], gates: Callable[[str], Gate], tmp_path: Path
) -> None:
    d = fresh_daemon
    n = launch(
        env={"WATCHDOG_USEC": "200000"},
        wrapper=["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"'],
    )
    ready = n.wait_ready()
    assert ping_pid(d.socket) == n.proc.pid, "READY=1 was sent before the socket accepted"  # one try, no retry
    lines = ready.splitlines()
    assert f"MAINPID={n.proc.pid}" in lines, ready
    assert any(line.startswith("STATUS=serving on ") for line in lines), ready
    assert not any("STOPPING=1" in m or "Running" in m for m in n.messages[:-1]), n.messages

    # The watchdog: WATCHDOG_USEC=200 ms → a ping every 100 ms.
    watchdog_since = len(n.messages) - 1
    deadline = time.monotonic() + 3.0
    while sum(has_line("WATCHDOG=1")(m) for m in n.messages[watchdog_since:]) < 2:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"fewer than two WATCHDOG=1 within 3 s: {n.messages!r}")
        n.receive(remaining)

    gate = gates("notify")
    seen = tmp_path / "step-env.txt"
    step_env = f'echo "${{NOTIFY_SOCKET-unset}}/${{WATCHDOG_USEC-unset}}/${{WATCHDOG_PID-unset}}" > {q(str(seen))}'
    one_step_job(d, tmp_path, "notify_job", f"{step_env}; {gate.command()}")
    start_job(d, "notify_job")
    running = n.receive_until(lambda m: "STATUS=" in m and "Running" in m, "STATUS with a Running run")
    status = next(line for line in running.splitlines() if line.startswith("STATUS="))
    assert f"serving on {d.socket}" in status and "runs: 1 Running" in status, status
    gate.wait_started()
    assert seen.read_text() == "unset/unset/unset\n", "systemd's variables must not reach job steps"
    gate.open()
    wait_for_status(d, "notify_job", "Completed")
    n.receive_until(lambda m: "STATUS=" in m and "runs: idle" in m, "STATUS back to idle")

    n.proc.send_signal(signal.SIGTERM)
    n.receive_until(has_line("STOPPING=1"), "STOPPING=1")
    assert n.proc.wait(timeout=WAIT_TIMEOUT) == 0
    order = [
        next(i for i, m in enumerate(n.messages) if has_line("READY=1")(m)),
        next(i for i, m in enumerate(n.messages) if "STATUS=" in m and "Running" in m),
        next(i for i, m in enumerate(n.messages) if has_line("STOPPING=1")(m)),
    ]
    assert order == sorted(order), n.messages


# ============================================================================ 3. NOTIFY_SOCKET nowhere


def test_notify_socket_nowhere_is_logged_once_and_harmless(
    fresh_daemon: Daemon, launch: Callable[..., Launched]
) -> None:
    d = fresh_daemon
    nowhere = d.home / "no-such-dir" / "notify.sock"
    n = launch(notify=str(nowhere))
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:  # no READY to wait for: poll the socket
        assert n.proc.poll() is None, f"loadmgrd exited ({n.proc.returncode}):\n{d.log()}"
        with contextlib.suppress(OSError):
            assert ping_pid(d.socket) == n.proc.pid
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"loadmgrd did not answer within {WAIT_TIMEOUT} s:\n{d.log()}")
        time.sleep(POLL)
    # More notifications that cannot be delivered: RELOADING, READY, STATUS, then STOPPING.
    n.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), "the reload to be logged")
    assert n.terminate() == 0
    log = d.log()
    warnings = [line for line in log.splitlines() if "NOTIFY_SOCKET" in line]
    assert len(warnings) == 1, log
    assert " WARNING " in warnings[0] and str(nowhere) in warnings[0], warnings
    assert "Traceback" not in log, log
    assert not d.socket.exists()


# ============================================================================ 4. socket activation


def test_socket_activation(fresh_daemon: Daemon, launch: Callable[..., Launched], tmp_path: Path) -> None:
    d = fresh_daemon
    d.socket.parent.mkdir(parents=True)
    # The unit's socket need not be where the config says: the passed one is what counts.
    configured = d.socket.with_name("configured.sock")
    text = d.config_file.read_text()
    assert f"socket = {d.socket}\n" in text
    d.config_file.write_text(text.replace(f"socket = {d.socket}\n", f"socket = {configured}\n"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(d.socket))
        os.chmod(d.socket, 0o666)
        listener.listen(16)
        inode = d.socket.stat().st_ino
        n = launch(wrapper=[PYTHON, "-c", _ACTIVATE, str(listener.fileno())], pass_fds=[listener.fileno()])
        n.wait_ready()
        assert d.json("ping")["pid"] == n.proc.pid  # through loadmgrctl
        assert f"listening on {d.socket} (socket activation)" in d.log(), d.log()
        assert any(f"STATUS=serving on {d.socket}" in m for m in n.messages), n.messages
        assert not configured.exists()
        assert d.socket.stat().st_ino == inode, "the daemon replaced the socket it was handed"

        out = tmp_path / "env.txt"
        one_step_job(d, tmp_path, "act_env", f'echo "${{LISTEN_FDS-unset}}/${{LISTEN_PID-unset}}" > {q(str(out))}')
        result = d.ctl("start", "--wait", "act_env")
        assert result.returncode == 0, result.stderr
        assert out.read_text() == "unset/unset\n", "LISTEN_* must not reach job steps"

        assert n.terminate() == 0
        assert d.socket.exists() and stat.S_ISSOCK(d.socket.lstat().st_mode), "the activated socket was removed"
        assert d.socket.stat().st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:  # still systemd's listening socket
            client.settimeout(5)
            client.connect(str(d.socket))
        assert "Traceback" not in d.log()
    finally:
        listener.close()


# ============================================================================ 5. SIGHUP reload


def test_sighup_applies_a_changed_config(fresh_daemon: Daemon, launch: Callable[..., Launched], tmp_path: Path) -> None:
    d = fresh_daemon
    # The watchdog belongs to another process here (WATCHDOG_PID): loadmgrd must not ping it.
    n = launch(env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    n.wait_ready()
    job_file = tmp_path / "semi.csv"
    job_file.write_text("job_step;job_step_function;job_step_command\n10;run_command;true\n20;run_command;true\n")
    before = d.ctl("job", "import", "semi", str(job_file))
    assert before.returncode == 1, before
    assert "job_file_delimiter" in before.stderr and "';'" in before.stderr, before.stderr

    d.config_file.write_text(d.config_file.read_text() + "\n[jobs]\njob_file_delimiter = ;\n")
    sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.proc.send_signal(signal.SIGHUP)
    reloading = n.receive_until(has_line("RELOADING=1"), "RELOADING=1")
    received = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    stamps = [line.split("=", 1)[1] for line in reloading.splitlines() if line.startswith("MONOTONIC_USEC=")]
    assert len(stamps) == 1 and stamps[0].isdigit(), reloading
    assert sent <= int(stamps[0]) <= received, (sent, stamps, received)
    n.receive_until(has_line("READY=1"), "READY=1 after the reload")
    assert "configuration reloaded" in d.log(), d.log()

    after = d.ctl("job", "import", "semi", str(job_file))
    assert after.returncode == 0, after.stderr
    steps = d.json("job", "view", "semi")["steps"]
    assert [s["job_step"] for s in steps] == [10, 20]
    assert ping_pid(d.socket) == n.proc.pid, "a reload is not a restart"
    assert n.terminate() == 0
    assert not any(has_line("WATCHDOG=1")(m) for m in n.messages), n.messages


# ============================================================================ 6. SIGUSR1


def test_sigusr1_reopens_run_logs(fresh_daemon: Daemon, gates: Callable[[str], Gate], tmp_path: Path) -> None:
    d = fresh_daemon
    proc = d.start()
    gate = gates("rotate")
    one_step_job(d, tmp_path, "rotate_job", gate.command(before="BEFORE-ROTATION", after="AFTER-ROTATION"))
    log_file = Path(start_job(d, "rotate_job")["log_file"])
    gate.wait_started()
    wait_for(lambda: log_file.exists() and "BEFORE-ROTATION" in log_file.read_text(), "the step's first line")
    rotated = log_file.with_name(log_file.name + ".1")
    os.rename(log_file, rotated)
    offset = len(d.log())
    proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "SIGUSR1: reopened 1 run log file(s)" in log_after(d, offset), "the reopen to be logged")
    assert log_file.exists(), "no new file at the original path"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    gate.open()
    wait_for_status(d, "rotate_job", "Completed")
    wait_for(lambda: "AFTER-ROTATION" in log_file.read_text(), "the marker in the new log file", 5.0)
    assert "AFTER-ROTATION" not in rotated.read_text()
    assert "BEFORE-ROTATION" in rotated.read_text()
    assert "BEFORE-ROTATION" not in log_file.read_text()
    assert log_file.stat().st_ino != rotated.stat().st_ino


# ============================================================================ 6b. SIGINT twice, JSON log


def test_a_second_sigint_exits_at_once(
    fresh_daemon: Daemon, launch: Callable[..., Launched], gates: Callable[[str], Gate], tmp_path: Path
) -> None:
    """The first SIGINT starts a graceful stop, which here would wait out a 60 s grace period for
    a step that ignores SIGTERM; the second ends the daemon at once (exit 130)."""
    d = fresh_daemon
    text = d.config_file.read_text()
    d.config_file.write_text(text.replace("[daemon]\n", "[daemon]\nstop_grace_period = 60\n", 1))
    n = launch()
    n.wait_ready()
    gate = gates("stubborn")
    pgid_file = tmp_path / "stubborn.pgid"
    one_step_job(d, tmp_path, "stubborn", f"trap '' TERM; echo $$ > {q(str(pgid_file))}; {gate.command()}")
    start_job(d, "stubborn")
    gate.wait_started()
    pgid = int(pgid_file.read_text())
    try:
        n.proc.send_signal(signal.SIGINT)
        n.receive_until(has_line("STOPPING=1"), "STOPPING=1")
        wait_for(lambda: "SIGINT received" in d.log(), "the first SIGINT to be logged")
        begun = time.monotonic()
        n.proc.send_signal(signal.SIGINT)
        assert n.proc.wait(timeout=WAIT_TIMEOUT) == 130
        assert time.monotonic() - begun < 30, "the second SIGINT waited for the grace period"
        assert "second SIGINT: exiting at once" in d.log()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_log_format_json_writes_one_object_per_line(fresh_daemon: Daemon, launch: Callable[..., Launched]) -> None:
    d = fresh_daemon
    n = launch(args=["--log-format", "json"])
    n.wait_ready()
    assert n.terminate() == 0
    lines = [line for line in d.log().splitlines() if line.strip()]
    assert len(lines) >= 3, lines
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    for entry in entries:
        assert set(entry) >= {"ts", "level", "logger", "message"}, entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", entry["ts"]), entry
    assert any("listening on" in e["message"] and e["level"] == "INFO" for e in entries), entries


# ============================================================================ 7. backup and check


def test_backup_while_a_job_runs(fresh_daemon: Daemon, gates: Callable[[str], Gate], tmp_path: Path) -> None:
    d = fresh_daemon
    d.start()
    gate = gates("backup")
    one_step_job(d, tmp_path, "backup_job", gate.command())
    run_id = start_job(d, "backup_job")["run_id"]
    gate.wait_started()
    wait_for_status(d, "backup_job", "Running")

    target = tmp_path / "copy.db"
    first = d.ctl("repo", "backup", str(target))
    assert first.returncode == 0, first.stderr
    assert str(target) in first.stdout and "integrity check ok" in first.stdout, first.stdout
    assert not list(tmp_path.glob("*.partial")), "temporary copy left behind"
    with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = copy.execute(
            "SELECT j.job_name, r.run_id, r.status FROM job j JOIN job_run r USING (job_key)"
        ).fetchall()
    assert rows == [("backup_job", run_id, "Running")], rows

    again = d.ctl("repo", "backup", str(target))
    assert again.returncode == 1, again
    assert "exists" in again.stderr and "--force" in again.stderr, again.stderr
    inode = target.stat().st_ino
    forced = d.ctl("repo", "backup", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert target.stat().st_ino != inode, "--force did not write a new copy"

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    relative = ctl_in(d, workdir, "repo", "backup", "relative.db")
    assert relative.returncode == 0, relative.stderr
    assert (workdir / "relative.db").is_file()
    assert str(workdir / "relative.db") in relative.stdout, relative.stdout

    missing = tmp_path / "no" / "such" / "dir"
    refused = d.ctl("repo", "backup", str(missing / "x.db"))
    assert refused.returncode == 1, refused
    assert str(missing) in refused.stderr and "does not exist" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr, refused.stderr

    gate.open()
    wait_for_status(d, "backup_job", "Completed")
    check = d.ctl("repo", "check")
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout, check.stdout
    result = d.json("repo", "check")
    assert result["ok"] is True, result
    assert result["integrity_check"] == ["ok"] and result["foreign_key_check"] == [], result


# ============================================================================ 8. faults at start


@dataclass
class Outcome:
    ready: bool
    returncode: int | None  # None: still running EXIT_GRACE s after reporting its failure (killed)
    log: str
    messages: list[str]


def failing_start(d: Daemon, *, wrapper: Sequence[str] = ()) -> Outcome:
    """Start loadmgrd expecting it to fail: wait for READY (bad), or its exit; a daemon that
    reported STATUS=failed gets EXIT_GRACE seconds to exit."""
    n = Launched(d, wrapper=wrapper)
    try:
        ready = False
        deadline = time.monotonic() + WAIT_TIMEOUT
        while n.proc.poll() is None and time.monotonic() < deadline:
            message = n.receive(0.1)
            if message is None:
                continue
            if has_line("READY=1")(message):
                ready = True
                break
            if message.startswith("STATUS=failed"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(timeout=EXIT_GRACE)
                break
        while n.receive(0.01) is not None:  # anything sent just before exiting
            continue
        return Outcome(ready, n.proc.poll(), d.log(), n.messages)
    finally:
        n.close()


def assert_clean_failure(outcome: Outcome, *words: str) -> str:
    """Exit 1, one ERROR line with ``words``, no traceback; STATUS=failed says the same."""
    assert not outcome.ready, f"loadmgrd started anyway:\n{outcome.log}"
    assert outcome.returncode is not None, f"loadmgrd reported its failure but did not exit:\n{outcome.log}"
    assert outcome.returncode == 1, f"exit {outcome.returncode}:\n{outcome.log}"
    assert "Traceback" not in outcome.log, outcome.log
    lines = outcome.log.splitlines()
    assert all(_LOG_LINE.match(line) for line in lines), outcome.log
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    assert len(errors) == 1, outcome.log
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    failed = [m for m in outcome.messages if m.startswith("STATUS=failed")]
    assert failed and all(word in failed[0] for word in words), outcome.messages
    return errors[0]


def test_database_that_is_not_sqlite(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    d.database.parent.mkdir(parents=True)
    garbage = "this is not an SQLite database, just some text\n" * 200
    d.database.write_text(garbage)
    outcome = failing_start(d)
    assert d.database.read_text() == garbage, "the file was modified"
    assert_clean_failure(outcome, "not a database", str(d.database))


def test_socket_parent_is_a_regular_file(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    blocker = d.socket.parent
    blocker.write_text("a file where the socket directory should be\n")
    outcome = failing_start(d)
    assert_clean_failure(outcome, str(blocker), "socket directory")
    assert blocker.read_text() == "a file where the socket directory should be\n"


def _nobody() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run loadmgrd as nobody")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


def _root_owned_repository(d: Daemon, directory_mode: int, directory_owner: int) -> None:
    """A migrated repository restored by root (0644, root:root), as a forgotten chown leaves it;
    the rest of the daemon's paths belong to nobody."""
    as_nobody = pwd.getpwnam("nobody")

    async def create() -> None:
        repo = await Repository.open(d.database)
        await repo.close()

    asyncio.run(create())
    for leftover in ("-wal", "-shm"):
        d.database.with_name(d.database.name + leftover).unlink(missing_ok=True)
    d.database.chmod(0o644)
    os.chown(d.database.parent, directory_owner, grp.getgrgid(0).gr_gid)
    d.database.parent.chmod(directory_mode)
    for name in ("run", "logs"):
        path = d.home / name
        path.mkdir(exist_ok=True)
        os.chown(path, as_nobody.pw_uid, as_nobody.pw_gid)
    d.config_file.chmod(0o644)
    d.config_file.parent.chmod(0o755)


def test_repository_in_a_directory_the_user_cannot_read(fresh_daemon: Daemon) -> None:
    wrapper = _nobody()
    d = fresh_daemon
    _root_owned_repository(d, 0o700, 0)
    outcome = failing_start(d, wrapper=wrapper)
    assert_clean_failure(outcome, str(d.database.parent))


def test_repository_file_the_user_cannot_write(fresh_daemon: Daemon) -> None:
    wrapper = _nobody()
    d = fresh_daemon
    _root_owned_repository(d, 0o750, pwd.getpwnam("nobody").pw_uid)
    outcome = failing_start(d, wrapper=wrapper)
    assert_clean_failure(outcome, "cannot be written", str(d.database))


# ============================================================================ 9. migrations


def test_migrations_are_logged_once(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    migrations = load_migrations()
    assert [m.version for m in migrations][:2] == [1, 2]
    d.start()
    first = d.log()
    for migration in migrations:
        line = f"repository migrated: applied {migration.version:04d}_{migration.name}"
        assert first.count(line) == 1, first
    assert "repository migrated: applied 0001_initial" in first
    assert f"at schema version {len(migrations)}" in first
    assert d.stop() == 0
    d.start()
    second = log_after(d, len(first))
    assert "listening on" in second, second
    assert "applied" not in second, second
    assert f"at schema version {len(migrations)}" in second


# ============================================================================ 10. logrotate


def test_logrotate_example_parses(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "loadmgr_job_20250101000000.log").write_text("a line\n")
    original = (REPO_ROOT / "etc" / "logrotate.d" / "loadmgr").read_text()
    assert "/var/log/loadmgr/*.log" in original
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    lines = []
    for line in original.replace("/var/log/loadmgr", str(logs)).splitlines():
        words = line.split()
        if words[:1] == ["su"]:
            continue  # the loadmgr user does not exist here
        if words[:1] == ["create"] and len(words) == 4:  # nor may it own the new files
            lines.append(line.replace(f"{words[2]} {words[3]}", f"{user} {group}"))
        else:
            lines.append(line)
    config = tmp_path / "loadmgr.logrotate"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o644)

    def run_logrotate(mode: str) -> subprocess.CompletedProcess[str]:
        command = [logrotate, mode, "-s", str(tmp_path / "state"), str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    result = run_logrotate("-d")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert f"rotating pattern: {logs}/*.log" in output, output
    assert "30 rotations" in output, output
    assert "--kill-who=main" in original  # the spelling every systemctl knows

    # A real rotation: a finished run's log moves aside, and no empty file is left in its place
    # (loadmgrd creates the new file itself for a run in progress, on SIGUSR1).
    forced = run_logrotate("-f")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["loadmgr_job_20250101000000.log.1"]
