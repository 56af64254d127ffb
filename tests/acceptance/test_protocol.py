"""The wire protocol as any client sees it: newline-delimited JSON-RPC 2.0 on the Unix socket."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from loadmgrd.repository import load_migrations
from tests.conftest import Daemon, make_daemon, raw_exchange

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
NOT_FOUND = 1001
ALREADY_EXISTS = 1002
REQUEST_TOO_LARGE = 1007
CAP = 4096


class Conn:
    """One client connection that reads newline-framed replies (several per connection)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
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
        """The next reply line; b"" (or a partial line) at end of stream."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def read_json(self) -> Any:
        line = self.read_line()
        assert line.endswith(b"\n"), f"connection ended without a complete reply line: {line!r}"
        return json.loads(line)

    def read_to_eof(self) -> bytes:
        """Everything until the daemon closes its end; fails (timeout) if it never does."""
        data, self._buffer = self._buffer, b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def req(method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id}


def one(daemon: Daemon, obj: Any) -> dict[str, Any]:
    """Send one raw JSON value on a fresh connection; the decoded reply."""
    reply = raw_exchange(daemon.socket, json.dumps(obj).encode() + b"\n")
    assert reply.endswith(b"\n"), f"no reply line for {obj!r}: {reply!r}"
    decoded: dict[str, Any] = json.loads(reply)
    return decoded


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("jsonrpc") == "2.0", reply
    assert "result" not in reply, f"expected an error, got {reply!r}"
    error: dict[str, Any] = reply["error"]
    assert isinstance(error["code"], int) and isinstance(error["message"], str) and error["message"], reply
    return error


def assert_ping(reply: dict[str, Any], request_id: Any) -> None:
    assert reply.get("jsonrpc") == "2.0", reply
    assert reply.get("id") == request_id, reply
    assert "error" not in reply, reply
    assert reply["result"]["schema_version"] == len(load_migrations()), reply


def padded_ping(length: int, request_id: int = 7) -> bytes:
    """A valid ping request line of exactly ``length`` bytes (JSON whitespace as padding), no newline."""
    head = b'{"jsonrpc":"2.0","method":"ping","id":%d' % request_id
    line = head + b" " * (length - len(head) - 1) + b"}"
    assert len(line) == length
    return line


# ---------------------------------------------------------------------------- framing and parsing


def test_malformed_json_is_a_parse_error_and_the_connection_survives(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b'{"jsonrpc": "2.0", "method": "ping", "id": 1\n')  # unterminated object
        conn.request(req("ping", request_id=2))
        first = conn.read_json()
        assert error_of(first)["code"] == PARSE_ERROR
        assert "id" in first and first["id"] is None
        assert_ping(conn.read_json(), 2)


def test_invalid_utf8_is_a_parse_error_and_the_connection_survives(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b'{"jsonrpc":"2.0","method":"ping","id":"\xff\xfe"}\n')
        conn.request(req("ping", request_id="after"))
        first = conn.read_json()
        assert error_of(first)["code"] == PARSE_ERROR
        assert first["id"] is None
        assert_ping(conn.read_json(), "after")


def test_blank_lines_are_ignored(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b"\n   \n\r\n")
        conn.request(req("ping", request_id=3))
        assert_ping(conn.read_json(), 3)


def test_last_request_without_newline_is_still_answered(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(json.dumps(req("ping", request_id=9)).encode())
        conn.sock.shutdown(socket.SHUT_WR)
        assert_ping(conn.read_json(), 9)
        assert conn.read_to_eof() == b""


@pytest.mark.parametrize(
    ("label", "request_obj"),
    [
        ("not an object (number)", 42),
        ("not an object (string)", "ping"),
        ("not an object (null)", None),
        ("missing jsonrpc", {"method": "ping", "id": 1}),
        ("wrong jsonrpc version", {"jsonrpc": "1.0", "method": "ping", "id": 1}),
        ("jsonrpc as a number", {"jsonrpc": 2.0, "method": "ping", "id": 1}),
        ("missing method", {"jsonrpc": "2.0", "id": 1}),
        ("method not a string", {"jsonrpc": "2.0", "method": 5, "id": 1}),
        ("params a string", {"jsonrpc": "2.0", "method": "ping", "params": "x", "id": 1}),
        ("params a number", {"jsonrpc": "2.0", "method": "ping", "params": 3, "id": 1}),
        ("unknown member", {"jsonrpc": "2.0", "method": "ping", "id": 1, "colour": "red"}),
        ("id a boolean", {"jsonrpc": "2.0", "method": "ping", "id": True}),
        ("id an object", {"jsonrpc": "2.0", "method": "ping", "id": {"a": 1}}),
    ],
)
def test_invalid_request_is_refused(daemon: Daemon, label: str, request_obj: Any) -> None:
    reply = one(daemon, request_obj)
    assert error_of(reply)["code"] == INVALID_REQUEST, f"{label}: {reply!r}"
    # the id is echoed only when it is a valid id; never something invalid like true
    assert reply["id"] in (None, 1), f"{label}: {reply!r}"


def test_unknown_method_names_the_method(daemon: Daemon) -> None:
    reply = one(daemon, req("job.frobnicate", request_id=11))
    error = error_of(reply)
    assert error["code"] == METHOD_NOT_FOUND
    assert "job.frobnicate" in error["message"]
    assert reply["id"] == 11


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("job.view", {"job": 5}, "job"),
        ("job.view", {"job": ["a"]}, "job"),
        ("job.view", {}, "job"),
        ("job.view", {"job": "x", "colour": "red"}, "colour"),
        ("process.view", {"name": "p", "nme": "p"}, "nme"),
        ("ping", {"verbose": True}, "verbose"),
        ("listall", {"status": "Sleeping"}, "status"),
        ("event.enable", {"job": "j", "events": "e1"}, "events"),
    ],
)
def test_bad_params_name_the_param(daemon: Daemon, method: str, params: dict[str, Any], param: str) -> None:
    reply = one(daemon, req(method, params, request_id="p"))
    error = error_of(reply)
    assert error["code"] == INVALID_PARAMS, reply
    assert param in error["message"], reply
    assert method in error["message"], reply
    assert error.get("data", {}).get("param") == param, reply
    assert reply["id"] == "p"


def test_positional_params_are_refused(daemon: Daemon) -> None:
    error = error_of(one(daemon, req("job.view", ["some-job"])))
    assert error["code"] == INVALID_PARAMS
    assert "job.view" in error["message"]


def test_pipelined_requests_are_answered_in_order(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b"".join(json.dumps(req("ping", request_id=i)).encode() + b"\n" for i in range(1000)))
        ids = [conn.read_json()["id"] for _ in range(1000)]
    assert ids == list(range(1000))


def test_huge_json_number_is_answered_with_an_error_and_the_connection_survives(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b'{"jsonrpc":"2.0","method":"ping","id":' + b"9" * 5000 + b"}\n")
        conn.request(req("ping", request_id="after"))
        first = conn.read_line()
        assert first, "the daemon closed the connection without answering"
        assert error_of(json.loads(first))["code"] in (PARSE_ERROR, INVALID_REQUEST)
        assert_ping(conn.read_json(), "after")


# ---------------------------------------------------------------------------- batches and notifications


def test_batch_gets_an_array_of_replies_with_matching_ids(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.request([req("ping", request_id=1), req("ping", request_id="two")])
        replies = conn.read_json()
    assert isinstance(replies, list) and len(replies) == 2, replies
    by_id = {r["id"]: r for r in replies}
    assert set(by_id) == {1, "two"}
    assert_ping(by_id[1], 1)
    assert_ping(by_id["two"], "two")


def test_batch_mixes_results_and_errors(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.request([req("ping", request_id=1), req("no.such.method", request_id=2), 17])
        replies = conn.read_json()
    assert isinstance(replies, list) and len(replies) == 3, replies
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for reply in replies:
        by_id.setdefault(reply["id"], []).append(reply)
    assert_ping(by_id[1][0], 1)
    assert error_of(by_id[2][0])["code"] == METHOD_NOT_FOUND
    assert error_of(by_id[None][0])["code"] == INVALID_REQUEST


def test_empty_batch_is_an_invalid_request(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.send(b"[]\n")
        conn.request(req("ping", request_id=5))
        first = conn.read_json()
        assert error_of(first)["code"] == INVALID_REQUEST
        assert first["id"] is None
        assert_ping(conn.read_json(), 5)


def test_notification_gets_no_reply(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.request({"jsonrpc": "2.0", "method": "ping"})
        conn.request({"jsonrpc": "2.0", "method": "job.view", "params": {"job": "nowhere"}})  # app error
        conn.request(req("ping", request_id="after-notification"))
        assert_ping(conn.read_json(), "after-notification")


def test_batch_of_notifications_gets_no_reply(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.request([{"jsonrpc": "2.0", "method": "ping"}, {"jsonrpc": "2.0", "method": "listall"}])
        conn.request([req("ping", request_id=1), {"jsonrpc": "2.0", "method": "ping"}])
        replies = conn.read_json()
    assert isinstance(replies, list) and len(replies) == 1, replies
    assert_ping(replies[0], 1)


def test_notification_with_unknown_method_or_bad_params_gets_no_reply(daemon: Daemon) -> None:
    with Conn(daemon.socket) as conn:
        conn.request({"jsonrpc": "2.0", "method": "no.such.method"})
        conn.request({"jsonrpc": "2.0", "method": "job.view", "params": {"job": 5}})
        conn.request(req("ping", request_id="after"))
        first = conn.read_json()
        assert_ping(first, "after")


# ---------------------------------------------------------------------------- request size cap


@pytest.fixture(scope="module")
def capped_daemon() -> Iterator[Daemon]:
    """A daemon whose [daemon] max_request_bytes is 4096."""
    d = make_daemon()
    text = d.config_file.read_text()
    assert text.count("[daemon]\n") == 1
    d.config_file.write_text(text.replace("[daemon]\n", f"[daemon]\nmax_request_bytes = {CAP}\n"))
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.mark.parametrize("size", [CAP + 1, 3 * CAP, 100_000])
def test_line_over_the_cap_is_refused_and_the_connection_closed(capped_daemon: Daemon, size: int) -> None:
    with Conn(capped_daemon.socket) as conn:
        conn.send(padded_ping(size) + b"\n")
        reply = conn.read_json()
        error = error_of(reply)
        assert error["code"] == REQUEST_TOO_LARGE
        assert str(CAP) in error["message"]
        assert reply["id"] is None
        assert conn.read_to_eof() == b"", "nothing may follow the refusal; the daemon closes cleanly"
    assert capped_daemon.proc is not None and capped_daemon.proc.poll() is None, "daemon died"
    assert_ping(capped_daemon.rpc("ping", request_id=3), 3)


def test_line_of_exactly_the_cap_is_accepted(capped_daemon: Daemon) -> None:
    with Conn(capped_daemon.socket) as conn:
        conn.send(padded_ping(CAP, request_id=8) + b"\n")
        assert_ping(conn.read_json(), 8)
        conn.request(req("ping", request_id=9))  # same connection still in service
        assert_ping(conn.read_json(), 9)


def test_requests_before_an_oversized_line_are_answered(capped_daemon: Daemon) -> None:
    with Conn(capped_daemon.socket) as conn:
        conn.send(json.dumps(req("ping", request_id=1)).encode() + b"\n" + padded_ping(2 * CAP) + b"\n")
        assert_ping(conn.read_json(), 1)
        assert error_of(conn.read_json())["code"] == REQUEST_TOO_LARGE
        assert conn.read_to_eof() == b""


# ---------------------------------------------------------------------------- many clients, rude clients


def _ping_and_listall(path: Path, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    with Conn(path) as conn:
        conn.request(req("ping", request_id=f"ping-{n}"))
        conn.request(req("listall", request_id=f"list-{n}"))
        return conn.read_json(), conn.read_json()


def test_fifty_concurrent_clients(daemon: Daemon) -> None:
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda n: _ping_and_listall(daemon.socket, n), range(50)))
    assert len(results) == 50
    for n, (ping, listing) in enumerate(results):
        assert_ping(ping, f"ping-{n}")
        assert listing["id"] == f"list-{n}" and "error" not in listing, listing
        assert isinstance(listing["result"]["jobs"], list)


def test_client_that_leaves_before_the_reply_does_not_hurt_the_daemon(daemon: Daemon) -> None:
    for n in range(20):
        conn = Conn(daemon.socket)
        conn.request(req("listall", request_id=n))
        conn.request(req("ping", request_id=n))
        conn.close()
    half = Conn(daemon.socket)  # half-written request, then gone
    half.send(b'{"jsonrpc":"2.0","meth')
    half.close()
    assert daemon.proc is not None and daemon.proc.poll() is None, "daemon died"
    assert_ping(daemon.rpc("ping", request_id="still"), "still")
    with ThreadPoolExecutor(max_workers=5) as pool:
        for ping, _listing in pool.map(lambda n: _ping_and_listall(daemon.socket, n), range(5)):
            assert "result" in ping


def test_concurrent_writers_all_succeed(daemon: Daemon) -> None:
    names = [f"proto-conc-{n}" for n in range(40)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        replies = list(pool.map(lambda name: daemon.rpc("process.add", {"name": name}), names))
    assert [r.get("result") for r in replies] == [{"process": n, "outcome": "created"} for n in names]
    for name in names:
        assert daemon.rpc("process.view", {"name": name})["result"]["process"]["process_name"] == name


def test_client_that_does_not_read_does_not_block_others(daemon: Daemon) -> None:
    with Conn(daemon.socket) as hog:
        # ~1.5 MB of replies that nobody reads: the daemon must stall only this connection
        hog.send(b"".join(json.dumps(req("ping", request_id=i)).encode() + b"\n" for i in range(5000)))
        assert_ping(hog.read_json(), 0)
        with ThreadPoolExecutor(max_workers=5) as pool:
            for ping, listing in pool.map(lambda n: _ping_and_listall(daemon.socket, n), range(5)):
                assert "result" in ping and "result" in listing
    assert_ping(daemon.rpc("ping", request_id="after-hog"), "after-hog")


def test_client_reset_during_a_request_is_not_logged_as_an_error(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    failures_before = daemon.log().count("connection handler failed")
    rude = Conn(daemon.socket)
    sync = None
    try:
        rude.request(req("ping", request_id=1))
        poller = select.poll()
        poller.register(rude.sock, select.POLLIN)
        assert poller.poll(30_000), "no reply to the first request"  # the reply is waiting, unread
        os.kill(pid, signal.SIGSTOP)
        os.waitid(os.P_PID, pid, os.WSTOPPED)  # the daemon is frozen: the next steps reach it at once
        rude.request(req("ping", request_id=2))
        rude.close()  # with an unread reply: the daemon's end is reset
        sync = Conn(daemon.socket)
        sync.request(req("ping", request_id="sync"))
    finally:
        os.kill(pid, signal.SIGCONT)
        rude.close()
    # the sync ping needs the repository after the rude request did: once it is answered, the daemon
    # has finished with the rude connection
    with sync:
        assert_ping(sync.read_json(), "sync")
    assert daemon.proc.poll() is None
    new_log = daemon.log()
    assert new_log.count("connection handler failed") == failures_before, new_log[-3000:]


# ---------------------------------------------------------------------------- application errors


def test_missing_job_is_not_found_naming_the_job(daemon: Daemon) -> None:
    reply = daemon.rpc("job.view", {"job": "no-such-job-xyz"}, request_id=21)
    error = error_of(reply)
    assert error["code"] == NOT_FOUND
    assert "no-such-job-xyz" in error["message"]
    assert reply["id"] == 21


def test_duplicate_process_add_updates_instead_of_failing(daemon: Daemon) -> None:
    first = daemon.rpc("process.add", {"name": "proto-dup", "subject_area": "first"})
    assert first["result"] == {"process": "proto-dup", "outcome": "created"}, first
    second = daemon.rpc("process.add", {"name": "proto-dup", "subject_area": "second"})
    assert second["result"] == {"process": "proto-dup", "outcome": "updated"}, second
    view = daemon.rpc("process.view", {"name": "proto-dup"})
    assert view["result"]["process"]["subject_area"] == "second", view


def test_rename_onto_an_existing_process_is_already_exists(daemon: Daemon) -> None:
    for name in ("proto-a", "proto-b"):
        assert "result" in daemon.rpc("process.add", {"name": name})
    reply = daemon.rpc("process.rename", {"old": "proto-a", "new": "proto-b"})
    error = error_of(reply)
    assert error["code"] == ALREADY_EXISTS
    assert "proto-b" in error["message"]
    # nothing changed: both still exist under their own names
    for name in ("proto-a", "proto-b"):
        assert daemon.rpc("process.view", {"name": name})["result"]["process"]["process_name"] == name


def test_out_of_range_integer_param_is_invalid_params(daemon: Daemon) -> None:
    reply = daemon.rpc("process.add", {"name": "proto-big", "currency_start_offset": 10**30})
    error = error_of(reply)
    assert error["code"] in (INVALID_PARAMS, 1004), reply
    assert "currency_start_offset" in error["message"], reply
    assert daemon.rpc("process.view", {"name": "proto-big"})["error"]["code"] == NOT_FOUND
