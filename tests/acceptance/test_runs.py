"""The job execution engine, end to end: running steps, captured output, ranges, temp args,
groups, pause / stop / resume, stop --now, events, crash recovery, SIGTERM, history, logs,
bad input — all driven through the real loadmgrctl against a real loadmgrd.

Synchronisation never sleeps for a state: runs are followed with ``start --wait`` or the
``watch`` long poll; a step that must be "really running" touches a marker file and blocks on
a release file (a ``Gate``), and only the marker is polled (short loop with a deadline).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Daemon
from tests.support import (
    WAIT_TIMEOUT,
    Gate,
    assert_exit,
    assert_refused,
    by_step,
    call,
    configure,
    current_run,
    import_job,
    kill_group,
    lines,
    live_group_members,
    q,
    status_of,
    stays,
    step,
    wait_for_path,
    wait_for_status,
    wait_group_gone,
    write_job_file,
)

GRACE = 1  # [daemon] stop_grace_period for the daemons of the kill / stop --now tests


# ---------------------------------------------------------------------------- client


def start_wait(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return d.ctl("start", "--wait", *args)


@contextlib.contextmanager
def ctl_background(d: Daemon, *args: str) -> Iterator[subprocess.Popen[str]]:
    """loadmgrctl running in the background (``logs -f``, ``start --wait``); killed if still running."""
    command = [PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), *args]
    with subprocess.Popen(command, env=d.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# ============================================================================ running steps


def test_captured_output_feeds_a_later_step(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "cap_feed",
        [step(10, "echo value-10", capture=True), step(20, f"echo got %step_10% > {q(str(out))}")],
    )
    assert_exit(start_wait(daemon, "cap_feed"), 0)
    assert out.read_text() == "got value-10\n"
    run = current_run(daemon, "cap_feed")
    assert run["status"] == "Completed"
    assert by_step(run)[10]["output"] == "value-10"
    assert by_step(run)[20]["output"] is None  # not captured


def test_ignore_error_makes_a_warning_and_the_run_goes_on(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "ign_err",
        [
            step(10, f"echo 10 >> {q(str(out))}"),
            step(20, "exit 3", ignore_error=True),
            step(30, f"echo 30 >> {q(str(out))}"),
        ],
    )
    assert_exit(start_wait(daemon, "ign_err"), 0)
    run = current_run(daemon, "ign_err")
    assert run["status"] == "Completed"
    steps = by_step(run)
    assert [steps[n]["status"] for n in (10, 20, 30)] == ["Success", "Warning", "Success"]
    assert steps[20]["exit_code"] == 3
    assert lines(out) == ["10", "30"]


def test_failed_step_fails_the_run_and_resume_continues_from_it(daemon: Daemon, tmp_path: Path) -> None:
    out, state, var = tmp_path / "out.txt", tmp_path / "state", tmp_path / "var.txt"
    import_job(
        daemon,
        tmp_path,
        "fail_resume",
        [
            step(10, f"echo 10 >> {q(str(out))}; echo value-10", capture=True),
            step(
                20,
                f"echo 20 >> {q(str(out))}; test -f {q(str(state))} || {{ touch {q(str(state))}; exit 1; }}; "
                f"echo %step_10% > {q(str(var))}",
            ),
            step(30, f"echo 30 >> {q(str(out))}"),
        ],
    )
    assert_exit(start_wait(daemon, "fail_resume"), 1)
    first = current_run(daemon, "fail_resume")
    assert first["status"] == "Failed"
    assert "20" in (first["status_reason"] or "")
    steps = by_step(first)
    assert steps[10]["status"] == "Success"
    assert steps[20]["status"] == "Failure" and steps[20]["exit_code"] == 1
    assert steps[30]["status"] == "Pending" and steps[30]["start_ts"] is None
    assert lines(out) == ["10", "20"]  # step 30 never ran

    assert_exit(daemon.ctl("start", "--resume", "--wait", "fail_resume"), 0)
    second = current_run(daemon, "fail_resume")
    assert second["status"] == "Completed"
    assert second["run_id"] != first["run_id"]
    assert second["resumed_from"] == first["run_id"]
    assert lines(out) == ["10", "20", "20", "30"]  # 10 not run again; 20 re-run, then 30
    assert var.read_text() == "value-10\n"  # step 10's captured output carried into the resumed run
    assert second["start_step"] == 20
    assert {n: s["status"] for n, s in by_step(second).items() if n != 10} == {20: "Success", 30: "Success"}


def test_step_range_runs_only_those_steps(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "range_ok", [step(n, f"echo {n} >> {q(str(out))}") for n in (10, 20, 30, 40)])
    assert_exit(start_wait(daemon, "-s", "20-30", "range_ok"), 0)
    assert lines(out) == ["20", "30"]
    run = current_run(daemon, "range_ok")
    assert (run["start_step"], run["end_step"]) == (20, 30)
    assert sorted(by_step(run)) == [20, 30]
    assert_exit(start_wait(daemon, "-s", "30-", "range_ok"), 0)
    assert lines(out) == ["20", "30", "30", "40"]


@pytest.mark.parametrize(("index", "bad"), [(1, "5-3"), (2, "a-b"), (3, "1-2-3")])
def test_bad_step_range_is_refused_and_starts_nothing(daemon: Daemon, tmp_path: Path, index: int, bad: str) -> None:
    out = tmp_path / "out.txt"
    job = f"range_bad_{index}"
    import_job(daemon, tmp_path, job, [step(n, f"echo {n} >> {q(str(out))}") for n in (1, 2, 3, 5)])
    result = daemon.ctl("start", "-s", bad, job)
    assert_refused(result, "step range", bad)
    assert status_of(daemon, job)["status"] == "Not Running"
    assert status_of(daemon, job)["run"] is None
    assert not out.exists()


def test_tempargs_override_step_args_for_one_run(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    import_job(daemon, tmp_path, "targs", [step(10, f"echo > {q(str(out))}", args="mode=slow")])
    assert_exit(start_wait(daemon, "--tempargs", "mode:fast", "targs"), 0)
    assert out.read_text() == "mode=fast\n"
    assert current_run(daemon, "targs")["temp_args"] == {"mode": "fast"}
    assert_exit(start_wait(daemon, "targs"), 0)  # only for that run
    assert out.read_text() == "mode=slow\n"


def test_tempargs_not_in_key_value_form_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    import_job(daemon, tmp_path, "targs_bad", [step(10, f"echo > {q(str(out))}", args="mode=slow")])
    result = daemon.ctl("start", "--tempargs", "novalue", "targs_bad")
    assert_refused(result, "novalue", "key:value")
    assert status_of(daemon, "targs_bad")["run"] is None
    assert not out.exists()


def test_group_jobs_start_together_and_run_concurrently(daemon: Daemon, tmp_path: Path) -> None:
    jobs = ["grp_conc_a", "grp_conc_b", "grp_conc_c"]
    for job in jobs:
        times = tmp_path / f"{job}.times"
        command = f's=$(date +%s.%N); sleep 1; e=$(date +%s.%N); echo "$s $e" > {q(str(times))}'
        import_job(daemon, tmp_path, job, [step(10, command)], group="grp_conc")
    result = start_wait(daemon, "grp_conc")
    assert_exit(result, 0)
    intervals = [tuple(map(float, (tmp_path / f"{job}.times").read_text().split())) for job in jobs]
    assert max(s for s, _ in intervals) < min(e for _, e in intervals), f"no overlap: {intervals}"
    for job in jobs:
        assert current_run(daemon, job)["status"] == "Completed"


def test_group_start_with_one_job_already_running_exits_2(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("grp_part")
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "grp_part_a", [step(10, blocker.command())], group="grp_part")
    import_job(daemon, tmp_path, "grp_part_b", [step(10, f"echo b >> {q(str(out))}")], group="grp_part")
    daemon.ok("start", "grp_part_a")
    blocker.wait_started(daemon, "grp_part_a")
    result = daemon.ctl("start", "grp_part")
    assert_exit(result, 2)
    assert "already running" in result.stderr
    wait_for_status(daemon, "grp_part_b", "Completed")
    assert lines(out) == ["b"]
    blocker.open()
    wait_for_status(daemon, "grp_part_a", "Completed")


def test_group_start_wait_with_one_job_refused_exits_2(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("grp_wait_part")
    import_job(daemon, tmp_path, "grp_wpart_a", [step(10, blocker.command())], group="grp_wpart")
    import_job(daemon, tmp_path, "grp_wpart_b", [step(10, "true")], group="grp_wpart")
    daemon.ok("start", "grp_wpart_a")
    blocker.wait_started(daemon, "grp_wpart_a")
    result = start_wait(daemon, "grp_wpart")
    # b completed, but a was refused: a caller must not read that as "all completed".
    assert_exit(result, 2)
    assert "already running" in result.stderr
    assert current_run(daemon, "grp_wpart_b")["status"] == "Completed"
    blocker.open()
    wait_for_status(daemon, "grp_wpart_a", "Completed")


@pytest.mark.parametrize(
    ("words", "skipped"),
    [
        (["--skip", "wait", "{job}"], {"w_ev"}),
        (["{job}", "--skip", "wait"], {"w_ev"}),
        (["{job}", "--skip", "c_ev"], {"c_ev"}),
        (["--skip", "w_ev", "--skip", "c_ev", "{job}"], {"w_ev", "c_ev"}),
        (["{job}", "--skip", "all"], {"w_ev", "c_ev"}),
        (["--skip", "{job}"], {"w_ev", "c_ev"}),
        (["{job}", "--skip"], {"w_ev", "c_ev"}),
        (["--skip", "--wait", "{job}"], {"w_ev", "c_ev"}),
    ],
)
def test_skip_forms_before_and_after_the_name(
    daemon: Daemon, tmp_path: Path, words: list[str], skipped: set[str]
) -> None:
    job = "skip_forms_" + "_".join(w.replace("-", "d").strip("{}") for w in words)
    import_job(daemon, tmp_path, job, [step(10, "true")])
    daemon.ok("event", "add", job, "w_ev", str(tmp_path / "never.arrives"))
    daemon.ok("event", "add", "-a", "create", job, "c_ev", str(tmp_path / "made.flag"))
    args = [w.format(job=job) for w in words]
    if "w_ev" in skipped:
        if "--wait" not in args:
            args = ["--wait", *args]
        assert_exit(daemon.ctl("start", *args), 0)
    else:  # the wait event stays: the run waits for its file
        daemon.ok("start", *args)
        wait_for_status(daemon, job, "Waiting")
        (tmp_path / "never.arrives").touch()
        wait_for_status(daemon, job, "Completed")
    events = {e["event_name"]: e["status"] for e in current_run(daemon, job)["events"]}
    assert {name for name, status in events.items() if status == "Skipped"} == skipped, events
    assert (tmp_path / "made.flag").exists() == ("c_ev" not in skipped)


# ============================================================================ pause / stop / resume


def test_pause_then_resume(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("pause")
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "pause_job", [step(10, blocker.command()), step(20, f"echo 20 >> {q(str(out))}")])
    daemon.ok("start", "pause_job")
    blocker.wait_started(daemon, "pause_job")
    daemon.ok("pause", "pause_job")
    assert current_run(daemon, "pause_job")["status"] == "Pausing In Progress"
    blocker.open()
    wait_for_status(daemon, "pause_job", "Paused")
    paused = current_run(daemon, "pause_job")
    assert by_step(paused)[10]["status"] == "Success"
    assert by_step(paused)[20]["status"] == "Pending"
    assert not out.exists()  # step 20 did not start

    daemon.ok("resume", "pause_job")
    wait_for_status(daemon, "pause_job", "Completed")
    resumed = current_run(daemon, "pause_job")
    assert resumed["run_id"] == paused["run_id"]  # the same run goes on
    assert lines(out) == ["20"]


def test_resume_of_a_paused_run_takes_new_tempargs(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("pause_targs")
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "pause_targs",
        [step(10, blocker.command()), step(20, f"echo >> {q(str(out))}", args="mode=own keep=own")],
    )
    daemon.ok("start", "--tempargs", "keep:first", "pause_targs")
    blocker.wait_started(daemon, "pause_targs")
    daemon.ok("pause", "pause_targs")
    blocker.open()
    wait_for_status(daemon, "pause_targs", "Paused")
    daemon.ok("resume", "--tempargs", "mode:later", "pause_targs")
    wait_for_status(daemon, "pause_targs", "Completed")
    # The new temp arg joins the run's own; the first one stays in force.
    assert lines(out) == ["mode=later keep=first"]
    assert "temp args on resume: mode=later" in daemon.ok("logs", "pause_targs")


def test_stop_before_next_step_then_resume(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("stop")
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "stop_job", [step(10, blocker.command()), step(20, f"echo 20 >> {q(str(out))}")])
    with ctl_background(daemon, "start", "--wait", "stop_job") as waiter:
        blocker.wait_started(daemon, "stop_job")
        daemon.ok("stop", "stop_job")
        assert current_run(daemon, "stop_job")["status"] == "Stopping In Progress"
        blocker.open()
        _, stderr = waiter.communicate(timeout=WAIT_TIMEOUT)
        assert waiter.returncode == 3, stderr  # start --wait: 3 = stopped
    run = current_run(daemon, "stop_job")
    assert run["status"] == "Stopped"
    assert by_step(run)[10]["status"] == "Success"  # the current step finished
    assert by_step(run)[20]["status"] == "Pending"
    assert not out.exists()

    assert_exit(daemon.ctl("start", "--resume", "--wait", "stop_job"), 0)
    assert lines(out) == ["20"]
    assert current_run(daemon, "stop_job")["status"] == "Completed"


@pytest.fixture
def quick_stop_daemon(fresh_daemon: Daemon) -> Daemon:
    configure(fresh_daemon, daemon_keys={"stop_grace_period": str(GRACE)})
    fresh_daemon.start()
    return fresh_daemon


def test_stop_now_kills_the_step_and_its_children(
    quick_stop_daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    d = quick_stop_daemon
    mark, pgid_file, release, out = (tmp_path / n for n in ("mark", "pgid", "release", "out.txt"))
    command = (
        f"test -f {q(str(release))} && exit 0; sleep 600 & sleep 600 & echo $$ > {q(str(pgid_file))}; "
        f"touch {q(str(mark))}; wait"
    )
    import_job(d, tmp_path, "stop_now", [step(10, command), step(20, f"echo 20 >> {q(str(out))}")])
    d.ok("start", "stop_now")
    wait_for_path(mark, d, "stop_now")
    pgid = int(pgid_file.read_text())
    groups_to_kill.append(pgid)
    assert len(live_group_members(pgid)) >= 3  # bash and its two sleeps

    d.ok("stop", "--now", "stop_now")
    wait_for_status(d, "stop_now", "Stopped", timeout=GRACE + 10)
    assert wait_group_gone(pgid, GRACE + 3) == []
    run = current_run(d, "stop_now")
    assert by_step(run)[10]["status"] == "Failure"
    assert by_step(run)[20]["status"] == "Pending"
    assert not out.exists()

    release.touch()  # resumable: step 10 now ends at once
    assert_exit(d.ctl("start", "--resume", "--wait", "stop_now"), 0)
    assert lines(out) == ["20"]


def test_stop_now_kills_children_that_ignore_sigterm_after_the_grace_period(
    quick_stop_daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    d = quick_stop_daemon
    mark, pgid_file = tmp_path / "mark", tmp_path / "pgid"
    command = f"(trap '' TERM; exec sleep 600) & echo $$ > {q(str(pgid_file))}; touch {q(str(mark))}; wait"
    import_job(d, tmp_path, "stop_now_stubborn", [step(10, command)])
    d.ok("start", "stop_now_stubborn")
    wait_for_path(mark, d, "stop_now_stubborn")
    pgid = int(pgid_file.read_text())
    groups_to_kill.append(pgid)
    d.ok("stop", "--now", "stop_now_stubborn")
    wait_for_status(d, "stop_now_stubborn", "Stopped", timeout=GRACE + 10)
    assert wait_group_gone(pgid, GRACE + 3) == []


# ============================================================================ events


def test_wait_event_satisfied_by_a_file(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrival = inbox / "data.ready"
    import_job(daemon, tmp_path, "ev_wait", [step(10, f"echo ran >> {q(str(out))}")])
    daemon.ok("event", "add", "ev_wait", "ev_ready", str(arrival))
    daemon.ok("start", "ev_wait")
    wait_for_status(daemon, "ev_wait", "Waiting")
    assert not out.exists()

    partial = inbox / ".data.ready.tmp"
    partial.write_text("payload\n")
    partial.rename(arrival)
    wait_for_status(daemon, "ev_wait", "Completed")
    assert lines(out) == ["ran"]
    assert not arrival.exists()  # consumed
    assert list(inbox.iterdir()) == []  # and not left behind under another name
    run = current_run(daemon, "ev_wait")
    assert [(e["event_name"], e["status"]) for e in run["events"]] == [("ev_ready", "Found")]
    history = daemon.json("history", "ev_wait", "-n", "1")["runs"]
    assert [(e["event_name"], e["status"]) for e in history[0]["events"]] == [("ev_ready", "Found")]


def test_wait_event_timeout_fails_the_run(fresh_daemon: Daemon, tmp_path: Path) -> None:
    configure(fresh_daemon, sections="[events]\nwait_timeout = 1\n")
    fresh_daemon.start()
    d = fresh_daemon
    out = tmp_path / "out.txt"
    import_job(d, tmp_path, "ev_timeout", [step(10, f"echo ran >> {q(str(out))}")])
    d.ok("event", "add", "ev_timeout", "never_comes", str(tmp_path / "never.ready"))
    assert_exit(start_wait(d, "ev_timeout"), 1)
    run = current_run(d, "ev_timeout")
    assert run["status"] == "Failed"
    assert "never_comes" in run["status_reason"]
    assert "timed out" in run["status_reason"]
    assert [(e["event_name"], e["status"]) for e in run["events"]] == [("never_comes", "Timed Out")]
    assert by_step(run)[10]["status"] == "Pending"
    assert not out.exists()


def test_wait_event_ignores_a_file_still_being_written(fresh_daemon: Daemon, tmp_path: Path) -> None:
    configure(fresh_daemon, sections="[events]\nwait_sleep_time = 0.2\n")
    fresh_daemon.start()
    d = fresh_daemon
    out = tmp_path / "out.txt"
    arrival = tmp_path / "slow.ready"
    import_job(d, tmp_path, "ev_slow_writer", [step(10, f"echo ran >> {q(str(out))}")])
    d.ok("event", "add", "ev_slow_writer", "slow", str(arrival))
    d.ok("start", "ev_slow_writer")
    wait_for_status(d, "ev_slow_writer", "Waiting")
    with arrival.open("w") as writer:
        writer.write("first half\n")
        writer.flush()
        stays(d, "ev_slow_writer", "Waiting", 1.5)  # the writer stalls, the file stays open
        assert arrival.exists() and not out.exists()
        writer.write("second half\n")
    wait_for_status(d, "ev_slow_writer", "Completed")
    assert lines(out) == ["ran"]


def test_create_event_of_one_job_releases_the_wait_event_of_another(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    handoff = tmp_path / "handoff.done"
    import_job(daemon, tmp_path, "ev_producer", [step(10, f"echo producer >> {q(str(out))}")])
    import_job(daemon, tmp_path, "ev_consumer", [step(10, f"echo consumer >> {q(str(out))}")])
    daemon.ok("event", "add", "ev_consumer", "handoff", str(handoff))
    daemon.ok("event", "add", "-a", "create", "ev_producer", "handoff", str(handoff))

    daemon.ok("start", "ev_consumer")
    wait_for_status(daemon, "ev_consumer", "Waiting")
    assert_exit(start_wait(daemon, "ev_producer"), 0)
    wait_for_status(daemon, "ev_consumer", "Completed")
    assert lines(out) == ["producer", "consumer"]

    producer = current_run(daemon, "ev_producer")
    steps = by_step(producer)
    assert sorted(steps) == [10, 20]  # the automatic Create Events step = last + 10
    auto = steps[20]
    assert auto["job_step_function"] == "call_create_event"
    assert auto["job_step_description"] == "Create Events"
    assert auto["job_step_ignore_error"] is True
    assert auto["status"] == "Success"
    assert [(e["event_name"], e["status"]) for e in producer["events"]] == [("handoff", "Created")]
    consumer = current_run(daemon, "ev_consumer")
    assert [(e["event_name"], e["status"]) for e in consumer["events"]] == [("handoff", "Found")]
    assert not handoff.exists()  # consumed by the waiting job


# ============================================================================ variables are quoted


def test_captured_output_cannot_inject_shell_syntax(daemon: Daemon, tmp_path: Path) -> None:
    inj = [tmp_path / f"inj{n}" for n in range(4)]
    outs = [tmp_path / f"out{n}.txt" for n in range(4)]
    payloads = [
        f"; touch {inj[0]}",
        f"`touch {inj[1]}`",
        f"$(touch {inj[2]})",
        f"it's'; touch {inj[3]}; echo '",
    ]
    steps = [step(10 + n, f"printf '%s' {q(p)}", capture=True) for n, p in enumerate(payloads)]
    steps += [step(20 + n, f"echo %step_{10 + n}% > {q(str(outs[n]))}") for n in range(4)]
    import_job(daemon, tmp_path, "inject", steps)
    assert_exit(start_wait(daemon, "inject"), 0)
    run = current_run(daemon, "inject")
    for n, payload in enumerate(payloads):
        assert by_step(run)[10 + n]["output"] == payload
        assert outs[n].read_text() == payload + "\n"
        assert not inj[n].exists(), f"{payload!r} was executed"


# ============================================================================ crash recovery, signals


def test_daemon_killed_mid_run_is_recovered_as_failed_and_resumes(
    fresh_daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate], groups_to_kill: list[int]
) -> None:
    d = fresh_daemon
    d.start()
    blocker = gate("crash")
    out = tmp_path / "out.txt"
    import_job(
        d,
        tmp_path,
        "crash_job",
        [
            step(10, f"echo 10 >> {q(str(out))}"),
            step(20, f"{blocker.command()}; echo 20 >> {q(str(out))}"),
            step(30, f"echo 30 >> {q(str(out))}"),
        ],
    )
    d.ok("start", "crash_job")
    pgid = blocker.wait_started(d, "crash_job")
    groups_to_kill.append(pgid)
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(timeout=WAIT_TIMEOUT)
    d.proc = None
    kill_group(pgid)  # the step outlives a SIGKILLed daemon (its own session): clean it up
    assert wait_group_gone(pgid, 5) == []

    d.start()
    status = status_of(d, "crash_job")
    assert status["status"] == "Failed"
    run = status["run"]
    assert "loadmgrd stopped" in run["status_reason"]
    steps = by_step(run)
    assert steps[10]["status"] == "Success"
    assert steps[20]["status"] == "Failure"
    assert steps[30]["status"] == "Pending"
    assert lines(out) == ["10"]

    blocker.open()
    assert_exit(d.ctl("start", "--resume", "--wait", "crash_job"), 0)
    assert lines(out) == ["10", "20", "30"]  # 10 ran once
    assert current_run(d, "crash_job")["status"] == "Completed"


def test_restarted_daemon_ends_a_step_left_running_by_a_killed_daemon(
    quick_stop_daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate], groups_to_kill: list[int]
) -> None:
    d = quick_stop_daemon
    blocker = gate("orphan")
    import_job(d, tmp_path, "orphan_job", [step(10, blocker.command())])
    d.ok("start", "orphan_job")
    pgid = blocker.wait_started(d, "orphan_job")
    groups_to_kill.append(pgid)
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(timeout=WAIT_TIMEOUT)
    d.proc = None
    assert live_group_members(pgid)  # the step outlives the daemon (its own session)

    d.start()
    assert wait_group_gone(pgid, GRACE + 5) == []  # so a resume cannot run it twice at once
    run = current_run(d, "orphan_job")
    assert run["status"] == "Failed"
    assert by_step(run)[10]["status"] == "Failure"


def sigterm_and_wait(d: Daemon) -> int:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    try:
        code = d.proc.wait(timeout=WAIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"loadmgrd did not exit on SIGTERM:\n{d.log()}") from None
    d.proc = None
    return code


def test_sigterm_stops_runs_and_leaves_no_processes(
    quick_stop_daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    d = quick_stop_daemon
    mark, pgid_file, release, out = (tmp_path / n for n in ("mark", "pgid", "release", "out.txt"))
    command = (
        f"if [ -f {q(str(release))} ]; then echo 10 >> {q(str(out))}; exit 0; fi; "
        f"sleep 600 & sleep 600 & echo $$ > {q(str(pgid_file))}; touch {q(str(mark))}; wait"
    )
    import_job(d, tmp_path, "term_job", [step(10, command), step(20, f"echo 20 >> {q(str(out))}")])
    d.ok("start", "term_job")
    wait_for_path(mark, d, "term_job")
    pgid = int(pgid_file.read_text())
    groups_to_kill.append(pgid)
    assert len(live_group_members(pgid)) >= 3

    assert sigterm_and_wait(d) == 0
    assert wait_group_gone(pgid, 2) == []

    d.start()
    run = current_run(d, "term_job")
    assert run["status"] == "Stopped"
    assert "shut down" in run["status_reason"]
    release.touch()
    assert_exit(d.ctl("start", "--resume", "--wait", "term_job"), 0)
    assert lines(out) == ["10", "20"]


def test_sigterm_kills_children_that_ignore_sigterm(
    fresh_daemon: Daemon, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    d = fresh_daemon
    configure(d, daemon_keys={"stop_grace_period": "3"})
    d.start()
    mark, pgid_file = tmp_path / "mark", tmp_path / "pgid"
    command = f"(trap '' TERM; exec sleep 600) & echo $$ > {q(str(pgid_file))}; touch {q(str(mark))}; wait"
    import_job(d, tmp_path, "term_stubborn", [step(10, command)])
    d.ok("start", "term_stubborn")
    wait_for_path(mark, d, "term_stubborn")
    pgid = int(pgid_file.read_text())
    groups_to_kill.append(pgid)
    assert sigterm_and_wait(d) == 0
    assert wait_group_gone(pgid, 2) == [], "a step process outlived loadmgrd's graceful shutdown"


# ============================================================================ history, logs


def test_history_lists_runs_newest_first_with_steps_and_events(daemon: Daemon, tmp_path: Path) -> None:
    flag = tmp_path / "hist.flag"
    import_job(daemon, tmp_path, "hist_job", [step(10, "echo run")])
    daemon.ok("event", "add", "-a", "create", "hist_job", "hist_flag", str(flag))
    run_ids = []
    for extra in ([], ["--skip", "create"], []):
        assert_exit(start_wait(daemon, *extra, "hist_job"), 0)
        run_ids.append(current_run(daemon, "hist_job")["run_id"])
    history = daemon.json("history", "hist_job", "-n", "10")["runs"]
    assert [r["run_id"] for r in history] == run_ids[::-1]
    starts = [r["start_ts"] for r in history]
    assert starts == sorted(starts, reverse=True)
    assert all(r["status"] == "Completed" for r in history)
    for run in history:
        assert by_step(run)[10]["status"] == "Success"
    assert [[(e["event_name"], e["status"]) for e in r["events"]] for r in history] == [
        [("hist_flag", "Created")],
        [("hist_flag", "Skipped")],
        [("hist_flag", "Created")],
    ]
    assert sorted(by_step(history[0])) == [10, 20]  # automatic Create Events step
    assert sorted(by_step(history[1])) == [10]  # create events skipped: no automatic step
    assert [r["run_id"] for r in daemon.json("history", "hist_job", "-n", "2")["runs"]] == run_ids[:0:-1]


def test_run_ids_are_unique_even_for_runs_in_the_same_second(daemon: Daemon, tmp_path: Path) -> None:
    import_job(daemon, tmp_path, "fast_runs", [step(10, "echo ran")])
    seconds: list[str] = []
    run_ids: list[str] = []
    log_files: list[str] = []
    deadline = time.monotonic() + 10
    # Quick runs until three of them have started within one second (the case that matters).
    while time.monotonic() < deadline:
        call(daemon, "start", {"name": "fast_runs"})
        wait_for_status(daemon, "fast_runs", "Completed")
        run = current_run(daemon, "fast_runs")
        run_ids.append(run["run_id"])
        log_files.append(run["log_file"])
        seconds.append(run["start_ts"][:19])
        if len(seconds) >= 3 and len(set(seconds[-3:])) == 1:
            break
    else:
        pytest.fail("could not start three runs within one second")
    assert len(set(run_ids)) == len(run_ids), f"repeated run ids: {run_ids}"
    history = daemon.json("history", "fast_runs", "-n", "100")["runs"]
    assert len({r["run_id"] for r in history}) == len(history)
    # Each run has a log of its own: one start line in each, none shared.
    assert len(set(log_files)) == len(log_files), f"shared log files: {log_files}"
    for log_file in log_files[-3:]:
        text = Path(log_file).read_text()
        assert text.count("of job fast_runs started") == 1, text


def test_logs_follow_until_the_run_ends(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("logs")
    import_job(
        daemon,
        tmp_path,
        "logs_job",
        [step(10, f"echo first-line-out; {blocker.command()}"), step(20, "echo last-line-out")],
    )
    daemon.ok("start", "logs_job")
    with ctl_background(daemon, "logs", "-f", "logs_job") as follower:
        blocker.wait_started(daemon, "logs_job")
        assert follower.poll() is None  # still following while the run goes on
        blocker.open()
        stdout, stderr = follower.communicate(timeout=WAIT_TIMEOUT)
        assert follower.returncode == 0, stderr
    assert "first-line-out" in stdout
    assert "last-line-out" in stdout
    assert stdout.index("first-line-out") < stdout.index("last-line-out")
    assert current_run(daemon, "logs_job")["status"] == "Completed"


# ============================================================================ bad input


def test_start_unknown_job_or_group_is_refused(daemon: Daemon) -> None:
    result = daemon.ctl("start", "no_such_job_or_group")
    assert_exit(result, 1)
    assert "no_such_job_or_group" in result.stderr
    assert "no job or job group" in result.stderr


def test_start_while_running_is_refused(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("twice")
    import_job(daemon, tmp_path, "twice_job", [step(10, blocker.command())])
    daemon.ok("start", "twice_job")
    blocker.wait_started(daemon, "twice_job")
    run_id = current_run(daemon, "twice_job")["run_id"]
    result = daemon.ctl("start", "twice_job")
    assert_exit(result, 1)
    assert "already running" in result.stderr
    assert current_run(daemon, "twice_job")["run_id"] == run_id
    blocker.open()
    wait_for_status(daemon, "twice_job", "Completed")


def test_status_names_the_running_steps(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("shown")
    import_job(daemon, tmp_path, "shown_job", [step(10, "true"), step(20, blocker.command())])
    daemon.ok("start", "shown_job")
    blocker.wait_started(daemon, "shown_job")
    running = [line for line in daemon.ok("status", "shown_job").splitlines() if line.startswith("running steps")]
    assert running and running[0].split()[-1] == "20", running
    blocker.open()
    wait_for_status(daemon, "shown_job", "Completed")
    running = [line for line in daemon.ok("status", "shown_job").splitlines() if line.startswith("running steps")]
    assert running and running[0].split()[-1] == "none", running


def test_simultaneous_starts_of_one_job_start_it_once(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("race")
    import_job(daemon, tmp_path, "race_job", [step(10, blocker.command())])
    replies: list[dict[str, Any]] = []
    ready = threading.Barrier(12)

    def start() -> None:
        ready.wait()
        replies.append(daemon.rpc("start", {"name": "race_job"}))

    threads = [threading.Thread(target=start) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [r["result"]["results"][0]["run_id"] for r in replies if "result" in r]
    refused = [r["error"]["message"] for r in replies if "error" in r]
    assert len(started) == 1, replies
    assert len(refused) == 11 and all("already" in m for m in refused), refused
    blocker.wait_started(daemon, "race_job")
    blocker.open()
    wait_for_status(daemon, "race_job", "Completed")
    assert current_run(daemon, "race_job")["run_id"] == started[0]
    # history holds the current run and every archived one: no twin run was created and archived
    assert [r["run_id"] for r in daemon.json("history", "race_job", "-n", "20")["runs"]] == started


def test_unknown_step_function_fails_the_run_even_with_ignore_error(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "bad_func",
        [step(10, "whatever", function="no_such_function", ignore_error=True), step(20, f"echo 20 >> {q(str(out))}")],
    )
    assert_exit(start_wait(daemon, "bad_func"), 1)
    run = current_run(daemon, "bad_func")
    assert run["status"] == "Failed"
    steps = by_step(run)
    assert steps[10]["status"] == "Failure"
    assert "no_such_function" in (steps[10]["message"] or "")
    assert "no_such_function" in run["status_reason"]
    assert steps[20]["status"] == "Pending"
    assert not out.exists()


def test_missing_command_fails_the_step_and_the_shell_message_is_logged(daemon: Daemon, tmp_path: Path) -> None:
    import_job(daemon, tmp_path, "no_cmd", [step(10, "loadmgr_no_such_command_xyz")])
    assert_exit(start_wait(daemon, "no_cmd"), 1)
    run = current_run(daemon, "no_cmd")
    assert run["status"] == "Failed"
    assert by_step(run)[10]["status"] == "Failure"
    assert by_step(run)[10]["exit_code"] == 127
    log = daemon.ok("logs", "no_cmd")
    assert "loadmgr_no_such_command_xyz: command not found" in log


def test_one_off_job_file_with_errors_is_refused_and_starts_nothing(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "bad_oneoff", [step(10, f"echo own >> {q(str(out))}")])
    assert_exit(start_wait(daemon, "bad_oneoff"), 0)
    before = current_run(daemon, "bad_oneoff")
    broken = tmp_path / "broken.csv"
    broken.write_text(
        f"job_step,job_step_function,job_step_command\n10,run_command,echo oneoff >> {out}\n20,run_command,echo a,b\n"
    )
    result = daemon.ctl("start", "-j", str(broken), "bad_oneoff")
    assert_exit(result, 1)
    assert "line 3" in result.stderr
    assert "broken.csv" in result.stderr
    after = current_run(daemon, "bad_oneoff")
    assert (after["run_id"], after["status"]) == (before["run_id"], "Completed")
    assert lines(out) == ["own"]


def test_resume_with_nothing_to_resume_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "resume_none", [step(10, f"echo ran >> {q(str(out))}")])
    result = daemon.ctl("start", "--resume", "resume_none")
    assert_refused(result, "warning: nothing to resume", strict=True)  # a warning; none started: 1
    assert status_of(daemon, "resume_none")["run"] is None
    assert not out.exists()

    assert_exit(start_wait(daemon, "resume_none"), 0)
    run_id = current_run(daemon, "resume_none")["run_id"]
    result = daemon.ctl("start", "--resume", "resume_none")
    assert_refused(result, "nothing to resume", "Completed")
    after = current_run(daemon, "resume_none")
    assert (after["run_id"], after["status"]) == (run_id, "Completed")
    assert lines(out) == ["ran"]


def test_maintenance_mode_refuses_start(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "maint_job", [step(10, f"echo ran >> {q(str(out))}")])
    daemon.ok("repo", "maintenance", "--on")
    try:
        result = daemon.ctl("start", "maint_job")
        assert_refused(result, "maintenance mode")
        assert status_of(daemon, "maint_job")["run"] is None
    finally:
        daemon.ok("repo", "maintenance", "--off")
    assert_exit(start_wait(daemon, "maint_job"), 0)
    assert lines(out) == ["ran"]


def test_job_reset_refused_while_executing_then_works(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("reset")
    import_job(daemon, tmp_path, "reset_job", [step(10, blocker.command())])
    daemon.ok("start", "reset_job")
    blocker.wait_started(daemon, "reset_job")
    result = daemon.ctl("job", "reset", "reset_job")
    assert_refused(result, "really executing")
    assert current_run(daemon, "reset_job")["status"] == "Running"
    blocker.open()
    wait_for_status(daemon, "reset_job", "Completed")
    daemon.ok("job", "reset", "reset_job")
    assert status_of(daemon, "reset_job")["status"] == "Not Running"


# ============================================================================ dry run, one-off job file


def test_dry_run_shows_the_steps_and_starts_nothing(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "dry_job",
        [
            step(10, f"echo 10 >> {q(str(out))}", description="dryten"),
            step(20, f"echo 20 >> {q(str(out))}", description="drytwenty"),
        ],
    )
    text = daemon.ok("start", "--dry-run", "dry_job")
    assert "dryten" in text and "drytwenty" in text
    plan = daemon.json("start", "--dry-run", "dry_job")
    (result,) = plan["results"]
    assert result["started"] is False
    assert [s["job_step"] for s in result["steps"]] == [10, 20]
    assert status_of(daemon, "dry_job")["status"] == "Not Running"
    assert status_of(daemon, "dry_job")["run"] is None
    assert not out.exists()


def test_one_off_job_file_runs_instead_of_the_jobs_steps(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "oneoff_job", [step(10, f"echo own >> {q(str(out))}")])
    one_off = write_job_file(
        tmp_path / "once.csv", [step(5, f"echo once-5 >> {q(str(out))}"), step(7, f"echo once-7 >> {q(str(out))}")]
    )
    assert_exit(start_wait(daemon, "-j", str(one_off), "oneoff_job"), 0)
    assert lines(out) == ["once-5", "once-7"]
    run = current_run(daemon, "oneoff_job")
    assert run["one_off_steps"] is True
    assert sorted(by_step(run)) == [5, 7]
    assert_exit(start_wait(daemon, "oneoff_job"), 0)  # the job's own steps are unchanged
    assert lines(out) == ["once-5", "once-7", "own"]


# ============================================================================ environment


def test_step_sees_loadmgr_environment_variables(daemon: Daemon, tmp_path: Path) -> None:
    env_file = tmp_path / "env.txt"
    import_job(daemon, tmp_path, "env_job", [step(10, "true"), step(20, f"env | grep ^LOADMGR_ > {q(str(env_file))}")])
    assert_exit(start_wait(daemon, "env_job"), 0)
    env = dict(line.split("=", 1) for line in lines(env_file))
    run = current_run(daemon, "env_job")
    assert env["LOADMGR_JOB"] == "env_job"
    assert env["LOADMGR_RUN_ID"] == run["run_id"]
    assert env["LOADMGR_STEP"] == "20"
    assert env["LOADMGR_LOG_FILE"] == run["log_file"]
    assert Path(env["LOADMGR_LOG_FILE"]).is_file()


def test_start_wait_json_prints_the_runs_as_they_ended(daemon: Daemon, tmp_path: Path) -> None:
    import_job(daemon, tmp_path, "wait_json_ok", [step(10, "true")], group="wait_json")
    import_job(daemon, tmp_path, "wait_json_bad", [step(10, "exit 3")], group="wait_json")
    result = daemon.ctl("start", "--wait", "--json", "wait_json")
    assert_exit(result, 1)  # one run failed
    printed = json.loads(result.stdout)
    assert sorted(r["job"] for r in printed["results"] if r["started"]) == ["wait_json_bad", "wait_json_ok"]
    ended = {r["job"]: r["status"] for r in printed["runs"]}
    assert ended == {"wait_json_ok": "Completed", "wait_json_bad": "Failed"}
    assert {r["run_id"] for r in printed["runs"]} == {r["run_id"] for r in printed["results"]}


def test_stop_and_pause_all_with_nothing_running_say_so(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    for command in ("stop", "pause"):
        result = fresh_daemon.ctl(command, "ALL")
        assert_exit(result, 0)
        assert "ALL: no run in progress" in result.stdout + result.stderr, result
