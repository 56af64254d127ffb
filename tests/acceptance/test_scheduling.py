"""Schedules, parallel steps, timeouts, retries and the concurrency limit (docs/scheduling.md),
end to end: a real loadmgrd, the real loadmgrctl, real step processes.

Synchronisation never sleeps for a state: runs are followed with ``start --wait`` or the
``watch`` long poll; a step that must be "really running" touches a marker file and blocks on
a release file (a ``Gate``), and only marker files and the schedule list (a fire is not a run
event) are polled, in short loops with a deadline. The only timed windows are the ones that
assert that something does *not* happen (no fire while disabled, the run stays Running).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.conftest import Daemon
from tests.support import (
    POLL,
    WAIT_TIMEOUT,
    Gate,
    assert_exit,
    by_step,
    call,
    configure,
    current_run,
    lines,
    q,
    status_of,
    wait_for_path,
    wait_group_gone,
    write_job_file,
)

FIRE_TIMEOUT = 15.0  # upper bound for a seconds-level schedule to fire
EVERY_SECOND = "*/1 * * * * *"
FINISHED = ("Completed", "Failed", "Stopped")
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# This file's use of the shared helpers: set-up imports go over a raw request (a client process per
# job would cost more than the tests themselves; refused imports use the client), and a refusal
# must exit 1 without a traceback.
import_job = functools.partial(support.import_job, raw=True)
assert_refused = functools.partial(support.assert_refused, strict=True)


# ---------------------------------------------------------------------------- job files


def step(
    number: int,
    command: str,
    *,
    args: str = "",
    capture: bool = False,
    wait: int = 0,
    alt_wait: int = 0,
) -> dict[str, Any]:
    """A step described "step NUMBER", with both wait-step columns (job files here have all nine)."""
    return support.step(
        number, command, args=args, capture=capture, description=f"step {number}", wait=wait, alt_wait=alt_wait
    )


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)


def read_float(path: Path) -> float:
    return float(path.read_text().strip())


# ---------------------------------------------------------------------------- daemon state


def wait_for(
    d: Daemon, job: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT_TIMEOUT
) -> dict[str, Any]:
    """Follow the job with the ``watch`` long poll until ``check(status)`` holds; that status.

    The version is read before the status, so a change between the two wakes the next poll."""
    deadline = time.monotonic() + timeout
    since = call(d, "watch", {"names": [job]})["version"]
    while True:
        status = status_of(d, job)
        if check(status):
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what}: not reached within {timeout} s; job {job}: {status}")
        since = call(d, "watch", {"names": [job], "since": since, "wait": min(remaining, 5.0)})["version"]


def wait_for_status(d: Daemon, job: str, *statuses: str, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
    """Until the job's run is in one of ``statuses``; a finished run only once its end is recorded
    (``status`` can briefly pair a finished run status with an older snapshot of the run's rows,
    see test_status_never_shows_a_finished_run_with_unfinished_steps). Its status (not the ``watch``
    row that tests.support.wait_for_status returns)."""

    def reached(s: dict[str, Any]) -> bool:
        if s["status"] not in statuses:
            return False
        return s["status"] not in FINISHED or s["run"]["end_ts"] is not None

    return wait_for(d, job, reached, f"status in {statuses}", timeout)


def finished_run(d: Daemon, job: str) -> dict[str, Any]:
    """The job's run once it has ended (``start --wait`` may return a moment before it is recorded)."""
    return wait_for_status(d, job, *FINISHED)["run"]


def stays(d: Daemon, job: str, check: Callable[[dict[str, Any]], bool], what: str, seconds: float) -> None:
    """Assert ``check(status)`` holds for ``seconds``, looking again at every change (``watch``)."""
    deadline = time.monotonic() + seconds
    since = call(d, "watch", {"names": [job]})["version"]
    while True:
        status = status_of(d, job)
        assert check(status), f"{what} no longer holds: {status}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        since = call(d, "watch", {"names": [job], "since": since, "wait": remaining})["version"]


def settle(d: Daemon, job: str, quiet: float = 0.5, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
    """Wait until the job's run is finished and nothing about it changed for ``quiet`` seconds
    (a schedule fire already under way when its schedule was removed has then shown up)."""
    deadline = time.monotonic() + timeout
    while True:
        status = wait_for_status(d, job, *FINISHED, "Not Running", timeout=max(deadline - time.monotonic(), 0.1))
        since = call(d, "watch", {"names": [job]})["version"]
        if call(d, "watch", {"names": [job], "since": since, "wait": quiet})["version"] == since:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} did not settle within {timeout} s: {status_of(d, job)}")


def job_exists(d: Daemon, job: str) -> bool:
    reply = d.rpc("status", {"job": job})
    return "result" in reply


# ---------------------------------------------------------------------------- schedules


