"""Shared helpers of the reliability and security suite (see docs/reliability.md).

Everything here drives a real ``loadmgrd`` process (``tests.conftest.Daemon``) through its socket or
the real ``loadmgrctl``, and looks at the host the way an operator would: the SQLite file opened
read-only, ``/proc`` for processes and memory.

Long mode: ``LOADMGR_LONG=1`` (pytest_addoption only works in the root conftest, which this suite
does not touch) multiplies trials, examples and sizes. ``LOADMGR_SEED=N`` replays the random choices
of a run (every randomised assertion message prints the seed it used).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Daemon, make_daemon, raw_exchange
from tests.support import by_step, configure, kill_group, status_of, wait_for_status
from tests.support import current_run as run_of

# The shared helpers the R tests import from here, with this suite's own ones.
REEXPORTED = (by_step, kill_group, run_of, status_of, wait_for_status)

LONG = os.environ.get("LOADMGR_LONG", "").strip() not in ("", "0")


def _base_seed() -> int:
    """LOADMGR_SEED if given; else one seed per pytest run, the same in every xdist worker (derived
    from the run id xdist shares with its workers), so the seed in a failure message replays it."""
    if os.environ.get("LOADMGR_SEED"):
        return int(os.environ["LOADMGR_SEED"])
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        return int(hashlib.sha256(run.encode()).hexdigest()[:8], 16) % 2**31
    return random.SystemRandom().randrange(2**31)


BASE_SEED = _base_seed()
WAIT_TIMEOUT = 30.0  # upper bound for any state we wait for; normally reached in well under a second
POLL = 0.01  # only where no event exists (a file written by a step, /proc)

# JSON-RPC and loadmgr error codes (docs/protocol.md)
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = 1001
PERMISSION_DENIED = 1003
INVALID_INPUT = 1004
REQUEST_TOO_LARGE = 1007


DaemonFactory = Callable[..., Daemon]


def sized(fast: int, long: int) -> int:
    """A size for this mode: ``fast`` normally (CI), ``long`` with LOADMGR_LONG=1."""
    return long if LONG else fast


# ---------------------------------------------------------------------------- daemons


def new_daemon(*, daemon_keys: dict[str, str] | None = None, sections: str = "") -> Daemon:
    d = make_daemon()
    configure(d, daemon_keys=daemon_keys, sections=sections)
    return d


def discard_daemon(d: Daemon) -> None:
    """Stop the daemon (SIGTERM, then SIGKILL) and remove its home."""
    with contextlib.suppress(Exception):
        d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def kill9(d: Daemon) -> int:
    """SIGKILL the daemon and reap it; its pid."""
    assert d.proc is not None, "the daemon is not running"
    pid = d.proc.pid
    d.proc.kill()
    d.proc.wait(timeout=WAIT_TIMEOUT)
    d.proc = None
    return pid


def daemon_pid(d: Daemon) -> int:
    assert d.proc is not None and d.proc.poll() is None, f"loadmgrd is not running:\n{d.log()[-3000:]}"
    return d.proc.pid


# ---------------------------------------------------------------------------- requests


def request(method: Any, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params if params is not None else {}, "id": request_id}


def rpc(d: Daemon, method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    line = json.dumps(request(method, params, request_id)).encode() + b"\n"
    reply = raw_exchange(d.socket, line)
    assert reply.endswith(b"\n"), f"{method}: no complete reply: {reply[:500]!r}"
    decoded: dict[str, Any] = json.loads(reply)
    return decoded


def call(d: Daemon, method: str, params: Any = None) -> Any:
    reply = rpc(d, method, params)
    assert "result" in reply, f"{method} {params} failed: {reply}"
    return reply["result"]


class Conn:
    """One client connection reading newline-framed replies (several per connection)."""

    def __init__(self, path: Path | None = None, timeout: float = 30.0, *, sock: socket.socket | None = None) -> None:
        if sock is None:
            assert path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(str(path))
            except OSError:
                sock.close()
                raise
        else:
            sock.settimeout(timeout)
        self.sock = sock
        self._buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, obj: Any) -> None:
        self.send(json.dumps(obj).encode() + b"\n")

    def read_line(self) -> bytes:
        """The next reply line with its newline; b"" (or a partial line) at the end of the stream.

        A reset after the daemon closed its end is an end of stream too: on a Unix socket the kernel
        reports ECONNRESET, after the queued data, when the daemon closed with request bytes unread."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def read_json(self) -> Any:
        line = self.read_line()
        assert line.endswith(b"\n"), f"connection ended without a complete reply line: {line[:300]!r}"
        return json.loads(line)

    def read_to_eof(self) -> bytes:
        """Everything until the daemon closes its end (fails with a timeout if it never does)."""
        data, self._buffer = self._buffer, b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


