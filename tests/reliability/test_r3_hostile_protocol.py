"""R3 — hostile protocol input against a running daemon.

- hypothesis-generated JSON-RPC requests (arbitrary JSON for ``jsonrpc``/``method``/``params``/``id``,
  real method names with random params, extra members, batches), sent as root with read-only and
  unknown method names only: each line gets a valid JSON-RPC response with the right id (none for
  a valid notification), never an internal error, and the connection keeps serving;
- the same with admin method names, from connections opened by ``nobody`` (passed to this process
  with SCM_RIGHTS): every valid request is refused with 1003;
- random bytes lines, and truncated lines (no newline, then the end of the stream or a rude close);
- one line over ``max_request_bytes`` (20 MB; 100 MB in long mode) → error 1007 and a clean close;
- hundreds of idle connections (300; 1,000 in long mode) while another client's ping is answered
  promptly; the daemon's file descriptors come back when they close;
- clients that leave in the middle of a multi-megabyte response;
- throughout: the repository is unchanged (every row of every table), the daemon's memory stays
  bounded, and its log shows no failed connection handler.

A lone-surrogate id once broke the reply (``test_string_id_with_a_lone_surrogate_escape_is_answered``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import loadmgrd.handlers  # noqa: F401 - registers the methods
from loadmgrd.rpc import METHODS
from tests.conftest import Daemon
from tests.reliability.support import (
    BASE_SEED,
    INVALID_REQUEST,
    LONG,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PERMISSION_DENIED,
    REQUEST_TOO_LARGE,
    Conn,
    DaemonFactory,
    OtherUser,
    call,
    check_answer,
    connector,
    daemon_pid,
    db_dump,
    discard_daemon,
    dump_difference,
    exchange,
    fd_count,
    job_csv,
    new_daemon,
    request,
    rpc,
    sized,
    step,
    vmrss_kb,
    wait_for_status,
    wait_until,
)

READ_METHODS = sorted(name for name, m in METHODS.items() if not m.admin)
ADMIN_METHODS = sorted(name for name, m in METHODS.items() if m.admin)
KNOWN_STRINGS = ["fz-job", "big-job", "fz-proc", "fz", "tbl", "ev1", "ALL", "nope", "", "Running", "csv", "json"]
BIG_JOB_STEPS = 100
BIG_COMMAND_BYTES = 50_000
MEMORY_LIMIT_KB = 300 * 1024
MEMORY_GROWTH_KB = 100 * 1024
EXAMPLES = sized(200, 10_000)
SMALL_EXAMPLES = sized(100, 2_000)
NOBODY_EXAMPLES = sized(50, 1_000)
REFUSALS = (INVALID_REQUEST, PARSE_ERROR, METHOD_NOT_FOUND, PERMISSION_DENIED)
SLOW = pytest.mark.timeout(1800 if LONG else 120)
FUZZ_SETTINGS = {
    "deadline": None,
    "database": None,  # nothing written to .hypothesis/: LOADMGR_SEED replays a run
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# ---------------------------------------------------------------------------- the daemon under attack


class Target:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pid = daemon_pid(daemon)
        self.baseline_kb = 0
        self.peak_kb = 0
        self.cases = 0

    def sample_memory(self) -> int:
        rss = vmrss_kb(self.pid)
        self.peak_kb = max(self.peak_kb, rss)
        return rss

    def connect(self) -> socket.socket:
        """A blocking connect: with a timeout set, a Unix socket connect fails with EAGAIN at once
        when the listen backlog is full instead of waiting for the daemon to accept."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.daemon.socket))
        sock.settimeout(30)
        return sock


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A daemon with jobs (one with a finished run and events), a process, a currency and a job whose
    view is several megabytes, for the read methods to have something to read."""
    d = new_daemon()
    try:
        d.start()
        call(
            d,
            "job.import",
            {"job": "fz-job", "file_name": "fz.csv", "content": job_csv([step(10, "echo one"), step(20, "echo two")])},
        )
        call(d, "event.add", {"job": "fz-job", "event": "ev1", "item": "/nonexistent/fz.flag", "action": "create"})
        call(d, "start", {"name": "fz-job", "skip": ["create"]})
        wait_for_status(d, "fz-job", "Completed")
        call(d, "process.add", {"name": "fz-proc", "subject_area": "fuzz"})
        call(d, "currency.configure", {"schema": "fz", "table": "tbl", "column": "load_dt"})
        big = [step(n, "echo " + "x" * BIG_COMMAND_BYTES) for n in range(1, BIG_JOB_STEPS + 1)]
        call(d, "job.import", {"job": "big-job", "file_name": "big.csv", "content": job_csv(big)})
        t = Target(d)
        t.baseline_kb = t.sample_memory()
        yield t
    finally:
        discard_daemon(d)


@pytest.fixture
def unchanged(target: Target) -> Iterator[None]:
    """The test must leave every row of every table as it found it, and the daemon healthy."""
    before = db_dump(target.daemon.database)
    failures_before = target.daemon.log().count("connection handler failed")
    yield
    assert target.daemon.proc is not None and target.daemon.proc.poll() is None, "loadmgrd died"
    after = db_dump(target.daemon.database)
    assert after == before, f"hostile input changed the repository: {dump_difference(before, after)}"
    log = target.daemon.log()
    assert log.count("connection handler failed") == failures_before, log[-5000:]
    target.sample_memory()


# ---------------------------------------------------------------------------- strategies

MISSING = object()
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
plausible = (
    json_values | st.sampled_from(KNOWN_STRINGS) | st.integers(-3, 12) | st.lists(st.sampled_from(KNOWN_STRINGS))
)


def method_names(names: list[str]) -> st.SearchStrategy[Any]:
    unknown = st.text(max_size=30).filter(lambda s: s not in METHODS)
    return st.one_of(st.sampled_from(names), st.sampled_from(names), unknown, json_values)


@st.composite
def params_for(draw: st.DrawFn, method: Any) -> Any:
    """Params of a real method with its own member names (and now and then another), or anything."""
    if isinstance(method, str) and method in METHODS and draw(st.integers(0, 3)) > 0:
        keys = list(METHODS[method].params.model_fields) or ["x"]
        names = st.sampled_from(keys) if draw(st.booleans()) else st.sampled_from(keys) | st.text(max_size=8)
        return draw(st.dictionaries(names, plausible, max_size=len(keys) + 1))
    return draw(st.one_of(st.just(MISSING), st.none(), st.just({}), st.just([]), json_values))


def tame(obj: Any) -> Any:
    """Long polls would make an example wait up to 30 s: their ``wait`` is forced to 0."""
    if isinstance(obj, dict) and obj.get("method") in ("logs", "watch") and isinstance(obj.get("params"), dict):
        params = dict(obj["params"])
        if "wait" in params:
            params["wait"] = 0
        return {**obj, "params": params}
    return obj


valid_ids = st.one_of(st.integers(), st.text(max_size=12), st.none())


@st.composite
def envelopes(draw: st.DrawFn, names: list[str]) -> Any:
    """A request object: mostly a well-formed envelope around a real (or unknown) method with random
    params, else anything in any member, missing members, extra members, or not an object at all."""
    if draw(st.integers(0, 2)) > 0:
        method = draw(st.one_of(st.sampled_from(names), st.sampled_from(names), method_names(names)))
        obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        params = draw(params_for(method))
        if params is not MISSING:
            obj["params"] = params
        request_id = draw(st.one_of(valid_ids, valid_ids, valid_ids, st.just(MISSING)))
        if request_id is not MISSING:
            obj["id"] = request_id
        return tame(obj)
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    obj = {}
    jsonrpc = draw(st.one_of(st.just("2.0"), st.just(MISSING), json_values))
    if jsonrpc is not MISSING:
        obj["jsonrpc"] = jsonrpc
    method = draw(st.one_of(method_names(names), st.just(MISSING)))
    if method is not MISSING:
        obj["method"] = method
    params = draw(params_for(method))
    if params is not MISSING:
        obj["params"] = params
    request_id = draw(st.one_of(valid_ids, st.just(MISSING), json_values))
    if request_id is not MISSING:
        obj["id"] = request_id
    if draw(st.booleans()):
        obj.update(draw(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=2)))
    return tame(obj)


def lines(names: list[str]) -> st.SearchStrategy[bytes]:
    """One request line (no newline): a request, or a batch of them, as JSON text."""
    document = st.one_of(envelopes(names), envelopes(names), envelopes(names), st.lists(envelopes(names), max_size=5))
    return st.builds(
        lambda doc, ascii_only: json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8"), document, st.booleans()
    )


def context(payload: bytes) -> str:
    return f"[LOADMGR_SEED={BASE_SEED}] request {payload[:400]!r}"


# ---------------------------------------------------------------------------- requests


@SLOW
def test_hypothesis_requests_read_and_unknown_methods_as_root(target: Target, unchanged: None) -> None:
    @hypothesis_seed(BASE_SEED)
    @settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
    @given(payload=lines(READ_METHODS))
    def one(payload: bytes) -> None:
        target.cases += 1
        with target.connect() as sock:
            exchange(sock, payload, context(payload))

    one()


@SLOW
def test_hypothesis_admin_requests_from_nobody_are_refused(target: Target, nobody: OtherUser, unchanged: None) -> None:
    with connector(nobody, target.daemon.socket) as other:

        @hypothesis_seed(BASE_SEED)
        @settings(max_examples=NOBODY_EXAMPLES, **FUZZ_SETTINGS)
        @given(payload=lines(ADMIN_METHODS))
        def one(payload: bytes) -> None:
            target.cases += 1
            with other.connect() as sock:
                replies = exchange(sock, payload, context(payload))
            flat = [r for reply in replies for r in (reply if isinstance(reply, list) else [reply])]
            for reply in flat:
                assert "result" not in reply, f"{context(payload)}: accepted from nobody: {reply!r}"
                # the method is looked up, then the caller's right checked, and only then the params
                assert reply["error"]["code"] in REFUSALS, f"{context(payload)}: {reply!r}"

        one()


@SLOW
def test_hypothesis_random_bytes_lines(target: Target, unchanged: None) -> None:
    @hypothesis_seed(BASE_SEED)
    @settings(max_examples=SMALL_EXAMPLES, **FUZZ_SETTINGS)
    @given(payload=st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))
    def one(payload: bytes) -> None:
        target.cases += 1
        with target.connect() as sock:
            exchange(sock, payload, context(payload))

    one()


@SLOW
def test_hypothesis_truncated_lines(target: Target, unchanged: None) -> None:
    """A line without its newline, then the end of the stream: answered like a whole line, then a clean
    close; or the client vanishes at once (the daemon must not mind)."""

    @hypothesis_seed(BASE_SEED)
    @settings(max_examples=SMALL_EXAMPLES, **FUZZ_SETTINGS)
    @given(line=lines(READ_METHODS), cut=st.floats(0, 1), rude=st.booleans())
    def one(line: bytes, cut: float, rude: bool) -> None:
        target.cases += 1
        payload = line[: int(len(line) * cut)]
        with target.connect() as sock:
            sock.sendall(payload)
            if rude:
                return
            sock.shutdown(socket.SHUT_WR)
            data = Conn(sock=sock).read_to_eof()
        assert data == b"" or data.endswith(b"\n"), f"{context(payload)}: partial reply {data[-200:]!r}"
        check_answer(payload, [json.loads(x) for x in data.splitlines()], context(payload))

    one()
    assert target.daemon.rpc("ping")["result"]["pid"] == target.pid


# ---------------------------------------------------------------------------- size, numbers, rudeness


def send_huge_line(target: Target, size: int) -> tuple[dict[str, Any], bytes]:
    """One ``size``-byte request line (a ping with padding); the reply and whatever followed it."""
    head = b'{"jsonrpc":"2.0","method":"ping","id":"huge","params":{"pad":"'
    chunk = b"x" * (1 << 20)
    with target.connect() as sock:
        sent = 0
        try:
            sock.sendall(head)
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b'"}}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused the line and closed: expected once it is over the cap
        conn = Conn(sock=sock)
        reply = conn.read_json()
        rest = conn.read_to_eof()
    return reply, rest


@SLOW
def test_oversized_line_is_refused_with_1007_and_a_clean_close(target: Target, unchanged: None) -> None:
    size = (100 if LONG else 20) * 1000 * 1000
    pings: list[float] = []
    stop = threading.Event()

    def others() -> None:  # another client keeps being served meanwhile
        while not stop.is_set():
            began = time.monotonic()
            assert target.daemon.rpc("ping")["result"]["pid"] == target.pid
            pings.append(time.monotonic() - began)

    with ThreadPoolExecutor(max_workers=1) as pool:
        background = pool.submit(others)
        try:
            for _ in range(2):
                reply, rest = send_huge_line(target, size)
                target.cases += 1
                assert reply["id"] is None and reply["error"]["code"] == REQUEST_TOO_LARGE, reply
                assert str(16 * 1024 * 1024) in reply["error"]["message"], reply
                assert rest == b"", f"nothing may follow the refusal: {rest[:200]!r}"
                target.sample_memory()
        finally:
            stop.set()
        background.result(timeout=60)
    assert pings and max(pings) < 5.0, f"ping latency while huge lines arrived: max {max(pings):.2f} s"
    assert vmrss_kb(target.pid) < MEMORY_LIMIT_KB


@SLOW
def test_idle_connections_do_not_starve_other_clients(target: Target, unchanged: None) -> None:
    count = sized(300, 1000)
    fds_before = fd_count(target.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(count):
            idle.append(target.connect())
        wait_until(lambda: fd_count(target.pid) >= fds_before + count, 30, f"the daemon accepting {count} connections")
        began = time.monotonic()
        reply = target.daemon.rpc("ping", request_id="busy")
        took = time.monotonic() - began
        assert reply["result"]["pid"] == target.pid
        assert took < 2.0, f"ping took {took:.2f} s with {count} idle connections"
        for i in (0, count // 2, count - 1):  # the idle ones still work too
            with Conn(sock=idle[i]) as conn:
                conn.request(request("ping", {}, i))
                assert conn.read_json()["id"] == i
        target.sample_memory()
    finally:
        for sock in idle:
            sock.close()
    target.cases += count
    wait_until(lambda: fd_count(target.pid) <= fds_before + 2, 30, "the daemon closing the idle connections")


@SLOW
def test_clients_leaving_in_the_middle_of_a_large_response(target: Target, unchanged: None) -> None:
    with target.connect() as sock:
        conn = Conn(sock=sock)
        conn.request(request("job.view", {"job": "big-job"}, "whole"))
        whole = conn.read_line()
    assert len(whole) > BIG_JOB_STEPS * BIG_COMMAND_BYTES, "the response is not large"
    for n in range(sized(20, 200)):
        with target.connect() as sock:
            sock.sendall(json.dumps(request("job.view", {"job": "big-job"}, n)).encode() + b"\n")
            assert sock.recv(64), "no start of the response"
        target.cases += 1
        if n % 5 == 0:
            assert target.daemon.rpc("ping", request_id=n)["id"] == n
    with ThreadPoolExecutor(max_workers=5) as pool:
        replies = list(pool.map(lambda n: target.daemon.rpc("listall", request_id=n), range(10)))
    assert all("result" in r for r in replies), replies
    assert target.sample_memory() < MEMORY_LIMIT_KB


def test_numbers_and_nesting_at_the_limits(target: Target, unchanged: None) -> None:
    """Deterministic corner cases a generator rarely reaches."""
    payloads = [
        b'{"jsonrpc":"2.0","method":"ping","id":' + b"9" * 4300 + b"}",
        b'{"jsonrpc":"2.0","method":"ping","id":' + b"9" * 4301 + b"}",
        b'{"jsonrpc":"2.0","method":"history","params":{"job":"fz-job","limit":1e400},"id":1}',
        b'{"jsonrpc":"2.0","method":"history","params":{"job":"fz-job","limit":NaN},"id":2}',
        b'{"jsonrpc":"2.0","method":"ping","params":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b',"id":3}',
        b'{"jsonrpc":"2.0","method":"job.view","params":{"job":' + b"[" * 900 + b"]" * 900 + b'},"id":4}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"jsonrpc":"2.0","method":"ping","id":5,"id":6}',
        b'{"jsonrpc":"2.0","method":"job.export","params":{"job":"a\\u0000b"},"id":7}',
        b'{"jsonrpc":"2.0","method":"ping","params":{"\\ud800":1},"id":8}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"ping","id":9}',
        b"[" + b",".join([b'{"jsonrpc":"2.0","method":"ping","id":1}'] * 2000) + b"]",
        b'{"jsonrpc":"2.0","method":"logs","params":{"job":"fz-job","offset":-1},"id":10}',
        b'{"jsonrpc":"2.0","method":"logs","params":{"job":"fz-job","offset":99999999999},"id":11}',
        b'{"jsonrpc":"2.0","method":"history","params":{"job":"fz-job","limit":10000},"id":12}',
        b'{"jsonrpc":"2.0","method":"watch","params":{"names":["fz-job","nope"],"since":-1},"id":13}',
    ]
    for payload in payloads:
        with target.connect() as sock:
            exchange(sock, payload, context(payload))
        target.cases += 1


def test_lone_surrogate_escapes_that_are_not_echoed_are_answered(target: Target, unchanged: None) -> None:
    """Surrogate escapes where the daemon does not echo them back are answered (contrast with the bug below)."""
    for payload in (
        b'{"jsonrpc":"2.0","method":"\\ud800","id":1}',
        b'{"jsonrpc":"2.0","method":"job.view","params":{"job":"\\udc80"},"id":2}',
    ):
        with target.connect() as sock:
            exchange(sock, payload, context(payload))


def test_lines_in_utf16_or_utf32_are_parse_errors(target: Target, unchanged: None) -> None:
    """The wire is UTF-8: NUL bytes never make the daemon guess UTF-16/32 (found by R3: b"\\x000"
    was read as UTF-16 for the number 0)."""
    ping = '{"jsonrpc":"2.0","method":"ping","id":1}'
    for payload in (b"\x000", b"0\x00", ping.encode("utf-16-be"), ping.encode("utf-16-le"), ping.encode("utf-32-be")):
        with target.connect() as sock:
            replies = exchange(sock, payload, context(payload))
            assert [r["error"]["code"] for r in replies] == [PARSE_ERROR], f"{payload!r}: {replies!r}"
            target.cases += 1


def test_string_id_with_a_lone_surrogate_escape_is_answered(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()  # a daemon of its own: the failure leaves a traceback in the daemon's log
    d.start()
    payload = b'{"jsonrpc":"2.0","method":"ping","id":"\\ud800"}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(d.socket))
        exchange(sock, payload, context(payload))
    assert "connection handler failed" not in d.log()


# ---------------------------------------------------------------------------- the end


def test_memory_stayed_bounded(target: Target) -> None:
    """After everything above (this module's last test): RSS under 300 MB and grown < 100 MB."""
    rss = target.sample_memory()
    assert target.peak_kb < MEMORY_LIMIT_KB, f"peak VmRSS {target.peak_kb} kB"
    assert rss - target.baseline_kb < MEMORY_GROWTH_KB, (
        f"VmRSS grew from {target.baseline_kb} kB to {rss} kB (peak {target.peak_kb} kB) over {target.cases} cases"
    )
    print(f"R3: {target.cases} hostile cases; VmRSS {target.baseline_kb} kB -> {rss} kB (peak {target.peak_kb} kB)")
    assert rpc(target.daemon, "repo.check")["result"]["ok"] is True
