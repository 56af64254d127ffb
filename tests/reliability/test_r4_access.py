"""R4 — access control with a real second uid (``nobody`` through setpriv), beyond test_access.py.

- every admin method x every form of request (valid params that would succeed, no params, wrong
  types, positional params, unknown members, identity claims in params, notification, batch), all
  pipelined on connections ``nobody`` opened: each refused with 1003 (notifications unanswered),
  and nothing changed — not the repository, not the run states, not the file system;
- every read method answers ``nobody`` exactly what it answers root, on real data (a finished run
  with its log, events, a process, a currency, a schedule), and ``logs`` serves ``nobody`` a run
  log that ``nobody`` cannot open itself;
- the connecting process is the peer: a connection ``nobody`` opened and handed to root (SCM_RIGHTS)
  is still nobody's, whatever root writes on it — and, the other way round, a connection root opened
  stays root's in whichever hands it ends (the documented SO_PEERCRED semantics: the credentials are
  taken at connect());
- ``[daemon] socket_mode`` decides who may connect at all.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loadmgrd.handlers  # noqa: F401 - registers the methods
from loadmgrd.rpc import METHODS
from tests.conftest import PYTHON, Daemon
from tests.reliability.support import (
    PERMISSION_DENIED,
    Conn,
    DaemonFactory,
    OtherUser,
    call,
    connector,
    db_dump,
    discard_daemon,
    dump_difference,
    job_csv,
    new_daemon,
    request,
    step,
    wait_for_status,
)

JOB_CSV = job_csv([step(10, "echo secret-line-of-the-run"), step(20, "true")])


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = new_daemon()
    try:
        d.start()
        call(d, "job.import", {"job": "r4-job", "file_name": "r4.csv", "content": JOB_CSV, "group": "r4-group"})
        call(d, "job.import", {"job": "r4-other", "file_name": "r4.csv", "content": JOB_CSV})
        call(d, "event.add", {"job": "r4-job", "event": "ev1", "item": "/nonexistent/r4.flag", "action": "create"})
        call(d, "start", {"name": "r4-job", "skip": ["create"]})
        wait_for_status(d, "r4-job", "Completed")
        call(d, "process.add", {"name": "r4-proc", "subject_area": "sales"})
        call(d, "process.add", {"name": "r4-proc2"})
        call(d, "currency.configure", {"schema": "r4", "table": "tbl", "column": "load_dt"})
        call(d, "currency.configure", {"schema": "r4", "table": "tbl2", "column": "load_dt"})
        call(d, "link.create", {"process": "r4-proc", "schema": "r4", "table": "tbl"})
        call(d, "schedule.add", {"name": "r4-other", "cron": "0 3 * * *"})
        yield d
    finally:
        discard_daemon(d)


def valid_admin_params(tmp: Path) -> dict[str, dict[str, Any]]:
    """For each admin method, params that would succeed (and change something) for an admin."""
    return {
        "currency.configure": {"schema": "r4", "table": "newtbl", "column": "load_dt"},
        "currency.remove": {"schema": "r4", "table": "tbl2"},
        "currency.rename": {"old_schema": "r4", "old_table": "tbl2", "new_schema": "r4", "new_table": "tbl3"},
        "event.add": {"job": "r4-job", "event": "ev2", "item": str(tmp / "ev2.flag")},
        "event.disable": {"job": "r4-job", "events": ["ev1"]},
        "event.enable": {"job": "r4-job", "events": ["ev1"]},
        "event.remove": {"job": "r4-job", "events": ["ev1"]},
        "event.rename": {"job": "r4-job", "old": "ev1", "new": "ev9"},
        "job.group": {"job": "r4-job", "group": "elsewhere"},
        "job.import": {"job": "r4-new", "file_name": "new.csv", "content": JOB_CSV},
        "job.remove": {"job": "r4-other"},
        "job.rename": {"old": "r4-job", "new": "r4-renamed"},
        "job.reset": {"job": "r4-job"},
        "link.create": {"process": "r4-proc2", "schema": "r4", "table": "tbl2"},
        "link.remove": {"process": "r4-proc", "schema": "r4", "table": "tbl"},
        "notify.test": {},
        "pause": {"name": "ALL"},
        "process.add": {"name": "r4-new-proc"},
        "process.remove": {"name": "r4-proc2"},
        "process.rename": {"old": "r4-proc2", "new": "r4-proc3"},
        "process.update": {"name": "r4-proc", "subject_area": "changed"},
        "repo.backup": {"path": str(tmp / "backup.db")},
        "repo.create": {},
        "repo.maintenance": {"enabled": True},
        "resume": {"name": "r4-job"},
        "schedule.add": {"name": "r4-job", "cron": "* * * * *"},
        "schedule.disable": {"name": "r4-other"},
        "schedule.enable": {"name": "r4-other"},
        "schedule.remove": {"name": "r4-other"},
        "start": {"name": "r4-other"},
        "stop": {"name": "ALL", "now": True},
    }


def variants(method: str, valid: dict[str, Any]) -> list[Any]:
    """The forms of one admin request: each must be refused before anything else is looked at."""
    wrong_types = {key: [1, {"x": None}] for key in valid} or {"x": 1}
    claims = {**valid, "uid": 0, "user": "root", "admin": True, "peer": {"uid": 0, "gid": 0}}
    return [
        request(method, valid, f"{method}/valid"),
        request(method, {}, f"{method}/empty"),
        request(method, None, f"{method}/null"),
        {"jsonrpc": "2.0", "method": method, "id": f"{method}/no-params"},
        request(method, [], f"{method}/positional-empty"),
        request(method, ["r4-job", 1], f"{method}/positional"),
        request(method, wrong_types, f"{method}/wrong-types"),
        request(method, {**valid, "colour": "red"}, f"{method}/unknown-member"),
        request(method, claims, f"{method}/claims"),
        {"jsonrpc": "2.0", "method": method, "params": valid},  # notification: carried out? never
    ]


def test_every_admin_method_in_every_form_is_refused_for_nobody(
    populated: Daemon, nobody: OtherUser, tmp_path: Path
) -> None:
    d = populated
    valid = valid_admin_params(tmp_path)
    admin = sorted(name for name, m in METHODS.items() if m.admin)
    assert sorted(valid) == admin, f"admin methods without params in this test: {set(admin) ^ set(valid)}"
    for name in admin:  # the valid params really are valid: a refusal is about the caller only
        METHODS[name].params.model_validate(valid[name])
    before = db_dump(d.database)
    logs_before = sorted(p.name for p in (d.home / "logs").iterdir())

    forms = [(name, form) for name in admin for form in variants(name, valid[name])]
    expected_ids = [form["id"] for _, form in forms if "id" in form]
    with connector(nobody, d.socket) as other, Conn(sock=other.connect()) as conn:
        conn.send(b"".join(json.dumps(form).encode() + b"\n" for _, form in forms))
        conn.request([form for _, form in forms])  # and everything again as one batch
        conn.request(request("ping", {}, "sentinel"))
        replies = [conn.read_json() for _ in range(len(expected_ids))]
        batch = conn.read_json()
        sentinel = conn.read_json()

    assert sentinel["id"] == "sentinel" and sentinel["result"]["peer"]["uid"] == nobody.uid, sentinel
    assert [r["id"] for r in replies] == expected_ids, "notifications were answered, or replies are missing"
    assert isinstance(batch, list) and [r["id"] for r in batch] == expected_ids, batch
    for reply in [*replies, *batch]:
        assert "result" not in reply, f"accepted from nobody: {reply!r}"
        assert reply["error"]["code"] == PERMISSION_DENIED, reply
        method = str(reply["id"]).split("/")[0]
        assert method in reply["error"]["message"], reply
    after = db_dump(d.database)
    assert after == before, f"refused requests changed the repository: {dump_difference(before, after)}"
    assert sorted(p.name for p in (d.home / "logs").iterdir()) == logs_before, "a run was started"
    assert not (tmp_path / "backup.db").exists(), "repo.backup wrote a file for nobody"
    assert call(d, "ping")["maintenance_mode"] is False
    assert call(d, "ping")["runs"] == {}
    print(f"R4: {len(forms)} admin request forms x 2 (lines and batch), {len(admin)} methods, all refused")


READ_PARAMS: dict[str, dict[str, Any]] = {
    "currency.view": {"schema": "r4", "table": "tbl"},
    "event.view": {"job": "r4-job"},
    "history": {"job": "r4-job"},
    "job.export": {"job": "r4-job", "format": "json"},
    "job.view": {"job": "r4-job"},
    "listall": {},
    "logs": {"job": "r4-job"},
    "ping": {},
    "process.view": {"name": "r4-proc"},
    "repo.check": {},
    "repo.info": {},
    "schedule.list": {},
    "status": {"job": "r4-job"},
    "watch": {"names": ["r4-group"]},
}
VOLATILE = {"uptime", "elapsed", "peer", "pid", "version"}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_every_read_method_answers_nobody_as_it_answers_root(populated: Daemon, nobody: OtherUser) -> None:
    d = populated
    read = sorted(name for name, m in METHODS.items() if not m.admin)
    assert sorted(READ_PARAMS) == read, f"read methods without params in this test: {set(read) ^ set(READ_PARAMS)}"
    before = db_dump(d.database)
    with connector(nobody, d.socket) as other, Conn(sock=other.connect()) as conn:
        for name in read:
            conn.request(request(name, READ_PARAMS[name], name))
        theirs = {r["id"]: r for r in (conn.read_json() for _ in read)}
    with Conn(d.socket) as conn:
        for name in read:
            conn.request(request(name, READ_PARAMS[name], name))
        ours = {r["id"]: r for r in (conn.read_json() for _ in read)}
    for name in read:
        assert "result" in theirs[name], f"{name} refused for nobody: {theirs[name]}"
        assert _stable(theirs[name]["result"]) == _stable(ours[name]["result"]), f"{name} differs for nobody"
    assert theirs["ping"]["result"]["peer"] == {"uid": nobody.uid, "user": "nobody", "admin": False}
    assert "secret-line-of-the-run" in theirs["logs"]["result"]["content"]
    assert db_dump(d.database) == before

    # the log file itself is not readable by nobody (0640, root): the daemon is the only way in
    log_file = theirs["logs"]["result"]["log_file"]
    direct = subprocess.run(nobody.command(["cat", log_file]), capture_output=True, text=True, timeout=60, check=False)
    assert direct.returncode != 0 and "secret-line-of-the-run" not in direct.stdout, direct
    cli = subprocess.run(
        nobody.command([PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), "logs", "r4-job"]),
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0 and "secret-line-of-the-run" in cli.stdout, cli


# Receives a connected socket over the control socket whose fd is argv[2] (SCM_RIGHTS), writes the
# request argv[1] on it, prints the reply line.
RECEIVER = r"""
import socket, sys
ctrl = socket.socket(fileno=int(sys.argv[2]))
_msg, fds, _flags, _addr = socket.recv_fds(ctrl, 16, 1)
s = socket.socket(fileno=fds[0])
s.settimeout(30)
s.sendall(sys.argv[1].encode() + b"\n")
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""