def schedule_rows(d: Daemon, name: str) -> list[dict[str, Any]]:
    """``schedule list --json`` (the real client), the rows of NAME."""
    return [row for row in d.json("schedule", "list") if row["target_name"] == name]


def rpc_schedule_rows(d: Daemon, name: str) -> list[dict[str, Any]]:
    """The same over a raw request (cheap enough to poll)."""
    return [row for row in call(d, "schedule.list")["schedules"] if row["target_name"] == name]


def wait_for_fires(d: Daemon, name: str, after: str | None, count: int, timeout: float = FIRE_TIMEOUT) -> list[str]:
    """Poll the schedule list until NAME's last_fire_ts has taken ``count`` new values past ``after``."""
    seen: list[str] = []
    last = after
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        (row,) = rpc_schedule_rows(d, name)
        if row["last_fire_ts"] is not None and row["last_fire_ts"] != last:
            assert last is None or row["last_fire_ts"] > last, f"last_fire_ts went back: {last} -> {row}"
            last = row["last_fire_ts"]
            seen.append(last)
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"schedule of {name} fired {len(seen)} time(s) in {timeout} s, wanted {count}: {row}")
        time.sleep(POLL)
    return seen


@contextlib.contextmanager
def scheduled(d: Daemon, name: str, expression: str, *extra: str) -> Iterator[str]:
    """A schedule of NAME for the duration of the block; removed at the end whatever happens."""
    out = d.ok("schedule", "add", name, expression, *extra)
    try:
        yield out
    finally:
        d.ctl("schedule", "remove", name)


# ---------------------------------------------------------------------------- concurrency


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (sweep line; an end at t comes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


# ============================================================================ schedules


def test_seconds_schedule_fires_a_real_run_then_disable_enable_remove(daemon: Daemon, tmp_path: Path) -> None:
    job = "sched_tick"
    out = tmp_path / "fired.txt"
    import_job(daemon, tmp_path, job, [step(10, f"echo fired >> {q(str(out))}")])
    with scheduled(daemon, job, EVERY_SECOND) as added:
        assert EVERY_SECOND in added
        (row,) = rpc_schedule_rows(daemon, job)
        assert (row["cron"], row["timezone"], row["enabled"]) == (EVERY_SECOND, None, True)
        assert row["next_fire_ts"] is not None
        assert parse_ts(row["next_fire_ts"]) - datetime.now(UTC) < timedelta(seconds=2)

        status = wait_for_status(daemon, job, "Completed", timeout=FIRE_TIMEOUT)
        first = status["run"]
        assert first["requested_by"] == f"schedule {EVERY_SECOND}"
        assert by_step(first)[10]["status"] == "Success"
        assert lines(out)[:1] == ["fired"]

        daemon.ok("schedule", "disable", job)
        (row,) = schedule_rows(daemon, job)
        assert row["enabled"] is False
        assert row["next_fire_ts"] is None
        assert row["last_fire_ts"] is not None
        quiet = settle(daemon, job)  # a run fired just before the disable may still end
        runs_before = len(lines(out))
        # Two fire times pass while disabled: no new run.
        run_id = quiet["run"]["run_id"]
        stays(daemon, job, lambda s: s["run"]["run_id"] == run_id, "no run while disabled", 2.2)
        assert len(lines(out)) == runs_before

        daemon.ok("schedule", "enable", job)
        (row,) = rpc_schedule_rows(daemon, job)
        assert row["enabled"] is True and row["next_fire_ts"] is not None
        again = wait_for(
            daemon,
            job,
            lambda s: s["run"]["run_id"] != run_id and s["status"] == "Completed",
            "a new run once enabled",
            FIRE_TIMEOUT,
        )
        assert again["run"]["requested_by"] == f"schedule {EVERY_SECOND}"

        removed = daemon.ok("schedule", "remove", job)
        assert "1 schedule(s) removed" in removed
        assert schedule_rows(daemon, job) == []
    assert_refused(daemon.ctl("schedule", "remove", job), job, "no")
    settle(daemon, job)
    assert len(lines(out)) == len(daemon.json("history", job, "-n", "100")["runs"])


def test_schedule_does_not_start_a_job_that_is_still_running(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate], groups_to_kill: list[int]
) -> None:
    job = "sched_busy"
    blocker = gate("sched_busy")
    count = tmp_path / "count.txt"
    import_job(daemon, tmp_path, job, [step(10, f"{blocker.command()}; echo run >> {q(str(count))}")])
    log_offset = len(daemon.log())

    def refusals() -> list[str]:
        return [
            line
            for line in daemon.log()[log_offset:].splitlines()
            if job in line and "not started" in line and "already running" in line
        ]

    with scheduled(daemon, job, EVERY_SECOND):
        groups_to_kill.append(blocker.wait_started(daemon, job))
        blocked = current_run(daemon, job)
        (row,) = rpc_schedule_rows(daemon, job)
        wait_for_fires(daemon, job, row["last_fire_ts"], 2)
        deadline = time.monotonic() + FIRE_TIMEOUT
        while len(refusals()) < 2:  # the log line follows the recorded fire
            assert time.monotonic() < deadline, f"no 'not started ... already running' lines:\n{daemon.log()}"
            time.sleep(POLL)
        still = current_run(daemon, job)
        assert (still["run_id"], still["status"]) == (blocked["run_id"], "Running")
        assert lines(count) == []

        blocker.open()
        wait_for(daemon, job, lambda s: s["run"]["run_id"] != blocked["run_id"] or s["status"] in FINISHED, "end")
        daemon.ok("schedule", "remove", job)
    settle(daemon, job)

    history = daemon.json("history", job, "-n", "100")["runs"]
    assert history, "no run in history"
    assert all(r["status"] == "Completed" for r in history), [r["status"] for r in history]
    assert blocked["run_id"] in {r["run_id"] for r in history}
    assert len(lines(count)) == len(history)
    intervals = sorted((parse_ts(r["start_ts"]), parse_ts(r["end_ts"])) for r in history)
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, f"two runs of {job} overlapped: {intervals}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["61 * * * *"], ["invalid cron expression", "61 * * * *"], id="minute-61"),
        pytest.param(["* * *"], ["'* * *'", "3 fields", "use 5"], id="three-fields"),
        pytest.param(["* * * * * * *"], ["7 fields"], id="seven-fields"),
        pytest.param(["0 25 * * *"], ["invalid cron expression", "0 25 * * *"], id="hour-25"),
        pytest.param(["0 3 * * *", "--timezone", "Mars/Olympus"], ["unknown timezone", "Mars/Olympus"], id="timezone"),
    ],
)
def test_schedule_add_bad_input_is_refused(daemon: Daemon, tmp_path: Path, args: list[str], words: list[str]) -> None:
    job = "sched_bad"
    if not job_exists(daemon, job):
        import_job(daemon, tmp_path, job, [step(10, "true")])
    assert_refused(daemon.ctl("schedule", "add", job, *args), *words)
    assert rpc_schedule_rows(daemon, job) == []


