"""Access control with a real second uid: read-only for anyone, admin only for root/daemon user/admin_group.

The daemon runs as root (the test runner); the client runs as ``nobody`` through ``setpriv``. What
decides is the socket peer's credentials (SO_PEERCRED), never anything in the request.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadmgrd.repository import load_migrations
from tests.conftest import PYTHON, Daemon

ADMIN_GROUP = "loadmgr-test-admins"  # conftest's make_daemon() config sets this admin_group
PERMISSION_DENIED = 1003
JOB_CSV = "job_step,job_step_function,job_step_command\n10,run_command,true\n20,run_command,echo hello\n"

# A tiny client run as the other user: one fresh connection per stdin line, replies as one JSON document.
RAW_CLIENT = r"""
import json, os, socket, sys
path = sys.argv[1]
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "replies": []}
for line in sys.stdin.read().splitlines():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out["replies"].append(json.loads(data) if data.strip() else None)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def command(self, command: list[str], *, groups: list[int] | None = None) -> list[str]:
        """``command`` run as this user (its passwd gid, no supplementary groups unless given)."""
        group_option = f"--groups={','.join(str(g) for g in groups)}" if groups else "--clear-groups"
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", group_option, "--", *command]


@pytest.fixture(scope="module")
def nobody() -> OtherUser:
    """``nobody``, checked to be able to run this project's Python (or a clear failure, never silence)."""
    if os.geteuid() != 0:
        pytest.skip("access-control tests need root to run the client as another uid (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("access-control tests need setpriv (util-linux) to run the client as another uid")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("access-control tests need a 'nobody' user")
    user = OtherUser("nobody", entry.pw_uid, entry.pw_gid)  # nobody's group is often 'nogroup', not 'nobody'
    probe = subprocess.run(
        user.command([PYTHON, "-c", "import os, loadmgrctl, loadmgrd.protocol; print(os.getuid())"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != str(user.uid):
        pytest.fail(
            f"{PYTHON} cannot run as nobody (uid {user.uid}, gid {user.gid}); the access-control tests need "
            f"the virtualenv, its interpreter and the source tree readable/executable by other users.\n"
            f"exit {probe.returncode}\nstdout: {probe.stdout}\nstderr: {probe.stderr}"
        )
    return user


def raw_as(user: OtherUser, d: Daemon, requests: list[Any], *, groups: list[int] | None = None) -> list[dict[str, Any]]:
    """Send each request (one per connection) as ``user``; the decoded replies, in order."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    result = subprocess.run(
        user.command([PYTHON, "-I", "-c", RAW_CLIENT, str(d.socket)], groups=groups),
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"raw client as {user.name} failed:\n{result.stderr}"
    out = json.loads(result.stdout)
    assert out["uid"] == user.uid, f"the raw client did not run as {user.name}: {out!r}"
    if groups:
        assert set(groups) <= set(out["groups"]), out
    else:
        assert out["groups"] in ([], [user.gid]), f"unexpected supplementary groups: {out!r}"
    replies: list[dict[str, Any]] = out["replies"]
    assert len(replies) == len(lines)
    for line, reply in zip(lines, replies, strict=True):
        assert reply is not None, f"no reply to {line}"
    return replies


def request(method: str, params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}


def ctl_as(user: OtherUser, d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    command = user.command([PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), *args])
    return subprocess.run(command, env=d.env(), capture_output=True, text=True, timeout=60, check=False)


def db_snapshot(database: Path) -> dict[str, list[str]]:
    """Every row of every table, read straight from the SQLite file (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(repr(r) for r in conn.execute(f'SELECT * FROM "{t}"')) for t in tables}


def assert_ok(reply: dict[str, Any]) -> Any:
    assert "error" not in reply, reply
    return reply["result"]


@pytest.fixture(scope="module")
def populated(daemon: Daemon) -> Daemon:
    """The module's daemon with a job (with an event), processes, currencies and a link, made by root."""
    setup = [
        ("job.import", {"job": "acc-job", "file_name": "acc.csv", "content": JOB_CSV, "group": "g1"}),
        ("event.add", {"job": "acc-job", "event": "ev1", "item": "/tmp/acc-ev1.flag"}),
        ("process.add", {"name": "acc-proc", "subject_area": "sales"}),
        ("process.add", {"name": "acc-proc2"}),
        ("currency.configure", {"schema": "acc", "table": "tbl", "column": "load_dt"}),
        ("currency.configure", {"schema": "acc", "table": "tbl2", "column": "load_dt"}),
        ("link.create", {"process": "acc-proc", "schema": "acc", "table": "tbl"}),
    ]
    for method, params in setup:
        assert_ok(daemon.rpc(method, params))
    return daemon


# Params that would succeed (and change the repository) if the caller were allowed.
ADMIN_PARAMS: dict[str, dict[str, Any]] = {
    "currency.configure": {"schema": "acc", "table": "newtbl", "column": "load_dt"},
    "currency.remove": {"schema": "acc", "table": "tbl2"},
    "currency.rename": {"old_schema": "acc", "old_table": "tbl2", "new_schema": "acc", "new_table": "tbl3"},
    "link.create": {"process": "acc-proc2", "schema": "acc", "table": "tbl2"},
    "link.remove": {"process": "acc-proc", "schema": "acc", "table": "tbl"},
    "event.add": {"job": "acc-job", "event": "ev2", "item": "/tmp/acc-ev2.flag"},
    "event.enable": {"job": "acc-job", "events": ["ev1"]},
    "event.disable": {"job": "acc-job", "events": ["ev1"]},
    "event.remove": {"job": "acc-job", "events": ["ev1"]},
    "event.rename": {"job": "acc-job", "old": "ev1", "new": "ev9"},
    "job.import": {"job": "acc-new-job", "file_name": "new.csv", "content": JOB_CSV},
    "job.rename": {"old": "acc-job", "new": "acc-job-renamed"},
    "job.group": {"job": "acc-job", "group": "g2"},
    "job.remove": {"job": "acc-job"},
    "job.reset": {"job": "acc-job"},
    "process.add": {"name": "acc-new-proc"},
    "process.update": {"name": "acc-proc", "subject_area": "changed"},
    "process.remove": {"name": "acc-proc2"},
    "process.rename": {"old": "acc-proc2", "new": "acc-proc3"},
    "repo.create": {},
    "repo.maintenance": {},
    "start": {"name": "acc-job"},
    "stop": {"name": "acc-job"},
    "pause": {"name": "acc-job"},
    "resume": {"name": "acc-job"},
}

# Read-only methods whose answer the test checks in detail (any other read-only method must at least
# get past the permission check: the daemon checks permission before params, so any error but 1003 will do).
READ_PARAMS: dict[str, dict[str, Any]] = {
    "ping": {},
    "listall": {},
    "repo.info": {},
    "job.view": {"job": "acc-job"},
    "job.export": {"job": "acc-job"},
    "event.view": {"job": "acc-job"},
    "process.view": {"name": "acc-proc"},
    "currency.view": {"schema": "acc", "table": "tbl"},
}


def _methods(admin: bool) -> list[str]:
    import loadmgrd.handlers  # noqa: F401 - registers the methods
    from loadmgrd.rpc import METHODS

    return sorted(name for name, m in METHODS.items() if m.admin is admin)


# ---------------------------------------------------------------------------- admin methods refused


def test_every_admin_method_is_refused_for_nobody(nobody: OtherUser, populated: Daemon) -> None:
    from loadmgrd.rpc import METHODS

    admin_methods = _methods(admin=True)
    assert {"job.import", "process.add", "repo.maintenance", "job.remove"} <= set(admin_methods)
    for name in admin_methods:  # the params are valid: a refusal is about the caller, nothing else
        if name in ADMIN_PARAMS:
            METHODS[name].params.model_validate(ADMIN_PARAMS[name])
    before = db_snapshot(populated.database)
    listing_before = populated.json("listall")

    requests = [request(name, ADMIN_PARAMS.get(name, {}), request_id=i) for i, name in enumerate(admin_methods)]
    replies = raw_as(nobody, populated, requests)

    for i, (name, reply) in enumerate(zip(admin_methods, replies, strict=True)):
        assert "result" not in reply, f"{name} succeeded for nobody: {reply!r}"
        assert reply["id"] == i, reply
        error = reply["error"]
        assert error["code"] == PERMISSION_DENIED, f"{name}: {reply!r}"
        assert "permission denied" in error["message"].lower(), f"{name}: {reply!r}"
        assert name in error["message"], f"{name}: the refusal must name the method: {reply!r}"
        assert "nobody" in error["message"] or str(nobody.uid) in error["message"], reply
    assert db_snapshot(populated.database) == before, "a refused admin request changed the repository"
    assert populated.json("listall") == listing_before
    assert populated.rpc("process.view", {"name": "acc-new-proc"})["error"]["code"] == 1001
    assert populated.rpc("job.view", {"job": "acc-new-job"})["error"]["code"] == 1001
    assert populated.json("ping")["maintenance_mode"] is False


def test_admin_method_refused_even_with_bad_params(nobody: OtherUser, populated: Daemon) -> None:
    """The permission check comes first: a non-admin learns nothing about the params."""
    replies = raw_as(nobody, populated, [request("job.remove", {"jobb": 1}), request("process.add", [1, 2])])
    for reply in replies:
        assert reply["error"]["code"] == PERMISSION_DENIED, reply


# ---------------------------------------------------------------------------- read-only methods allowed


def test_every_read_only_method_works_for_nobody(nobody: OtherUser, populated: Daemon) -> None:
    read_methods = _methods(admin=False)
    assert set(READ_PARAMS) <= set(read_methods), "a read-only method of this test is gone or became admin"
    before = db_snapshot(populated.database)

    replies = raw_as(
        nobody, populated, [request(name, READ_PARAMS.get(name, {}), request_id=name) for name in read_methods]
    )
    results = {}
    for name, reply in zip(read_methods, replies, strict=True):
        assert reply["id"] == name
        if name in READ_PARAMS:
            results[name] = assert_ok(reply)
        else:
            assert reply.get("error", {}).get("code") != PERMISSION_DENIED, f"{name} refused for nobody: {reply}"

    assert results["ping"]["peer"] == {"uid": nobody.uid, "user": "nobody", "admin": False}
    assert [j["job_name"] for j in results["listall"]["jobs"]] == ["acc-job"]
    assert results["repo.info"]["schema_version"] == len(load_migrations())
    assert [s["job_step"] for s in results["job.view"]["steps"]] == [10, 20]
    assert "echo hello" in results["job.export"]["content"]
    assert [e["event_name"] for e in results["event.view"]["events"]] == ["ev1"]
    assert results["process.view"]["process"]["subject_area"] == "sales"
    assert results["process.view"]["linked_tables"] == ["acc.tbl"]
    assert results["currency.view"]["currency"]["date_column"] == "load_dt"
    assert db_snapshot(populated.database) == before, "a read-only request changed the repository"


def test_cli_as_nobody(nobody: OtherUser, populated: Daemon) -> None:
    job_file = populated.home / "cli-job.csv"
    job_file.write_text(JOB_CSV)
    job_file.chmod(0o644)
    before = db_snapshot(populated.database)

    refused = ctl_as(nobody, populated, "job", "import", "cli-job", str(job_file))
    assert refused.returncode == 4, refused
    assert "permission denied" in refused.stderr.lower(), refused.stderr
    assert "job.import" in refused.stderr
    assert "Traceback" not in refused.stderr

    toggled = ctl_as(nobody, populated, "repo", "maintenance", "--on")
    assert toggled.returncode == 4, toggled

    listing = ctl_as(nobody, populated, "listall", "--json")
    assert listing.returncode == 0, listing
    assert [j["job_name"] for j in json.loads(listing.stdout)] == ["acc-job"]

    ping = ctl_as(nobody, populated, "ping")
    assert ping.returncode == 0, ping
    assert "you are nobody (read-only)" in ping.stdout
    assert db_snapshot(populated.database) == before


# ---------------------------------------------------------------------------- claims do not matter


def test_claims_in_the_request_do_not_grant_admin(nobody: OtherUser, populated: Daemon) -> None:
    before = db_snapshot(populated.database)
    spoofs: list[Any] = [
        request("process.add", {"name": "spoof1", "uid": 0}),
        request("process.add", {"name": "spoof2", "user": "root", "admin": True, "peer": {"uid": 0}}),
        {**request("process.add", {"name": "spoof3"}), "user": "root"},
        {**request("process.add", {"name": "spoof4"}), "uid": 0, "auth": {"uid": 0, "gid": 0}},
        [request("process.add", {"name": "spoof5"}, 1), request("repo.maintenance", {"enabled": True}, 2)],
        request("repo.maintenance", {"enabled": True, "as_user": "root"}),
    ]
    replies = raw_as(nobody, populated, spoofs)
    flat: list[dict[str, Any]] = []
    for reply in replies:
        flat.extend(reply if isinstance(reply, list) else [reply])
    assert len(flat) == 7
    for reply in flat:
        assert "result" not in reply, f"a claim in the request granted admin: {reply!r}"
        assert reply["error"]["code"] in (-32600, -32602, PERMISSION_DENIED), reply
    assert db_snapshot(populated.database) == before
    for n in range(1, 6):
        assert populated.rpc("process.view", {"name": f"spoof{n}"})["error"]["code"] == 1001


# ---------------------------------------------------------------------------- admin_group


@pytest.fixture
def admin_group() -> Iterator[int]:
    """The config's admin group (created for the test and deleted afterwards unless it already existed)."""
    try:
        yield grp.getgrnam(ADMIN_GROUP).gr_gid  # left over or made by the host: use it, leave it
        return
    except KeyError:
        pass
    if shutil.which("groupadd") is None or shutil.which("groupdel") is None:
        pytest.skip("groupadd/groupdel not available: cannot create the admin group")
    subprocess.run(["groupadd", "-f", ADMIN_GROUP], check=True, capture_output=True, timeout=60)
    try:
        yield grp.getgrnam(ADMIN_GROUP).gr_gid
    finally:
        subprocess.run(["groupdel", ADMIN_GROUP], check=False, capture_output=True, timeout=60)


def test_admin_group_membership_grants_admin(nobody: OtherUser, populated: Daemon, admin_group: int) -> None:
    # without the group: still refused, even though the group now exists
    plain = raw_as(nobody, populated, [request("process.add", {"name": "grp-proc"})])
    assert plain[0]["error"]["code"] == PERMISSION_DENIED, plain

    member = raw_as(
        nobody,
        populated,
        [request("ping", {}, 1), request("process.add", {"name": "grp-proc", "subject_area": "via group"}, 2)],
        groups=[admin_group],
    )
    assert assert_ok(member[0])["peer"] == {"uid": nobody.uid, "user": "nobody", "admin": True}
    assert assert_ok(member[1]) == {"process": "grp-proc", "outcome": "created"}
    view = assert_ok(populated.rpc("process.view", {"name": "grp-proc"}))
    assert view["process"]["subject_area"] == "via group"

    cli = ctl_as_groups(nobody, populated, [admin_group], "process", "remove", "grp-proc")
    assert cli.returncode == 0, cli
    assert populated.rpc("process.view", {"name": "grp-proc"})["error"]["code"] == 1001


def ctl_as_groups(user: OtherUser, d: Daemon, groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    command = user.command([PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), *args], groups=groups)
    return subprocess.run(command, env=d.env(), capture_output=True, text=True, timeout=60, check=False)


# The process that connects (and so is the SO_PEERCRED peer) is a child that exits before the daemon
# looks at the request; its parent keeps the same socket open and reads the reply.
FORKED_CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
child = os.fork()
if child == 0:
    s.connect(sys.argv[1])
    s.sendall(sys.argv[2].encode() + b"\n")
    os._exit(0)
os.waitpid(child, 0)
print("ready", flush=True)
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode().strip(), flush=True)
"""


@pytest.fixture
def nobody_listed_in_admin_group(nobody: OtherUser, admin_group: int) -> Iterator[None]:
    """nobody named as a member of the admin group in the group database (undone afterwards)."""
    if nobody.name in grp.getgrgid(admin_group).gr_mem:
        yield
        return
    if shutil.which("gpasswd") is None:
        pytest.skip("gpasswd not available: cannot add nobody to the admin group")
    subprocess.run(["gpasswd", "-a", nobody.name, ADMIN_GROUP], check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run(["gpasswd", "-d", nobody.name, ADMIN_GROUP], check=False, capture_output=True, timeout=60)


def test_admin_decision_does_not_depend_on_the_peer_process_still_living(
    nobody: OtherUser, populated: Daemon, nobody_listed_in_admin_group: None
) -> None:
    assert populated.proc is not None
    # nobody is listed in the group database, but its processes here run with no supplementary groups
    assert nobody.name in grp.getgrnam(ADMIN_GROUP).gr_mem
    alive = raw_as(nobody, populated, [request("process.add", {"name": "timing-alive"})])[0]
    assert alive["error"]["code"] == PERMISSION_DENIED, alive  # decided from the live process: no group

    line = json.dumps(request("process.add", {"name": "timing-gone"}))
    pid = populated.proc.pid
    os.kill(pid, signal.SIGSTOP)
    os.waitid(os.P_PID, pid, os.WSTOPPED)  # frozen: it reads the request only after the peer has gone
    with subprocess.Popen(
        nobody.command([PYTHON, "-I", "-c", FORKED_CLIENT, str(populated.socket), line]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as client:  # closes the pipes and reaps the client whatever happens
        try:
            try:
                assert client.stdout is not None
                ready = client.stdout.readline().strip()
            finally:
                os.kill(pid, signal.SIGCONT)
            out, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
    assert ready == "ready" and client.returncode == 0, f"forked client failed: {ready!r} {err}"
    gone = json.loads(out)
    assert "result" not in gone, f"the same peer credentials were admitted once the process had exited: {gone}"
    assert gone["error"]["code"] == PERMISSION_DENIED
    assert populated.rpc("process.view", {"name": "timing-gone"})["error"]["code"] == 1001
