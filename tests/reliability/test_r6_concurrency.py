"""R6 — concurrency: many clients reading and writing while jobs run.

20 jobs of short steps run (and are started again as soon as they end) while 50 client threads
issue reads (``listall``, ``status``, ``history``, ``watch``, ``event.view``) and admin writes
(``event.add`` of distinct names, ``process.add``, ``process.update``) in parallel — half of them on
one connection each, half with a new connection per request — and a few real ``loadmgrctl``
processes do the same. Then: no reply anywhere was an error, "database is locked" appears in no
reply and nowhere in the daemon's log, no update was lost (every event added is there, every
process is there with the last value its thread wrote), every run that ended completed, and the
repository passes ``repo.check``.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from loadmgrd.errors import ErrorCode
from tests.conftest import PYTHON, Daemon
from tests.reliability.support import (
    BASE_SEED,
    WAIT_TIMEOUT,
    Conn,
    DaemonFactory,
    call,
    job_csv,
    request,
    rpc,
    sized,
    step,
    wait_for_status,
    wait_until,
)

JOBS = 20
CLIENTS = 50
ROUNDS = sized(12, 60)  # each client does ROUNDS x (3 writes + 3 reads)
CTL_CLIENTS = 3
LOCKED = "database is locked"


class Client:
    """One client thread's connection: kept open, or a new one per request."""

    def __init__(self, d: Daemon, persistent: bool) -> None:
        self.d = d
        self.conn = Conn(d.socket) if persistent else None
        self.replies: list[dict[str, Any]] = []
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        if self.conn is not None:
            self.conn.request(request(method, params, self.next_id))
            reply: dict[str, Any] = self.conn.read_json()
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(self.d.socket))
                sock.settimeout(60)
                conn = Conn(sock=sock)
                conn.request(request(method, params, self.next_id))
                reply = conn.read_json()
        assert reply.get("id") == self.next_id, reply
        self.replies.append({"method": method, "params": params, "reply": reply})
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def client_work(d: Daemon, n: int, tmp: Path, seed: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One client's rounds; returns its replies and the last subject area it wrote per process."""
    rng = random.Random(seed + n)
    client = Client(d, persistent=n % 2 == 0)
    last: dict[str, str] = {}
    try:
        for k in range(ROUNDS):
            job = f"r6-job-{(n + k) % JOBS}"
            event = {"job": job, "event": f"ev-{n}-{k}", "item": str(tmp / f"ev-{n}-{k}.flag"), "action": "create"}
            client.call("event.add", event)  # create events: runs started later create these files
            process = f"r6-proc-{n}-{k % 4}"
            area = f"area-{n}-{k}"
            method = "process.add" if k < 4 else "process.update"
            client.call(method, {"name": process, "subject_area": area})
            last[process] = area
            client.call("process.add", {"name": f"r6-once-{n}-{k}", "currency_start_offset": k})
            reader = rng.choice(["listall", "status", "history", "watch", "event.view"])
            params: dict[str, Any] = {
                "listall": {},
                "status": {"job": job},
                "history": {"job": job, "limit": 5},
                "watch": {"names": [job]},
                "event.view": {"job": job},
            }[reader]
            client.call(reader, params)
            client.call("status", {"job": f"r6-job-{rng.randrange(JOBS)}"})
            client.call("listall", {"status": "Running"})
    finally:
        client.close()
    return client.replies, last


def keep_jobs_running(d: Daemon, stop: threading.Event, started: list[str], problems: list[str]) -> None:
    """Start each job again as soon as its run has ended, until ``stop``."""
    conn = Conn(d.socket)
    try:
        since = -1
        while not stop.is_set():
            conn.request(request("watch", {"names": ["r6"], "since": since, "wait": 1.0}, "watch"))
            answer = conn.read_json()
            if "result" not in answer:
                problems.append(f"watch: {answer}")
                return
            since = answer["result"]["version"]
            for row in answer["result"]["runs"]:
                if row["status"] in ("Completed", "Failed", "Stopped"):
                    if row["status"] != "Completed":
                        problems.append(f"{row['job']} run {row['run_id']} ended {row['status']}")
                    if stop.is_set():
                        break
                    conn.request(request("start", {"name": row["job"]}, "start"))
                    reply = conn.read_json()
                    if "result" in reply:
                        started.append(reply["result"]["results"][0]["run_id"])
                    elif reply["error"]["code"] != 1008:  # already running again: fine
                        problems.append(f"start {row['job']}: {reply}")
    finally:
        conn.close()


def ctl_work(d: Daemon, n: int, tmp: Path) -> list[subprocess.CompletedProcess[str]]:
    base = [PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket)]
    commands = [
        ["listall", "--json"],
        ["process", "add", "--subject_area", f"ctl-{n}", f"r6-ctl-{n}"],
        ["status", "r6-job-0", "--json"],
        ["event", "add", "-a", "create", "r6-job-1", f"ctl-ev-{n}", str(tmp / f"ctl-ev-{n}.flag")],
        ["history", "r6-job-2", "--json"],
    ]
    return [
        subprocess.run([*base, *c], env=d.env(), capture_output=True, text=True, timeout=120, check=False)
        for c in commands
    ]