# ---------------------------------------------------------------------------- job files

STEP_COLUMNS = (
    "job_step",
    "job_step_description",
    "job_step_function",
    "job_step_command",
    "job_step_args",
    "job_step_ignore_error",
    "job_step_capture_output",
    "job_step_wait_step",
    "job_step_alt_wait_step",
)


def step(
    number: int,
    command: str,
    *,
    function: str = "run_command",
    args: str = "",
    ignore_error: bool = False,
    capture: bool = False,
    wait_step: int = 0,
    alt_wait_step: int = 0,
    description: str = "",
) -> dict[str, Any]:
    return {
        "job_step": number,
        "job_step_description": description,
        "job_step_function": function,
        "job_step_command": command,
        "job_step_args": args,
        "job_step_ignore_error": ignore_error,
        "job_step_capture_output": capture,
        "job_step_wait_step": wait_step,
        "job_step_alt_wait_step": alt_wait_step,
    }


def _csv_field(value: Any) -> str:
    text = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return "".join("\\" + ch if ch in (",", '"', "\\") else ch for ch in text)


def job_csv(steps: list[dict[str, Any]]) -> str:
    lines = [",".join(STEP_COLUMNS)]
    lines += [",".join(_csv_field(s[c]) for c in STEP_COLUMNS) for s in steps]
    return "\n".join(lines) + "\n"


def import_job(d: Daemon, directory: Path, name: str, steps: list[dict[str, Any]], *, as_json: bool = False) -> Path:
    """Import a job through the real ``loadmgrctl job import`` (CSV, or JSON for commands with newlines)."""
    path = directory / f"job-{abs(hash(name)) % 10**8}.{'json' if as_json else 'csv'}"
    path.write_text(json.dumps({"steps": steps}, indent=1) if as_json else job_csv(steps))
    result = d.ctl("job", "import", name, str(path))
    assert result.returncode == 0, f"import of {name!r} failed ({result.returncode}): {result.stderr}"
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------- the repository file


def connect_ro(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)


def db_dump(database: Path) -> dict[str, list[str]]:
    """Every row of every table (sqlite_master and sqlite_sequence included), read-only."""
    with contextlib.closing(connect_ro(database)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        dump = {t: sorted(repr(r) for r in conn.execute(f'SELECT * FROM "{t}"')) for t in tables}
        dump["sqlite_master"] = sorted(repr(r) for r in conn.execute("SELECT * FROM sqlite_master"))
        return dump


def dump_difference(before: dict[str, list[str]], after: dict[str, list[str]]) -> str:
    """A short account of what differs between two dumps (for assertion messages)."""
    out = []
    for table in sorted(set(before) | set(after)):
        old, new = set(before.get(table, [])), set(after.get(table, []))
        if old != new:
            out.append(f"{table}: -{sorted(old - new)[:3]} +{sorted(new - old)[:3]}")
    return "; ".join(out) or "no difference"


def integrity_problems(database: Path) -> list[str]:
    """``PRAGMA integrity_check`` and ``foreign_key_check`` on the file, opened read-only."""
    with contextlib.closing(connect_ro(database)) as conn:
        integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        foreign = [repr(r) for r in conn.execute("PRAGMA foreign_key_check")]
    return ([] if integrity == ["ok"] else integrity) + foreign


# ---------------------------------------------------------------------------- processes (/proc)


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def is_alive(pid: int) -> bool:
    """A process that exists and is not a zombie (in this sandbox PID 1 does not reap orphans)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def live_group_members(pgid: int) -> list[int]:
    found = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def processes_with_env(entry: str) -> list[int]:
    """Live processes whose environment has exactly ``entry`` (``NAME=value``)."""
    wanted = entry.encode()
    found = []
    for pid in all_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and is_alive(pid):
            found.append(pid)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Bounded polling, for states no event announces (a file a step writes, /proc)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(POLL)


def wait_gone(pids: Callable[[], list[int]], timeout: float) -> list[int]:
    """Poll until ``pids()`` is empty; whatever is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := pids()) and time.monotonic() < deadline:
        time.sleep(POLL)
    return left


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def vmrss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------- another uid


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def command(self, command: list[str], *, groups: list[int] | None = None) -> list[str]:
        """``command`` as this user: its passwd gid, no supplementary groups unless given."""
        group_option = f"--groups={','.join(str(g) for g in groups)}" if groups else "--clear-groups"
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", group_option, "--", *command]