def test_schedule_for_an_unknown_name_or_twice_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    assert_refused(daemon.ctl("schedule", "add", "sched_no_such_job", "0 3 * * *"), "sched_no_such_job", "no job")
    assert schedule_rows(daemon, "sched_no_such_job") == []
    assert_refused(daemon.ctl("schedule", "disable", "sched_no_such_job"), "sched_no_such_job")
    assert_refused(daemon.ctl("schedule", "remove", "sched_no_such_job"), "sched_no_such_job")

    job = "sched_dup"
    import_job(daemon, tmp_path, job, [step(10, "true")])
    with scheduled(daemon, job, "0 3 * * *", "--timezone", "Europe/Paris"):
        assert_refused(daemon.ctl("schedule", "add", job, "0  3  * * *"), "already has", "0 3 * * *")
        (row,) = schedule_rows(daemon, job)
        assert (row["cron"], row["timezone"]) == ("0 3 * * *", "Europe/Paris")
        assert parse_ts(row["next_fire_ts"]) > datetime.now(UTC)
        # 03:00 in Paris is 01:00 (summer) or 02:00 (winter) UTC
        assert parse_ts(row["next_fire_ts"]).strftime("%M:%S") == "00:00"
        assert parse_ts(row["next_fire_ts"]).hour in (1, 2)
        assert_refused(daemon.ctl("schedule", "remove", job, "0 4 * * *"), job, "0 4 * * *")
        assert len(rpc_schedule_rows(daemon, job)) == 1


def test_schedules_follow_a_renamed_job_and_go_with_a_removed_one(daemon: Daemon, tmp_path: Path) -> None:
    import_job(daemon, tmp_path, "sched_old", [step(10, "true")])
    daemon.ok("schedule", "add", "sched_old", "0 3 * * *")
    daemon.ok("schedule", "add", "sched_old", "0 4 * * *", "--timezone", "Europe/Paris")
    renamed = daemon.ok("job", "rename", "sched_old", "sched_new")
    assert "with its 2 schedules" in renamed, renamed
    assert schedule_rows(daemon, "sched_old") == []
    rows = schedule_rows(daemon, "sched_new")
    assert sorted((r["cron"], r["timezone"]) for r in rows) == [("0 3 * * *", None), ("0 4 * * *", "Europe/Paris")]
    listed = daemon.ok("schedule", "list")
    assert "sched_new" in listed and re.search(r"\d\d:\d\d:\d\d [A-Z+\-0-9]+", listed), listed  # zone shown

    removed = daemon.ok("job", "remove", "--yes", "sched_new")
    assert "with its 2 schedules" in removed, removed
    assert schedule_rows(daemon, "sched_new") == []
    # A job of the same name later starts with no schedule of the old one's.
    import_job(daemon, tmp_path, "sched_new", [step(10, "true")])
    assert schedule_rows(daemon, "sched_new") == []