def test_fifty_clients_and_twenty_running_jobs(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    seed = BASE_SEED
    steps = [step(n, "true" if n % 3 else "sleep 0.02") for n in range(1, 16)]
    for i in range(JOBS):
        call(d, "job.import", {"job": f"r6-job-{i}", "file_name": "r6.csv", "content": job_csv(steps), "group": "r6"})
    first = call(d, "start", {"name": "r6"})
    started = [r["run_id"] for r in first["results"] if r["started"]]
    assert len(started) == JOBS, first

    stop = threading.Event()
    problems: list[str] = []
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS + CTL_CLIENTS + 1) as pool:
        restarter = pool.submit(keep_jobs_running, d, stop, started, problems)
        clients = [pool.submit(client_work, d, n, tmp_path, seed) for n in range(CLIENTS)]
        ctls = [pool.submit(ctl_work, d, n, tmp_path) for n in range(CTL_CLIENTS)]
        results = [c.result(timeout=300) for c in clients]
        ctl_results = [r for c in ctls for r in c.result(timeout=300)]
        stop.set()
        restarter.result(timeout=60)
    took = time.monotonic() - began
    for i in range(JOBS):
        wait_for_status(d, f"r6-job-{i}", "Completed", "Failed", "Stopped", timeout=WAIT_TIMEOUT)

    # no error anywhere, "database is locked" nowhere
    replies = [r for replies, _ in results for r in replies]
    assert len(replies) == CLIENTS * ROUNDS * 6
    errors = [r for r in replies if "result" not in r["reply"]]
    assert errors == [], f"{len(errors)} requests failed, e.g. {errors[:3]}"
    assert LOCKED not in json.dumps(replies), "a reply mentions a locked database"
    for result in ctl_results:
        assert result.returncode == 0, f"{result.args}: {result.stderr}"
        assert LOCKED not in result.stdout + result.stderr
    assert problems == [], problems
    log = d.log()
    assert LOCKED not in log, log[-5000:]
    assert "Traceback" not in log, log[-5000:]

    # no lost update
    for i in range(JOBS):
        names = {e["event_name"] for e in call(d, "event.view", {"job": f"r6-job-{i}"})["events"]}
        wanted = {f"ev-{n}-{k}" for n in range(CLIENTS) for k in range(ROUNDS) if (n + k) % JOBS == i}
        if i == 1:
            wanted |= {f"ctl-ev-{n}" for n in range(CTL_CLIENTS)}
        assert names == wanted, f"r6-job-{i}: missing {sorted(wanted - names)[:5]}, extra {sorted(names - wanted)[:5]}"
    for _, last in results:
        for process, area in last.items():
            view = call(d, "process.view", {"name": process})
            assert view["process"]["subject_area"] == area, f"{process}: {view['process']['subject_area']} != {area}"
    for n in range(CLIENTS):
        for k in range(ROUNDS):
            view = call(d, "process.view", {"name": f"r6-once-{n}-{k}"})
            assert view["process"]["currency_start_offset"] == k
    for n in range(CTL_CLIENTS):
        assert call(d, "process.view", {"name": f"r6-ctl-{n}"})["process"]["subject_area"] == f"ctl-{n}"

    # every run that ended completed; the history holds them all
    for i in range(JOBS):
        history = call(d, "history", {"job": f"r6-job-{i}", "limit": 10000})["runs"]
        assert all(r["status"] == "Completed" for r in history), [(r["run_id"], r["status"]) for r in history]
    assert len(started) > JOBS, "no job ran twice: the clients did not overlap with running jobs"
    assert call(d, "repo.check")["ok"] is True
    print(
        f"R6: {len(replies)} client requests, {len(ctl_results)} loadmgrctl calls, {len(started)} runs in {took:.1f} s"
    )