def nobody_user() -> OtherUser:
    """``nobody``, checked to run this project's Python; skips where the host cannot do it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a client as another uid")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs a 'nobody' user")
    user = OtherUser("nobody", entry.pw_uid, entry.pw_gid)  # its group is often 'nogroup'
    probe = subprocess.run(
        user.command([PYTHON, "-c", "import os, loadmgrctl; print(os.getuid())"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != str(user.uid):
        pytest.fail(f"{PYTHON} cannot run as nobody: exit {probe.returncode}\n{probe.stdout}\n{probe.stderr}")
    return user


# Runs as the other user: for each byte received on the control socket it connects to the daemon and
# hands the connected socket back (SCM_RIGHTS). The daemon's peer is whoever called connect().
CONNECTOR = r"""
import os, socket, sys
ctrl = socket.socket(fileno=int(sys.argv[2]))
while ctrl.recv(1):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[1])
        socket.send_fds(ctrl, [b"ok"], [s.fileno()])
    except OSError as exc:
        ctrl.send(("error " + str(exc)).encode())
    finally:
        s.close()
"""


class Connector:
    """Connections to the daemon opened by a process of another user and passed to this one."""

    def __init__(self, user: OtherUser, socket_path: Path, *, groups: list[int] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctrl = ours
        self._ctrl.settimeout(30)
        try:
            self.proc = subprocess.Popen(
                user.command([PYTHON, "-I", "-c", CONNECTOR, str(socket_path), str(theirs.fileno())], groups=groups),
                pass_fds=(theirs.fileno(),),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()

    def connect(self, timeout: float = 30.0) -> socket.socket:
        self._ctrl.send(b"c")
        message, fds, _flags, _addr = socket.recv_fds(self._ctrl, 512, 1)
        if not fds:
            raise AssertionError(f"the other user's connector failed: {message.decode(errors='replace')}")
        sock = socket.socket(fileno=fds[0])
        sock.settimeout(timeout)
        return sock

    def close(self) -> None:
        self._ctrl.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def connector(user: OtherUser, socket_path: Path, *, groups: list[int] | None = None) -> Iterator[Connector]:
    c = Connector(user, socket_path, groups=groups)
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------------------- JSON-RPC oracle


def is_valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def is_valid_request(obj: Any) -> bool:
    """A JSON-RPC 2.0 request as docs/protocol.md defines it (envelope only, not the params)."""
    return (
        isinstance(obj, dict)
        and obj.get("jsonrpc") == "2.0"
        and isinstance(obj.get("method"), str)
        and ("id" not in obj or is_valid_id(obj["id"]))
        and (obj.get("params") is None or isinstance(obj["params"], dict | list))
        and set(obj) <= {"jsonrpc", "method", "params", "id"}
    )


def expected_reply_id(obj: Any) -> Any:
    """The id a reply to ``obj`` must carry: its own when valid, else null."""
    if isinstance(obj, dict) and "id" in obj and is_valid_id(obj["id"]):
        return obj["id"]
    return None


def check_response(reply: Any, expected_id: Any, context: str) -> dict[str, Any]:
    """``reply`` is a well-formed JSON-RPC 2.0 response object for ``expected_id``."""
    assert isinstance(reply, dict), f"{context}: a reply must be an object: {reply!r}"
    assert reply.get("jsonrpc") == "2.0", f"{context}: {reply!r}"
    assert set(reply) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), f"{context}: {reply!r}"
    assert reply["id"] == expected_id and type(reply["id"]) is type(expected_id), (
        f"{context}: id {reply['id']!r}, wanted {expected_id!r}"
    )
    if "error" in reply:
        error = reply["error"]
        assert isinstance(error, dict), f"{context}: {reply!r}"
        assert set(error) <= {"code", "message", "data"}, f"{context}: {reply!r}"
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool), f"{context}: {reply!r}"
        assert isinstance(error["message"], str) and error["message"], f"{context}: {reply!r}"
        assert error["code"] != INTERNAL_ERROR, f"{context}: the daemon reports an internal error (a bug): {reply!r}"
    return reply


def expected_replies(payload: bytes) -> list[Callable[[Any, str], None]] | None:
    """What the daemon must answer to one request line: a list of reply checks (empty: no reply),
    or None when the answer is a batch array (checked by ``check_batch``)."""
    if not payload.strip():
        return []
    try:
        decoded = json.loads(payload.decode("utf-8"))  # the protocol is UTF-8, never UTF-16/32
    except (UnicodeDecodeError, ValueError, RecursionError):
        return [lambda reply, ctx: _check_error(reply, None, ctx, {PARSE_ERROR})]
    if isinstance(decoded, list) and decoded:
        return None
    if isinstance(decoded, list):
        return [lambda reply, ctx: _check_error(reply, None, ctx, {INVALID_REQUEST})]
    return _one_expectation(decoded)


def _one_expectation(obj: Any) -> list[Callable[[Any, str], None]]:
    if not is_valid_request(obj):
        return [lambda reply, ctx: _check_error(reply, expected_reply_id(obj), ctx, {INVALID_REQUEST})]
    if "id" not in obj:
        return []  # a notification: no reply
    return [lambda reply, ctx: _check_any(reply, obj["id"], ctx)]


def _check_any(reply: Any, expected_id: Any, context: str) -> None:
    check_response(reply, expected_id, context)


def _check_error(reply: Any, expected_id: Any, context: str, codes: set[int]) -> None:
    check_response(reply, expected_id, context)
    assert "error" in reply and reply["error"]["code"] in codes, f"{context}: wanted an error {codes}: {reply!r}"


def check_batch(items: list[Any], reply: Any, context: str) -> None:
    """A batch array's answer: one reply per non-notification item, in order (none if all are)."""
    checks = [check for item in items for check in _one_expectation(item)]
    if not checks:
        raise AssertionError(f"{context}: a batch of notifications must get no reply, got {reply!r}")
    assert isinstance(reply, list) and len(reply) == len(checks), f"{context}: {len(checks)} replies wanted: {reply!r}"
    for n, (check, one) in enumerate(zip(checks, reply, strict=True)):
        check(one, f"{context} [batch item {n}]")