def test_the_connecting_process_is_the_peer_whoever_writes(populated: Daemon, nobody: OtherUser) -> None:
    d = populated
    before = db_dump(d.database)
    # nobody connects, root writes: still nobody's connection
    with connector(nobody, d.socket) as other, Conn(sock=other.connect()) as conn:
        conn.request(request("ping", {}, 1))
        assert conn.read_json()["result"]["peer"]["uid"] == nobody.uid
        conn.request(request("process.add", {"name": "r4-smuggled"}, 2))
        refused = conn.read_json()
    assert refused["error"]["code"] == PERMISSION_DENIED, refused
    assert db_dump(d.database) == before

    # root connects, nobody writes: the daemon sees root (credentials are taken at connect())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as root_conn:
        root_conn.connect(str(d.socket))
        with subprocess.Popen(
            nobody.command(
                [PYTHON, "-I", "-c", RECEIVER, json.dumps(request("ping", {}, "handed")), str(theirs.fileno())]
            ),
            pass_fds=(theirs.fileno(),),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as receiver:
            theirs.close()
            socket.send_fds(ours, [b"fd"], [root_conn.fileno()])
            out, err = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, err
    reply = json.loads(out)
    assert reply["result"]["peer"]["uid"] == 0, f"a connection root opened is root's in any hands: {reply}"


def test_socket_mode_decides_who_may_connect(daemon_factory: DaemonFactory, nobody: OtherUser) -> None:
    d = daemon_factory(daemon_keys={"socket_mode": "0660"})
    d.start()
    assert d.socket.stat().st_mode & 0o777 == 0o660
    raw = subprocess.run(
        nobody.command(
            [PYTHON, "-I", "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({str(d.socket)!r})"]
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert raw.returncode != 0 and "PermissionError" in raw.stderr, raw
    # the client finds the socket through the config ($LOADMGR_CONFIG), as operators' scripts do
    result = subprocess.run(
        nobody.command([PYTHON, "-m", "loadmgrctl", "ping"]),
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 5, result
    assert "cannot reach loadmgrd" in result.stderr and "Permission denied" in result.stderr, result.stderr
    assert call(d, "ping")["peer"]["uid"] == 0


def test_socket_option_naming_a_forbidden_socket_is_unreachable_not_a_usage_error(
    daemon_factory: DaemonFactory, nobody: OtherUser
) -> None:
    d = daemon_factory(daemon_keys={"socket_mode": "0660"})
    d.start()
    result = subprocess.run(
        nobody.command([PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), "ping"]),
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 5, f"exit {result.returncode}: {result.stderr}"
    assert "cannot reach loadmgrd" in result.stderr