RACE_TRIALS = sized(40, 200)


def test_start_racing_remove_and_other_starts_gets_clear_answers(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """Each trial fires, at one moment, three starts and a remove of the same job, whose one step
    blocks until released. Whatever order they land in: at most one run starts, every refusal is
    an ordinary one (never an internal error), and the daemon logs no traceback."""
    d = daemon_factory()
    d.start()
    internal = int(ErrorCode.INTERNAL_ERROR)
    for trial in range(RACE_TRIALS):
        release = tmp_path / f"release-{trial}"
        content = job_csv([step(1, f"while [ ! -e {release} ]; do sleep 0.02; done")])
        call(d, "job.import", {"job": "r6-race", "file_name": "r6.csv", "content": content, "force": True})
        barrier = threading.Barrier(4)
        replies: dict[str, dict[str, Any]] = {}

        def fire(
            label: str,
            method: str,
            params: dict[str, Any],
            barrier: threading.Barrier = barrier,
            replies: dict[str, dict[str, Any]] = replies,
        ) -> None:
            barrier.wait()
            replies[label] = rpc(d, method, params)

        threads = [threading.Thread(target=fire, args=(f"start{n}", "start", {"name": "r6-race"})) for n in range(3)]
        threads.append(threading.Thread(target=fire, args=("remove", "job.remove", {"job": "r6-race"})))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = [r for label, r in replies.items() if label.startswith("start") and "result" in r]
        assert len(started) <= 1, f"trial {trial}: {replies}"
        for reply in replies.values():
            if "error" in reply:
                assert reply["error"]["code"] != internal, f"trial {trial}: {replies}"
        release.touch()
        if "error" in replies["remove"]:  # a start won: its run ends, then the job goes
            wait_for_status(d, "r6-race", "Completed", timeout=WAIT_TIMEOUT)
            call(d, "job.remove", {"job": "r6-race"})
    assert "Traceback" not in d.log(), d.log()[-5000:]
    assert call(d, "repo.check")["ok"] is True


GROUP_JOBS = 120


@pytest.mark.parametrize("target", ["ALL", "r6-big"], ids=["ALL", "group"])
def test_stop_during_a_group_start_leaves_nothing_running(
    daemon_factory: DaemonFactory, tmp_path: Path, groups_to_kill: list[int], target: str
) -> None:
    """``stop --now ALL`` (or the group) while a start of a large group is still launching its
    jobs: every run that start launched is stopped, the jobs it had not reached are refused, and
    nothing is left running — a panicked "stop everything" means everything."""
    d = daemon_factory(daemon_keys={"stop_grace_period": "1", "max_concurrent_jobs": str(GROUP_JOBS)})
    d.start()
    marks = tmp_path / "marks"
    marks.mkdir()
    command = f'echo $$ > {marks}/"$LOADMGR_JOB.pgid"; touch {marks}/"$LOADMGR_JOB"; sleep 600'
    content = job_csv([step(10, command)])
    names = [f"r6-big-{n:03d}" for n in range(GROUP_JOBS)]
    for name in names:
        call(d, "job.import", {"job": name, "group": "r6-big", "file_name": "big.csv", "content": content})
    with Conn(d.socket, timeout=WAIT_TIMEOUT) as conn:
        conn.request(request("start", {"name": "r6-big"}))
        wait_until((marks / names[0]).exists, WAIT_TIMEOUT, "the group's first step running")
        stopped = call(d, "stop", {"name": target, "now": True})["results"]
        reply = conn.read_json()
    groups_to_kill.extend(int(p.read_text()) for p in marks.glob("*.pgid") if p.read_text().strip())
    results = {r["job"]: r for r in reply["result"]["results"]}
    started = {job for job, r in results.items() if r["started"]}
    refused = {job: r["message"] for job, r in results.items() if not r["started"]}
    assert started and len(started) + len(refused) == GROUP_JOBS, reply
    assert all("a stop of this job arrived" in message for message in refused.values()), refused
    assert {r["job"] for r in stopped} == started, "the stop names exactly the runs the start launched"
    for name in sorted(started):
        wait_for_status(d, name, "Stopped", timeout=WAIT_TIMEOUT)
    listed = {j["job_name"]: j["status"] for j in call(d, "listall")["jobs"]}
    assert {listed[name] for name in refused} <= {"Not Running"}, listed
    assert "Traceback" not in d.log(), d.log()[-5000:]