SENTINEL_ID = "reliability-sentinel-9f1c2e"


def exchange(sock: socket.socket, payload: bytes, context: str) -> list[Any]:
    """Send one request line and a sentinel ping on ``sock``; check the answer to the line against the
    protocol (``check_answer``) and that the connection still serves the sentinel. Returns the decoded
    replies to the line."""
    conn = Conn(sock=sock)
    sentinel = json.dumps(request("ping", {}, SENTINEL_ID)).encode() + b"\n"
    conn.send(payload + b"\n" + sentinel)
    replies = []
    while True:
        line = conn.read_line()
        assert line.endswith(b"\n"), f"{context}: the connection ended before the sentinel's reply: {line[:300]!r}"
        reply = json.loads(line)
        if isinstance(reply, dict) and reply.get("id") == SENTINEL_ID:
            assert "result" in reply, f"{context}: sentinel ping failed: {reply!r}"
            break
        replies.append(reply)
    check_answer(payload, replies, context)
    return replies


def check_answer(payload: bytes, replies: list[Any], context: str) -> None:
    """``replies`` (decoded reply lines) are what the protocol requires as the answer to ``payload``."""
    checks = expected_replies(payload)
    if checks is None:
        items = json.loads(payload)
        if all(is_valid_request(i) and "id" not in i for i in items):
            assert replies == [], f"{context}: a batch of notifications must get no reply: {replies!r}"
        else:
            assert len(replies) == 1, f"{context}: a batch gets one array reply: {replies!r}"
            check_batch(items, replies[0], context)
    else:
        assert len(replies) == len(checks), f"{context}: {len(checks)} replies wanted, got {replies!r}"
        for check, reply in zip(checks, replies, strict=True):
            check(reply, context)
