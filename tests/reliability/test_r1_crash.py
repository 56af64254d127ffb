"""R1 — crash trials: ``kill -9`` of loadmgrd at a random moment of a multi-step run.

Each trial imports a job of many tiny steps (each appends its number to a file, so most of the
daemon's time goes to its own bookkeeping and a kill often lands inside a commit), starts it and
SIGKILLs the daemon at a moment chosen by the trial's seed:

- ``progress``: once k steps (random, 0..n) have written their line, plus a random jitter of up to
  one step's duration (measured when the module starts: a few milliseconds);
- ``timed``: a random delay after the start, up to the run's expected duration;
- ``commit``: as ``progress``, but every step captures 60 KB of output, so each step's commit is
  large and a kill often lands inside it;
- ``wait_event``: while the run is Waiting for its wait event;
- ``event_arrival``: just after the event file is moved into place (the claim and the first steps);
- ``after_end``: once the run is Completed;
- ``parallel``: as ``progress``, in a job whose steps after the first all run side by side (wait-step
  columns), so several steps are in flight at the kill.

Then, with the daemon dead: step processes it left are SIGKILLed, and the repository file passes
``PRAGMA integrity_check`` and ``foreign_key_check`` opened read-only. After the restart: the run is
``Failed`` with the crash reason (``Completed`` if the kill came after the end); every step recorded
complete has its prerequisites complete (a prefix of a sequential job), its end recorded, and its
line exactly once in the file; only steps that could have been running at the kill may have written
their line without being recorded complete (once at most); ``start --resume --wait`` then runs each
remaining step exactly once, and nothing else.

The kill moment is random, not a synchronisation: ``time.sleep`` here only draws the moment.
``LOADMGR_SEED=N`` replays the trials of a run (the seed is in every assertion message).
"""

from __future__ import annotations

import contextlib
import random
import shlex
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.reliability.support import (
    BASE_SEED,
    WAIT_TIMEOUT,
    DaemonFactory,
    call,
    discard_daemon,
    import_job,
    integrity_problems,
    kill9,
    kill_group,
    lines_of,
    live_group_members,
    new_daemon,
    proc_stat,
    processes_with_env,
    sized,
    status_of,
    step,
    wait_for_status,
    wait_gone,
    wait_until,
)

TRIALS = sized(10, 50)
MODES = (
    "progress",
    "timed",
    "commit",
    "wait_event",
    "progress",
    "event_arrival",
    "timed",
    "commit",
    "after_end",
    "parallel",
)
COMPLETE = ("Success", "Warning", "Skipped")
CRASH_REASON = "loadmgrd stopped while this run was active"
q = shlex.quote


@dataclass
class CrashDaemon:
    daemon: Daemon
    step_seconds: float  # how long one tiny step takes, start to start (measured)


@pytest.fixture(scope="module")
def crash_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashDaemon]:
    """One daemon (and repository) for every trial of the module: each trial kills and restarts it."""
    d = new_daemon(daemon_keys={"stop_grace_period": "1"}, sections="[events]\nwait_sleep_time = 0.2\n")
    try:
        d.start()
        directory = tmp_path_factory.mktemp("calibration")
        import_job(d, directory, "calibration", [step(n, "true") for n in range(1, 41)])
        began = time.monotonic()
        call(d, "start", {"name": "calibration"})
        wait_for_status(d, "calibration", "Completed")
        yield CrashDaemon(d, (time.monotonic() - began) / 40)
    finally:
        discard_daemon(d)


def end_leftover_steps(run_id: str) -> list[int]:
    """SIGKILL the process groups of steps of ``run_id`` that outlived the daemon (their environment
    names the run) until three scans in a row find none. Returns the groups killed."""
    killed: list[int] = []
    quiet = 0
    deadline = time.monotonic() + WAIT_TIMEOUT
    while quiet < 3:
        found = processes_with_env(f"LOADMGR_RUN_ID={run_id}")
        for pid in found:
            stat = proc_stat(pid)
            if stat is not None:
                kill_group(stat[2])
                killed.append(stat[2])
        quiet = 0 if found else quiet + 1
        assert time.monotonic() < deadline, f"step processes of {run_id} do not go away: {found}"
        time.sleep(0.01)
    return killed