def test_schedule_of_a_group_starts_every_job_of_it(daemon: Daemon, tmp_path: Path) -> None:
    group = "sched_grp"
    jobs = ["sched_grp_a", "sched_grp_b"]
    out = {job: tmp_path / f"{job}.txt" for job in jobs}
    for job in jobs:
        import_job(daemon, tmp_path, job, [step(10, f"echo ran >> {q(str(out[job]))}")], group=group)
    with scheduled(daemon, group, EVERY_SECOND):
        for job in jobs:
            run = wait_for_status(daemon, job, "Completed", timeout=FIRE_TIMEOUT)["run"]
            assert run["requested_by"] == f"schedule {EVERY_SECOND}"
        daemon.ok("schedule", "remove", group)
    for job in jobs:
        settle(daemon, job)
        assert lines(out[job])[:1] == ["ran"]


def test_maintenance_mode_skips_fires_with_a_log_line(daemon: Daemon, tmp_path: Path) -> None:
    job = "sched_maint"
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, job, [step(10, f"echo ran >> {q(str(out))}")])
    log_offset = len(daemon.log())
    daemon.ok("repo", "maintenance", "--on")
    try:
        with scheduled(daemon, job, EVERY_SECOND):
            wait_for_fires(daemon, job, None, 2)
            deadline = time.monotonic() + FIRE_TIMEOUT
            while "skipped: maintenance mode" not in daemon.log()[log_offset:]:
                assert time.monotonic() < deadline, daemon.log()[log_offset:]
                time.sleep(POLL)
            assert status_of(daemon, job)["run"] is None
            assert not out.exists()
            daemon.ok("schedule", "remove", job)
    finally:
        daemon.ok("repo", "maintenance", "--off")
    assert status_of(daemon, job)["run"] is None
    assert not out.exists()


def test_missed_fires_get_one_catch_up_run_at_start(fresh_daemon: Daemon, tmp_path: Path) -> None:
    d = fresh_daemon
    d.start()
    job = "sched_catch_up"
    out = tmp_path / "out.txt"
    import_job(d, tmp_path, job, [step(10, f"echo ran >> {q(str(out))}")])
    d.ok("schedule", "add", job, "0 * * * *", "--timezone", "UTC")  # hourly: not due during the test
    d.stop()
    # The daemon "was down" for five hours: its last fire was five hours ago.
    five_hours_ago = (datetime.now(UTC) - timedelta(hours=5)).strftime(TS_FORMAT)
    with sqlite3.connect(d.database) as db:
        db.execute("UPDATE schedule SET last_fire_ts = ? WHERE target_name = ?", (five_hours_ago, job))
    db.close()

    d.start()
    run = wait_for_status(d, job, "Completed")["run"]
    assert run["requested_by"] == "schedule 0 * * * *"
    settle(d, job)
    assert lines(out) == ["ran"]  # one catch-up run, not five
    assert len(d.json("history", job, "-n", "100")["runs"]) == 1
    (row,) = schedule_rows(d, job)
    assert parse_ts(row["last_fire_ts"]) > datetime.now(UTC) - timedelta(minutes=5)
    next_fire = parse_ts(row["next_fire_ts"])
    assert next_fire.strftime("%M:%S.%f") == "00:00.000000"
    assert timedelta(0) < next_fire - datetime.now(UTC) <= timedelta(hours=1)
    assert not [line for line in d.log().splitlines() if job in line and "not started" in line]  # no replay burst


# ============================================================================ parallel steps


def timed(name: str, directory: Path, gate: Gate, *, sleep: float) -> str:
    """A step command: record its start, block on the gate, sleep, record its end."""
    start, end = directory / f"{name}.start", directory / f"{name}.end"
    return f"date +%s.%N > {q(str(start))}; {gate.command()}; sleep {sleep}; date +%s.%N > {q(str(end))}"