def wait_for_lines(path: Path, count: int, ctx: str) -> None:
    """Until the file has ``count`` lines: polled every 0.5 ms, as a step takes a few milliseconds."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes().count(b"\n") >= count:
                return
        assert time.monotonic() < deadline, f"{ctx} {count} steps not written within {WAIT_TIMEOUT} s"
        time.sleep(0.0005)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill9_at_a_random_moment(crash_daemon: CrashDaemon, tmp_path: Path, trial: int) -> None:
    d, step_seconds = crash_daemon.daemon, crash_daemon.step_seconds
    if d.proc is None:  # a previous trial failed while the daemon was down
        d.start()
    seed = (BASE_SEED * 1000 + trial) % 2**31
    rng = random.Random(seed)
    mode = MODES[trial % len(MODES)]
    n = rng.randint(8, 30)
    numbers = [10 * (i + 1) for i in range(n)]
    ctx = f"[trial {trial}, mode {mode}, {n} steps, LOADMGR_SEED={BASE_SEED}, trial seed {seed}]"

    job = f"crash-{trial}"
    out = tmp_path / "out.txt"
    flag = tmp_path / "event.flag"
    if mode == "commit":
        command = "echo {k} >> {out}; head -c 60000 /dev/zero | tr '\\0' x"
        steps = [step(k, command.format(k=k, out=q(str(out))), capture=True) for k in numbers]
    elif mode == "parallel":  # step 10, then all the others side by side
        steps = [step(k, f"echo {k} >> {q(str(out))}", wait_step=10 if k > 10 else 0) for k in numbers]
    else:
        steps = [step(k, f"echo {k} >> {q(str(out))}", capture=rng.random() < 0.3) for k in numbers]
    needs = {k: ([10] if k > 10 else []) if mode == "parallel" else ([k - 10] if k > 10 else []) for k in numbers}
    import_job(d, tmp_path, job, steps)
    if mode in ("wait_event", "event_arrival"):
        d.ok("event", "add", job, "arrival", str(flag))
    started = call(d, "start", {"name": job})
    run_id = started["results"][0]["run_id"]

    # ------------------------------------------------------------ the kill
    if mode in ("progress", "commit", "parallel"):
        k = rng.randint(0, n)
        wait_for_lines(out, k, ctx)
        time.sleep(rng.uniform(0, step_seconds * (3 if mode == "commit" else 1)))
    elif mode == "timed":
        time.sleep(rng.uniform(0, step_seconds * n * 1.2))
    elif mode == "wait_event":
        wait_for_status(d, job, "Waiting")
        time.sleep(rng.uniform(0, 0.3))
    elif mode == "event_arrival":
        wait_for_status(d, job, "Waiting")
        partial = tmp_path / "event.partial"
        partial.write_text("ready\n")
        partial.rename(flag)  # moved into place: complete at once
        time.sleep(rng.uniform(0, 0.05 + step_seconds * n))
    else:
        wait_for_status(d, job, "Completed")
    kill9(d)

    # ------------------------------------------------------------ the daemon is dead
    end_leftover_steps(run_id)
    assert integrity_problems(d.database) == [], f"{ctx} repository damaged by kill -9"
    written = lines_of(out)

    d.start()
    status = status_of(d, job)
    run = status["run"]
    assert run is not None and run["run_id"] == run_id, f"{ctx} {status}"
    rows = {s["job_step"]: s for s in run["steps"]}
    assert sorted(rows) == numbers, f"{ctx} steps of the run: {sorted(rows)}"
    complete = [k for k in numbers if rows[k]["status"] in COMPLETE]
    pending = [k for k in numbers if k not in complete]
    ready = [k for k in pending if all(p in complete for p in needs[k])]  # could have been running
    for k in complete:
        assert rows[k]["end_ts"] and rows[k]["exit_code"] == 0, f"{ctx} step {k} recorded without its end: {rows[k]}"
        assert all(p in complete for p in needs[k]), f"{ctx} step {k} complete before its prerequisites"
    for k in pending:
        assert rows[k]["status"] in ("Pending", "Failure"), f"{ctx} step {k}: {rows[k]}"
        if rows[k]["status"] == "Failure":
            assert k in ready, f"{ctx} step {k} failed but could not have been running: {rows[k]}"
            assert CRASH_REASON in (rows[k]["message"] or ""), f"{ctx} {rows[k]}"
    if mode != "parallel":
        assert complete == numbers[: len(complete)], f"{ctx} completed steps are not a prefix: {complete}"
    assert run["last_completed_step"] == (max(complete) if complete else None), (
        f"{ctx} run progress {run['last_completed_step']} disagrees with the steps {complete}"
    )
    if run["status"] == "Completed":
        assert complete == numbers, f"{ctx} Completed with steps missing: {complete}"
    else:
        assert run["status"] == "Failed", f"{ctx} run left {run['status']} after the restart"
        assert CRASH_REASON in (run["status_reason"] or ""), f"{ctx} no crash reason: {run['status_reason']!r}"
    if mode == "wait_event":
        assert complete == [] and written == [], f"{ctx} a step ran while the run waited for its event"
    if mode == "after_end":
        assert run["status"] == "Completed", f"{ctx} a completed run was touched by crash recovery"

    # every step recorded complete really ran, exactly once; only steps that could have been running at
    # the kill may have run without being recorded (at most once each)
    ran = Counter(int(line) for line in written)
    for k in complete:
        assert ran[k] == 1, f"{ctx} step {k} is recorded complete but ran {ran[k]} times: {written}"
    unrecorded = sorted(k for k in ran if k not in complete)
    for k in unrecorded:
        assert k in ready and ran[k] == 1, f"{ctx} step {k} ran {ran[k]} times unrecorded: {written}"
    if mode != "parallel":
        assert written == [str(k) for k in complete + unrecorded], f"{ctx} file {written}, complete {complete}"
    landed = f"{len(unrecorded)} ran unrecorded, {sum(rows[k]['status'] == 'Failure' for k in pending)} failed"
    print(f"{ctx} kill landed: run {run['status']}, {len(complete)}/{n} complete, {landed}")
    check = call(d, "repo.check")
    assert check["ok"] is True, f"{ctx} {check}"

    # ------------------------------------------------------------ resume
    resumed = d.ctl("start", "--resume", "--wait", job)
    if not pending:
        assert resumed.returncode == 1 and "nothing to resume" in resumed.stderr, f"{ctx} {resumed}"
        assert lines_of(out) == written, f"{ctx} {lines_of(out)}"
        return
    assert resumed.returncode == 0, f"{ctx} resume failed ({resumed.returncode}): {resumed.stderr}\n{d.log()[-2000:]}"
    after = lines_of(out)
    assert after[: len(written)] == written, f"{ctx} the file changed before the resumed steps: {after}"
    by_resume = after[len(written) :]
    if mode == "parallel":
        assert sorted(int(x) for x in by_resume) == pending, f"{ctx} the resume ran {by_resume}, wanted {pending}"
    else:
        assert by_resume == [str(k) for k in pending], f"{ctx} the resume ran {by_resume}, wanted {pending} once"
    counts = Counter(int(x) for x in after)
    for k in numbers:
        assert counts[k] == (2 if k in unrecorded else 1), f"{ctx} step {k} ran {counts[k]} times: {after}"
    final = status_of(d, job)["run"]
    assert final["status"] == "Completed", f"{ctx} {final['status']}: {final['status_reason']}"
    assert final["resumed_from"] == run_id, f"{ctx} {final['resumed_from']}"
    assert all(s["status"] in COMPLETE for s in final["steps"]), f"{ctx} {final['steps']}"


def test_repository_sound_after_the_trials(crash_daemon: CrashDaemon) -> None:
    """After every trial, a clean stop leaves a repository that passes the checks read-only."""
    d = crash_daemon.daemon
    if d.proc is None:
        d.start()
    assert d.stop() == 0, d.log()[-3000:]
    assert integrity_problems(d.database) == []
    assert "Traceback" not in d.log(), d.log()[-5000:]


def recorded_pgid(database: Path, run_id: str) -> int | None:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
        row = conn.execute(
            "SELECT s.pgid FROM job_run_step s JOIN job_run r USING (run_key) WHERE r.run_id = ?", (run_id,)
        ).fetchone()
    return int(row[0]) if row and row[0] else None


def test_restarted_daemon_ends_a_step_spawned_just_before_the_crash(
    daemon_factory: DaemonFactory, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    """Deterministic version of the window: the second attempt of a retried step is spawned while an
    sqlite3 client holds a write transaction (docs/operations.md, "database is locked"), so the
    daemon cannot record its process group before it is killed."""
    d = daemon_factory(daemon_keys={"stop_grace_period": "1"})
    d.start()
    first, mark, pgid_file = tmp_path / "first", tmp_path / "mark", tmp_path / "pgid"
    command = (
        f"if [ -f {q(str(first))} ]; then echo $$ > {q(str(pgid_file))}; touch {q(str(mark))}; exec sleep 600; "
        f"else touch {q(str(first))}; sleep 0.2; exit 1; fi"
    )
    import_job(d, tmp_path, "spawn-window", [step(10, command, args="retries=1 retry_delay=1")])
    run_id = call(d, "start", {"name": "spawn-window"})["results"][0]["run_id"]
    wait_until(lambda: recorded_pgid(d.database, run_id) is not None, WAIT_TIMEOUT, "first attempt recorded")
    lock = sqlite3.connect(str(d.database), timeout=30, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        wait_until(mark.exists, WAIT_TIMEOUT, "second attempt running")
        pgid = int(pgid_file.read_text())
        groups_to_kill.append(pgid)
        kill9(d)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert live_group_members(pgid), "the second attempt should outlive the killed daemon (its own session)"
    d.start()
    assert wait_gone(lambda: live_group_members(pgid), 6) == [], "the restarted daemon left the step running"