def test_parallel_branches_run_side_by_side_and_join(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate], groups_to_kill: list[int]
) -> None:
    job = "par_ok"
    g20, g30 = gate("par20"), gate("par30")
    s40 = tmp_path / "s40.start"
    import_job(
        daemon,
        tmp_path,
        job,
        [
            step(10, "true"),
            step(20, timed("s20", tmp_path, g20, sleep=0.5), wait=10),
            step(30, timed("s30", tmp_path, g30, sleep=0.5), wait=10),
            step(40, f"date +%s.%N > {q(str(s40))}", wait=20, alt_wait=30),
        ],
    )
    daemon.ok("start", job)
    groups_to_kill.append(g20.wait_started(daemon, job))
    groups_to_kill.append(g30.wait_started(daemon, job))  # both started: neither waited for the other

    status = daemon.json("status", job)
    run = status["run"]
    assert status["status"] == "Running"
    assert run["running_steps"] == [20, 30]
    steps = by_step(run)
    assert [steps[n]["status"] for n in (10, 20, 30, 40)] == ["Success", "Running", "Running", "Pending"]
    assert not s40.exists()
    assert "20, 30" in daemon.ok("status", job)

    g20.open()
    g30.open()
    wait_for_status(daemon, job, "Completed")

    starts = [read_float(tmp_path / f"{n}.start") for n in ("s20", "s30")]
    ends = [read_float(tmp_path / f"{n}.end") for n in ("s20", "s30")]
    assert max(starts) < min(ends), f"20 and 30 did not overlap: starts {starts}, ends {ends}"
    assert read_float(s40) >= max(ends), "40 started before both 20 and 30 ended"

    steps = by_step(daemon.json("status", job)["run"])
    assert all(steps[n]["status"] == "Success" for n in (10, 20, 30, 40))
    start_ts = {n: parse_ts(steps[n]["start_ts"]) for n in (10, 20, 30, 40)}
    end_ts = {n: parse_ts(steps[n]["end_ts"]) for n in (10, 20, 30, 40)}
    assert max(start_ts[20], start_ts[30]) < min(end_ts[20], end_ts[30])
    assert start_ts[20] >= end_ts[10] and start_ts[30] >= end_ts[10]
    assert start_ts[40] >= max(end_ts[20], end_ts[30])
    assert daemon.json("status", job)["run"]["running_steps"] == []


def test_parallel_failure_lets_the_other_branch_finish_and_resume_reruns_the_rest(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate], groups_to_kill: list[int]
) -> None:
    job = "par_fail"
    out, state = tmp_path / "out.txt", tmp_path / "state"
    g30 = gate("parfail30")
    o = q(str(out))
    import_job(
        daemon,
        tmp_path,
        job,
        [
            step(10, f"echo 10 >> {o}"),
            step(20, f"echo 20 >> {o}; test -f {q(str(state))} || exit 7", wait=10),
            step(30, f"echo 30 >> {o}; {g30.command()}", wait=10),
            step(40, f"echo 40 >> {o}", wait=20, alt_wait=30),
        ],
    )
    daemon.ok("start", job)
    groups_to_kill.append(g30.wait_started(daemon, job))
    failed20 = wait_for(daemon, job, lambda s: by_step(s["run"])[20]["status"] == "Failure", "step 20 failed")
    assert failed20["status"] == "Running"
    assert failed20["run"]["running_steps"] == [30]

    def still_running(s: dict[str, Any]) -> bool:
        return s["status"] == "Running" and s["run"]["running_steps"] == [30]

    stays(daemon, job, still_running, "run Running with step 30 while step 30 runs", 0.5)

    g30.open()
    run = wait_for_status(daemon, job, *FINISHED)["run"]
    assert run["status"] == "Failed"
    assert "step 20" in run["status_reason"]
    steps = by_step(run)
    assert (steps[20]["status"], steps[20]["exit_code"]) == ("Failure", 7)
    assert steps[30]["status"] == "Success"
    assert steps[40]["status"] == "Pending" and steps[40]["start_ts"] is None
    assert parse_ts(run["end_ts"]) >= parse_ts(steps[30]["end_ts"])  # the run ended after 30, not at 20
    assert sorted(lines(out)) == ["10", "20", "30"]  # 40 never started

    state.touch()
    assert_exit(daemon.ctl("start", "--resume", "--wait", job), 0)
    assert lines(out)[3:] == ["20", "40"]  # only 20 and 40 ran again
    resumed = finished_run(daemon, job)
    assert resumed["status"] == "Completed"
    assert resumed["resumed_from"] == run["run_id"]
    assert {n: s["status"] for n, s in by_step(resumed).items() if n != 10} == {
        20: "Success",
        30: "Success",
        40: "Success",
    }


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        pytest.param(
            [step(10, "true", wait=20), step(20, "true", wait=10)],
            ["cycle", "10 -> 20 -> 10"],
            id="two-step-cycle",
        ),
        pytest.param(
            [
                step(10, "true"),
                step(20, "true", wait=10, alt_wait=40),
                step(30, "true", wait=20),
                step(40, "true", wait=30),
            ],
            ["cycle", "20 -> 40 -> 30 -> 20"],
            id="three-step-cycle",
        ),
        pytest.param(
            [step(10, "true"), step(20, "true", wait=10, alt_wait=99)],
            ["line 3", "step 20", "step 99", "does not exist"],
            id="missing-alt-wait-step",
        ),
        pytest.param(
            [step(10, "true"), step(20, "true"), step(30, "true", wait=25)],
            ["line 4", "step 30", "step 25", "does not exist"],
            id="missing-wait-step",
        ),
        pytest.param([step(10, "true"), step(20, "true", wait=20)], ["line 3", "waits for itself"], id="itself"),
    ],
)
def test_bad_wait_steps_are_refused_at_import(
    daemon: Daemon, tmp_path: Path, request: pytest.FixtureRequest, steps: list[dict[str, Any]], words: list[str]
) -> None:
    job = "par_bad_" + re.sub(r"\W", "_", request.node.callspec.id)
    path = write_job_file(tmp_path / f"{job}.csv", steps)
    assert_refused(daemon.ctl("job", "import", job, str(path)), str(path), *words)
    assert not job_exists(daemon, job)


# ============================================================================ timeouts and retries


def test_timeout_kills_the_whole_process_group_and_fails_the_step(
    daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    job = "to_kill"
    pid_file, out = tmp_path / "pid", tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        job,
        [
            step(10, f"sleep 600 & echo $$ > {q(str(pid_file))}; sleep 600", args="timeout=1"),
            step(20, f"echo 20 >> {q(str(out))}"),
        ],
    )
    began = time.monotonic()
    result = daemon.ctl("start", "--wait", job)
    elapsed = time.monotonic() - began
    pgid = int(pid_file.read_text())
    groups_to_kill.append(pgid)
    assert_exit(result, 1)
    assert elapsed < 20, f"the step was not ended after 1 s ({elapsed:.1f} s)"
    run = finished_run(daemon, job)
    assert run["status"] == "Failed"
    assert "timed out after 1 s" in run["status_reason"]
    steps = by_step(run)
    assert steps[10]["status"] == "Failure"
    assert steps[10]["message"] == "timed out after 1 s"
    assert steps[10]["exit_code"] == 124
    assert steps[10]["attempts"] == 1
    assert 1 <= steps[10]["duration"] < 10
    assert steps[20]["status"] == "Pending"
    assert not out.exists()
    assert wait_group_gone(pgid, 5) == [], "processes of the timed-out step's group survived"
    assert "timed out after 1 s" in daemon.ok("logs", job)


def test_tempargs_timeout_overrides_the_step_timeout_for_one_run(
    daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    job = "to_temp"
    pid_file, flag = tmp_path / "pid", tmp_path / "quick"
    command = f"echo $$ > {q(str(pid_file))}; test -f {q(str(flag))} && exit 0; sleep 600"
    import_job(daemon, tmp_path, job, [step(10, command, args="timeout=600")])
    assert_exit(daemon.ctl("start", "--wait", "--tempargs", "timeout:1", job), 1)
    groups_to_kill.append(int(pid_file.read_text()))
    assert by_step(finished_run(daemon, job))[10]["message"] == "timed out after 1 s"
    assert wait_group_gone(int(pid_file.read_text()), 5) == []
    flag.touch()
    assert_exit(daemon.ctl("start", "--wait", job), 0)  # the override was for that run only


@pytest.mark.parametrize(("temparg", "shown"), [("timeout:0", "timeout=0"), ("retries:two", "retries=two")])
def test_bad_control_value_in_tempargs_is_refused_not_an_internal_error(
    daemon: Daemon, tmp_path: Path, temparg: str, shown: str
) -> None:
    job = "ctl_bad_temp_" + temparg.split(":", maxsplit=1)[0]
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, job, [step(10, f"echo ran >> {q(str(out))}")])
    log_offset = len(daemon.log())
    result = daemon.ctl("start", "--wait", "--tempargs", temparg, job)
    assert_exit(result, 1)
    run = status_of(daemon, job)["run"]
    said = result.stderr + ("" if run is None else (finished_run(daemon, job)["status_reason"] or ""))
    assert shown in said, said
    assert "internal error" not in said, said
    assert "Traceback" not in daemon.log()[log_offset:]
    assert not out.exists()


def counting_step(counter: Path, succeed_at: int) -> str:
    """A command that fails (exit 1) until it has been called ``succeed_at`` times."""
    c = q(str(counter))
    return f"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge {succeed_at} ]"


def test_retries_until_success_record_every_attempt(daemon: Daemon, tmp_path: Path) -> None:
    job = "retry_ok"
    counter = tmp_path / "counter"
    import_job(daemon, tmp_path, job, [step(10, counting_step(counter, 3), args="retries=3 retry_delay=0.1")])
    assert_exit(daemon.ctl("start", "--wait", job), 0)
    assert counter.read_text().strip() == "3"
    run = finished_run(daemon, job)
    assert run["status"] == "Completed"
    s10 = by_step(run)[10]
    assert (s10["status"], s10["exit_code"], s10["attempts"]) == ("Success", 0, 3)
    log = s10["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3]
    assert [a["exit_code"] for a in log] == [1, 1, 0]
    for before, after in itertools.pairwise(log):
        gap = (parse_ts(after["start_ts"]) - parse_ts(before["end_ts"])).total_seconds()
        assert gap >= 0.09, f"retry_delay=0.1 not respected: {log}"
    history = daemon.json("history", job, "-n", "1")["runs"]
    assert [a["exit_code"] for a in by_step(history[0])[10]["attempt_log"]] == [1, 1, 0]
    text = daemon.ok("logs", job)
    assert "attempt 1 failed" in text and "attempt 2 failed" in text
    assert "attempt 3 failed" not in text


def test_retries_exhausted_fail_the_step(daemon: Daemon, tmp_path: Path) -> None:
    job = "retry_fail"
    counter = tmp_path / "counter"
    import_job(daemon, tmp_path, job, [step(10, counting_step(counter, 3), args="retries=1")])
    assert_exit(daemon.ctl("start", "--wait", job), 1)
    assert counter.read_text().strip() == "2"
    run = finished_run(daemon, job)
    assert run["status"] == "Failed"
    s10 = by_step(run)[10]
    assert (s10["status"], s10["exit_code"], s10["attempts"]) == ("Failure", 1, 2)
    assert [a["exit_code"] for a in s10["attempt_log"]] == [1, 1]


def test_a_single_attempt_has_no_attempt_log(daemon: Daemon, tmp_path: Path) -> None:
    job = "retry_once"
    import_job(daemon, tmp_path, job, [step(10, "true", args="retries=2")])
    assert_exit(daemon.ctl("start", "--wait", job), 0)
    s10 = by_step(finished_run(daemon, job))[10]
    assert (s10["status"], s10["attempts"]) == ("Success", 1)
    assert not s10["attempt_log"]  # only retried steps have one


def test_stop_during_the_retry_delay_ends_the_step(daemon: Daemon, tmp_path: Path) -> None:
    job = "retry_stop"
    counter = tmp_path / "counter"
    import_job(daemon, tmp_path, job, [step(10, counting_step(counter, 99), args="retries=5 retry_delay=60")])
    daemon.ok("start", job)
    wait_for_path(counter, daemon, job)  # the first attempt ran (and failed): now in the 60 s pause
    deadline = time.monotonic() + WAIT_TIMEOUT
    while "attempt 2 of 6" not in call(daemon, "logs", {"job": job})["content"]:
        assert time.monotonic() < deadline
        time.sleep(POLL)
    began = time.monotonic()
    daemon.ok("stop", job)
    run = wait_for_status(daemon, job, *FINISHED, timeout=10)["run"]
    assert time.monotonic() - began < 10
    assert run["status"] == "Stopped"
    assert counter.read_text().strip() == "1"
    assert by_step(run)[10]["attempts"] == 1


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        pytest.param("timeout=0", "must be a number of seconds above 0", id="timeout-0"),
        pytest.param("timeout=-5", "must be a number of seconds above 0", id="timeout-negative"),
        pytest.param("timeout=soon", "not a number of seconds", id="timeout-text"),
        pytest.param("retries=two", "must be a whole number", id="retries-text"),
        pytest.param("retries=101", "at most 100", id="retries-too-many"),
        pytest.param("retry_delay=-1", "must be 0 or more seconds", id="retry-delay-negative"),
    ],
)
def test_bad_control_args_are_refused_at_import_naming_the_line(
    daemon: Daemon, tmp_path: Path, args: str, problem: str
) -> None:
    job = "ctl_bad_" + re.sub(r"\W", "_", args)
    path = write_job_file(tmp_path / f"{job}.csv", [step(10, "true"), step(20, "true", args=f"mode=x {args}")])
    result = daemon.ctl("job", "import", job, str(path))
    assert_refused(result, str(path), "line 3", "step 20", args, problem)
    assert not job_exists(daemon, job)


def test_control_args_are_not_passed_to_the_command(daemon: Daemon, tmp_path: Path) -> None:
    job = "ctl_hidden"
    out, out_json = tmp_path / "out.txt", tmp_path / "out_json.txt"
    import_job(
        daemon,
        tmp_path,
        job,
        [
            step(10, "echo got", args="mode=x timeout=30", capture=True),
            step(20, f"echo got > {q(str(out))}", args="mode=x timeout=30 retries=2 retry_delay=0"),
            step(30, f"echo got > {q(str(out_json))}", args='{"mode": "x", "timeout": 30, "retries": 1}'),
        ],
    )
    assert_exit(daemon.ctl("start", "--wait", job), 0)
    assert by_step(finished_run(daemon, job))[10]["output"] == "got mode=x"
    assert out.read_text() == "got mode=x\n"
    assert out_json.read_text() == "got mode=x\n"
    got_lines = [line for line in daemon.ok("logs", job).splitlines() if "got" in line]
    assert got_lines and all(line.endswith("got mode=x") for line in got_lines), got_lines


# ============================================================================ concurrency limit


def test_concurrency_limit_queues_runs_beyond_it(
    fresh_daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    d = fresh_daemon
    configure(d, daemon_keys={"max_concurrent_jobs": "2"})
    d.start()
    release = gate("limit")
    jobs = [f"limit_{c}" for c in "abcde"]
    for job in jobs:
        times, mark = tmp_path / f"{job}.times", tmp_path / f"{job}.started"
        command = (
            f"s=$(date +%s.%N); touch {q(str(mark))}; "
            f"while [ ! -f {q(str(release.release))} ]; do sleep 0.05; done; "
            f'sleep 0.5; echo "$s $(date +%s.%N)" > {q(str(times))}'
        )
        import_job(d, tmp_path, job, [step(10, command)])
    import_job(d, tmp_path, "limit_f", [step(10, f"touch {q(str(tmp_path / 'limit_f.ran'))}")])

    for job in jobs:
        call(d, "start", {"name": job})  # five starts, in this order
    for job in jobs[:2]:
        wait_for_path(tmp_path / f"{job}.started", d, job)

    # The first two started hold both slots (blocked); the other three are queued, in Ready.
    for job in jobs[:2]:
        status = status_of(d, job)
        assert (status["status"], status["run"]["queued"]) == ("Running", False)
    for job in jobs[2:]:
        status = status_of(d, job)
        assert status["status"] == "Ready", status
        assert status["run"]["queued"] is True, status
        assert not (tmp_path / f"{job}.started").exists()
    status = d.json("status", jobs[-1])  # the same through the real client
    assert (status["status"], status["run"]["queued"], status["run"]["running_steps"]) == ("Ready", True, [])
    assert "queued: waiting for a free slot" in d.ok("status", jobs[-1])

    # A queued run stops at once.
    call(d, "start", {"name": "limit_f"})
    assert status_of(d, "limit_f")["run"]["queued"] is True
    d.ok("stop", "limit_f")
    stopped = wait_for_status(d, "limit_f", *FINISHED, timeout=5)
    assert stopped["status"] == "Stopped"
    assert not (tmp_path / "limit_f.ran").exists()

    release.open()
    for job in jobs:
        assert wait_for_status(d, job, *FINISHED)["status"] == "Completed"

    intervals = {job: tuple(map(float, (tmp_path / f"{job}.times").read_text().split())) for job in jobs}
    assert max_overlap(list(intervals.values())) == 2, intervals  # at most two, and the limit was used
    by_start = sorted(jobs, key=lambda job: intervals[job][0])
    assert set(by_start[:2]) == set(jobs[:2])  # the first started ran first
    assert by_start[-1] == jobs[-1]  # and the last started ran last
    assert not (tmp_path / "limit_f.ran").exists()


# ============================================================================ status


def test_status_never_shows_a_finished_run_with_unfinished_steps(daemon: Daemon, tmp_path: Path) -> None:
    job = "torn_status"
    import_job(daemon, tmp_path, job, [step(10, "true")])
    deadline = time.monotonic() + 10
    for _ in range(60):  # quick runs, their status read as fast as possible
        call(daemon, "start", {"name": job})
        while True:
            status = status_of(daemon, job)
            if status["status"] in FINISHED:
                run = status["run"]
                assert run["end_ts"] is not None, f"finished run without an end: {status}"
                assert [s["status"] for s in run["steps"]] == ["Success"], f"finished run, unfinished steps: {status}"
                break
            assert time.monotonic() < deadline, status


def test_raising_the_limit_by_reload_lets_queued_runs_start(
    fresh_daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    d = fresh_daemon
    configure(d, daemon_keys={"max_concurrent_jobs": "1"})
    proc = d.start()
    hold = gate("reload_limit")
    import_job(d, tmp_path, "reload_hold", [step(10, hold.command())])
    import_job(d, tmp_path, "reload_queued", [step(10, "true")])
    call(d, "start", {"name": "reload_hold"})
    hold.wait_started(d, "reload_hold")
    call(d, "start", {"name": "reload_queued"})
    assert status_of(d, "reload_queued")["run"]["queued"] is True

    text = d.config_file.read_text()
    assert "max_concurrent_jobs = 1\n" in text
    d.config_file.write_text(text.replace("max_concurrent_jobs = 1\n", "max_concurrent_jobs = 3\n"))
    proc.send_signal(signal.SIGHUP)
    # The queued run starts while the first still holds its slot: the new limit is in force.
    assert wait_for_status(d, "reload_queued", *FINISHED)["status"] == "Completed"
    assert status_of(d, "reload_hold")["status"] == "Running"
    assert "configuration reloaded" in d.log()
    hold.open()
    assert wait_for_status(d, "reload_hold", *FINISHED)["status"] == "Completed"
