"""Details of running jobs that docs/running.md promises: events frozen into a run, create-event
reset, wait-event files present beforehand or shared by two runs, ``start`` on a Paused run,
resume keeping the end step and skipping wait events, the captured-output limit, ``:raw``
variables, another variable delimiter, ``-s N`` / ``-s -M``, ``pause ALL`` / ``stop ALL``,
``logs --json``, live statuses in ``listall``, and what ``start --dry-run`` shows.

Driven through the real loadmgrctl against a real loadmgrd; synchronisation follows the run's
state (``watch`` long poll) or a Gate step's marker file, never a sleep.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.support import (
    Gate,
    assert_exit,
    by_step,
    call,
    configured_daemon,
    current_run,
    import_job,
    lines,
    q,
    status_of,
    stays,
    step,
    wait_for_status,
)

SETTLE = 0.5  # seconds a run must stay as it is where nothing is meant to happen (followed with watch)
DEFAULT_CAPTURE_LIMIT = 65536  # [jobs] capture_output_limit default (loadmgrd/config.py, the example config)
ENDED = ("Completed", "Failed", "Stopped")


# ---------------------------------------------------------------------------- helpers


def start_wait(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return d.ctl("start", "--wait", *args)


def events_of(run: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["event_name"], e["status"]) for e in run["events"]]


def wait_for_first(d: Daemon, jobs: list[str], status: str, timeout: float = 30.0) -> list[str]:
    """Follow ``jobs`` (``watch``) until at least one is in ``status``; the jobs that are."""
    deadline = time.monotonic() + timeout
    since = -1
    while True:
        result = call(d, "watch", {"names": jobs, "since": since, "wait": 5.0})
        reached = [r["job"] for r in result["runs"] if r["status"] == status]
        if reached:
            return reached
        if time.monotonic() > deadline:
            raise AssertionError(f"none of {jobs} reached {status}: {result['runs']}")
        since = result["version"]


def arrive(path: Path, text: str = "payload\n") -> None:
    """Put a complete file in place (written aside, then renamed), as a producer would."""
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(text)
    partial.rename(path)


def listall_status(d: Daemon, job: str) -> str:
    rows = [r for r in d.json("listall") if r["job_name"] == job]
    assert len(rows) == 1, rows
    return str(rows[0]["status"])


def log_lines(d: Daemon, job: str) -> list[str]:
    return d.ok("logs", job).splitlines()


# ============================================================================ events


@pytest.mark.parametrize(
    ("change", "command"),
    [
        ("disable", ["event", "disable", "{job}", "ev_a"]),
        ("rename", ["event", "rename", "{job}", "ev_a", "ev_renamed"]),
        ("remove", ["event", "remove", "{job}", "ev_a"]),
    ],
)
def test_events_are_frozen_into_a_waiting_run(daemon: Daemon, tmp_path: Path, change: str, command: list[str]) -> None:
    job = f"frozen_{change}"
    out, arrival = tmp_path / "out.txt", tmp_path / "a.ready"
    import_job(daemon, tmp_path, job, [step(10, f"echo ran >> {q(str(out))}")])
    daemon.ok("event", "add", job, "ev_a", str(arrival))
    daemon.ok("start", job)
    wait_for_status(daemon, job, "Waiting")
    run_id = current_run(daemon, job)["run_id"]

    daemon.ok(*(word.format(job=job) for word in command))
    job_events = {e["event_name"]: bool(e["enabled"]) for e in daemon.json("event", "view", job)}
    assert job_events == {"disable": {"ev_a": False}, "rename": {"ev_renamed": True}, "remove": {}}[change]

    stays(daemon, job, "Waiting", SETTLE)  # the run still waits for ev_a's file
    run = current_run(daemon, job)
    assert (run["run_id"], events_of(run)) == (run_id, [("ev_a", "Pending")])
    assert not out.exists()

    arrive(arrival)
    wait_for_status(daemon, job, "Completed")
    run = current_run(daemon, job)
    assert run["run_id"] == run_id
    assert events_of(run) == [("ev_a", "Found")]
    assert lines(out) == ["ran"]
    assert not arrival.exists()  # consumed


def test_create_event_file_is_reset_at_run_start_and_made_at_the_end(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("reset_create")
    flag, marker = tmp_path / "made.flag", tmp_path / "seen.txt"
    flag.write_text("left from an earlier run\n")
    check = f"if test -e {q(str(flag))}; then echo present; else echo absent; fi > {q(str(marker))}"
    import_job(daemon, tmp_path, "create_reset", [step(10, f"{check}; {blocker.command()}")])
    daemon.ok("event", "add", "-a", "create", "create_reset", "made", str(flag))
    daemon.ok("start", "create_reset")
    blocker.wait_started(daemon, "create_reset")
    assert lines(marker) == ["absent"]  # the first step did not see it
    assert not flag.exists()  # and it is still gone while the step runs
    blocker.open()
    wait_for_status(daemon, "create_reset", "Completed")
    assert flag.exists()  # made again by the automatic Create Events step
    assert flag.read_text() == ""  # a new (empty) file, not the old one
    run = current_run(daemon, "create_reset")
    assert events_of(run) == [("made", "Created")]
    assert any(f"create event made: removed {flag} (reset)" in line for line in log_lines(daemon, "create_reset"))


def test_wait_event_file_present_before_the_start_is_consumed(daemon: Daemon, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arrival, out = inbox / "early.ready", tmp_path / "out.txt"
    arrival.write_text("arrived before the run\n")
    import_job(daemon, tmp_path, "wait_early", [step(10, f"echo ran >> {q(str(out))}")])
    daemon.ok("event", "add", "wait_early", "early", str(arrival))
    assert_exit(start_wait(daemon, "wait_early"), 0)
    run = current_run(daemon, "wait_early")
    assert run["status"] == "Completed"
    assert events_of(run) == [("early", "Found")]
    assert lines(out) == ["ran"]
    assert not arrival.exists()  # claimed
    assert list(inbox.iterdir()) == []  # and not left behind under another name


def test_one_wait_file_releases_one_of_two_waiting_jobs(daemon: Daemon, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shared = inbox / "shared.ready"
    jobs = ["shared_wait_a", "shared_wait_b"]
    for job in jobs:
        import_job(daemon, tmp_path, job, [step(10, f"echo {job} >> {q(str(tmp_path / 'out.txt'))}")])
        daemon.ok("event", "add", job, "shared", str(shared))
        daemon.ok("start", job)
    for job in jobs:
        wait_for_status(daemon, job, "Waiting")

    arrive(shared)
    (first,) = wait_for_first(daemon, jobs, "Completed")
    (other,) = [j for j in jobs if j != first]
    stays(daemon, other, "Waiting", SETTLE)  # the file released one run only
    assert events_of(current_run(daemon, other)) == [("shared", "Pending")]
    assert lines(tmp_path / "out.txt") == [first]
    assert list(inbox.iterdir()) == []

    arrive(shared)
    wait_for_status(daemon, other, "Completed")
    assert lines(tmp_path / "out.txt") == [first, other]
    for job in jobs:
        assert events_of(current_run(daemon, job)) == [("shared", "Found")]
    assert list(inbox.iterdir()) == []


# ============================================================================ paused and resumed runs


def test_start_on_a_paused_job_continues_the_same_run(
    daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]
) -> None:
    blocker = gate("start_paused")
    out = tmp_path / "out.txt"
    import_job(
        daemon,
        tmp_path,
        "start_paused",
        [step(10, blocker.command()), step(20, f"echo 20 >> {q(str(out))}"), step(30, f"echo 30 >> {q(str(out))}")],
    )
    daemon.ok("start", "start_paused")
    blocker.wait_started(daemon, "start_paused")
    daemon.ok("pause", "start_paused")
    blocker.open()
    wait_for_status(daemon, "start_paused", "Paused")
    paused = current_run(daemon, "start_paused")
    assert {n: s["status"] for n, s in by_step(paused).items()} == {10: "Success", 20: "Pending", 30: "Pending"}
    assert not out.exists()

    text = daemon.ok("start", "start_paused")
    assert f"resumed: run {paused['run_id']}" in text, text
    wait_for_status(daemon, "start_paused", "Completed")
    run = current_run(daemon, "start_paused")
    assert (run["run_id"], run["log_file"]) == (paused["run_id"], paused["log_file"])
    assert {n: s["status"] for n, s in by_step(run).items()} == {10: "Success", 20: "Success", 30: "Success"}
    assert lines(out) == ["20", "30"]
    assert [r["run_id"] for r in daemon.json("history", "start_paused", "-n", "10")["runs"]] == [paused["run_id"]]
    log = daemon.ok("logs", "start_paused")
    assert log.count("of job start_paused started") == 1, log
    assert log.count("of job start_paused resumed") == 1, log


def test_resume_keeps_the_end_step_and_skips_wait_events(daemon: Daemon, tmp_path: Path) -> None:
    out, state, arrival = tmp_path / "out.txt", tmp_path / "state", tmp_path / "input.ready"
    import_job(
        daemon,
        tmp_path,
        "resume_end",
        [
            step(10, f"echo 10 >> {q(str(out))}"),
            step(20, f"echo 20 >> {q(str(out))}; test -f {q(str(state))} || {{ touch {q(str(state))}; exit 1; }}"),
            step(30, f"echo 30 >> {q(str(out))}"),
        ],
    )
    daemon.ok("event", "add", "resume_end", "input", str(arrival))
    daemon.ok("start", "-s", "10-20", "resume_end")
    wait_for_status(daemon, "resume_end", "Waiting")
    arrive(arrival)
    wait_for_status(daemon, "resume_end", *ENDED)
    first = current_run(daemon, "resume_end")
    assert first["status"] == "Failed"
    assert (first["start_step"], first["end_step"]) == (10, 20)
    assert {n: s["status"] for n, s in by_step(first).items()} == {10: "Success", 20: "Failure"}
    assert events_of(first) == [("input", "Found")]
    assert lines(out) == ["10", "20"]

    daemon.ok("start", "--resume", "resume_end")  # no file arrives for the event this time
    final = wait_for_status(daemon, "resume_end", *ENDED, "Waiting")
    assert final["status"] == "Completed", f"resumed run: {status_of(daemon, 'resume_end')}"
    second = current_run(daemon, "resume_end")
    assert second["resumed_from"] == first["run_id"]
    assert (second["start_step"], second["end_step"]) == (20, 20)  # the previous end step, not the job's last
    steps = by_step(second)
    assert steps[20]["status"] == "Success"
    assert 30 not in steps
    assert events_of(second) == [("input", "Skipped")]
    assert lines(out) == ["10", "20", "20"]  # only 20 ran again; 30 never ran


# ============================================================================ captured output, variables


def test_captured_output_is_cut_at_the_default_limit(daemon: Daemon, tmp_path: Path) -> None:
    limit = DEFAULT_CAPTURE_LIMIT
    import_job(
        daemon,
        tmp_path,
        "cap_limit",
        [
            step(10, f"head -c {limit + 5000} /dev/zero | tr '\\0' x", capture=True),
            step(20, f"head -c {limit} /dev/zero | tr '\\0' y", capture=True),
        ],
    )
    assert_exit(start_wait(daemon, "cap_limit"), 0)
    steps = by_step(current_run(daemon, "cap_limit"))
    assert steps[10]["output"] == "x" * limit
    assert steps[20]["output"] == "y" * limit  # exactly the limit: kept whole
    cut = [line for line in log_lines(daemon, "cap_limit") if "captured output cut" in line]
    assert len(cut) == 1, cut
    assert cut[0].split(None, 2)[2] == (
        f"WARNING [step 10] captured output cut at {limit} bytes ([jobs] capture_output_limit)"
    )


@pytest.fixture
def small_capture_daemon() -> Iterator[Daemon]:
    with configured_daemon("[jobs]\ncapture_output_limit = 100\n") as d:
        yield d


def test_captured_output_is_cut_at_a_configured_limit(small_capture_daemon: Daemon, tmp_path: Path) -> None:
    d = small_capture_daemon
    out = tmp_path / "out.txt"
    import_job(
        d,
        tmp_path,
        "cap_small",
        [
            step(10, "printf '%0250d' 0", capture=True),
            step(20, f"echo %step_10% > {q(str(out))}"),
        ],
    )
    assert_exit(start_wait(d, "cap_small"), 0)
    assert by_step(current_run(d, "cap_small"))[10]["output"] == "0" * 100
    assert lines(out) == ["0" * 100]  # later steps get the cut value
    log = d.ok("logs", "cap_small")
    assert "[step 10] " + "0" * 250 in log  # the log itself has the whole output
    assert "[step 10] captured output cut at 100 bytes ([jobs] capture_output_limit)" in log


def test_raw_variable_is_pasted_unquoted(daemon: Daemon, tmp_path: Path) -> None:
    count = tmp_path / "count.sh"
    count.write_text('echo "$#"\n')
    raw_out, quoted_out = tmp_path / "raw.txt", tmp_path / "quoted.txt"
    import_job(
        daemon,
        tmp_path,
        "raw_var",
        [
            step(10, "printf 'a b'", capture=True),
            step(20, f"bash {q(str(count))} %step_10:raw% > {q(str(raw_out))}"),
            step(30, f"bash {q(str(count))} %step_10% > {q(str(quoted_out))}"),
        ],
    )
    assert_exit(start_wait(daemon, "raw_var"), 0)
    assert by_step(current_run(daemon, "raw_var"))[10]["output"] == "a b"
    assert lines(raw_out) == ["2"]  # pasted as shell text: two words
    assert lines(quoted_out) == ["1"]  # quoted: one word


@pytest.fixture
def dollar_daemon() -> Iterator[Daemon]:
    with configured_daemon("[jobs]\nvariable_delimiter = $\n") as d:
        yield d


def test_other_variable_delimiter_is_used_at_run_time(dollar_daemon: Daemon, tmp_path: Path) -> None:
    d = dollar_daemon
    out = tmp_path / "out.txt"
    import_job(
        d,
        tmp_path,
        "dollar_var",
        [
            step(10, "printf 'value 10'", capture=True),
            step(20, f"echo got $step_10$ >> {q(str(out))}"),
            step(30, f"echo raw $step_10:raw$ >> {q(str(out))}"),
            step(40, f"echo kept %step_10% >> {q(str(out))}"),
        ],
    )
    assert_exit(start_wait(d, "dollar_var"), 0)
    assert lines(out) == ["got value 10", "raw value 10", "kept %step_10%"]  # '%' is plain text here


# ============================================================================ step ranges


def test_single_step_and_up_to_step_ranges(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    import_job(daemon, tmp_path, "range_forms", [step(n, f"echo {n} >> {q(str(out))}") for n in (10, 20, 30, 40)])
    assert_exit(start_wait(daemon, "-s", "20", "range_forms"), 0)
    assert lines(out) == ["20"]
    run = current_run(daemon, "range_forms")
    assert (run["start_step"], run["end_step"]) == (20, 20)
    assert sorted(by_step(run)) == [20]

    out.unlink()
    assert_exit(start_wait(daemon, "-s", "-30", "range_forms"), 0)
    assert lines(out) == ["10", "20", "30"]
    run = current_run(daemon, "range_forms")
    assert (run["start_step"], run["end_step"]) == (10, 30)
    assert sorted(by_step(run)) == [10, 20, 30]


# ============================================================================ pause ALL, stop ALL


def two_gated_jobs(d: Daemon, tmp_path: Path, gate: Callable[[str], Gate], prefix: str) -> dict[str, Gate]:
    gates = {}
    for suffix in ("a", "b"):
        job = f"{prefix}_{suffix}"
        gates[job] = gate(job)
        out = tmp_path / f"{job}.out"
        import_job(d, tmp_path, job, [step(10, gates[job].command()), step(20, f"echo 20 >> {q(str(out))}")])
        d.ok("start", job)
    for job, g in gates.items():
        g.wait_started(d, job)
    return gates


def test_pause_all_pauses_every_running_job(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    gates = two_gated_jobs(daemon, tmp_path, gate, "pause_all")
    result = daemon.ctl("pause", "ALL")
    assert_exit(result, 0)
    for job in gates:
        assert f"job {job}: pause requested (Pausing In Progress)" in result.stdout, result.stdout
        assert current_run(daemon, job)["status"] == "Pausing In Progress"
    for g in gates.values():
        g.open()
    for job in gates:
        wait_for_status(daemon, job, "Paused")
        steps = by_step(current_run(daemon, job))
        assert (steps[10]["status"], steps[20]["status"]) == ("Success", "Pending")
        assert not (tmp_path / f"{job}.out").exists()
    for job in gates:
        daemon.ok("resume", job)
    for job in gates:
        wait_for_status(daemon, job, "Completed")
        assert lines(tmp_path / f"{job}.out") == ["20"]


def test_stop_all_stops_every_running_job(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    gates = two_gated_jobs(daemon, tmp_path, gate, "stop_all")
    result = daemon.ctl("stop", "ALL")
    assert_exit(result, 0)
    for job in gates:
        assert f"job {job}: stop requested (Stopping In Progress)" in result.stdout, result.stdout
        assert current_run(daemon, job)["status"] == "Stopping In Progress"
    for g in gates.values():
        g.open()
    for job in gates:
        wait_for_status(daemon, job, *ENDED)
        run = current_run(daemon, job)
        assert run["status"] == "Stopped"
        assert (by_step(run)[10]["status"], by_step(run)[20]["status"]) == ("Success", "Pending")
        assert not (tmp_path / f"{job}.out").exists()


def test_stop_all_also_stops_a_paused_run(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    gates = two_gated_jobs(daemon, tmp_path, gate, "stop_all_paused")
    paused, running = list(gates)
    daemon.ok("pause", paused)
    gates[paused].open()
    wait_for_status(daemon, paused, "Paused")
    result = daemon.ctl("stop", "ALL")
    assert_exit(result, 0)
    assert f"job {paused}: stop requested (Stopped)" in result.stdout, result.stdout
    assert f"job {running}: stop requested (Stopping In Progress)" in result.stdout, result.stdout
    run = current_run(daemon, paused)
    assert (run["status"], run["status_reason"]) == ("Stopped", "stopped while paused")
    gates[running].open()
    assert wait_for_status(daemon, running, *ENDED)["status"] == "Stopped"


# ============================================================================ logs --json, listall


def test_logs_json_is_one_object_with_the_log_text(daemon: Daemon, tmp_path: Path) -> None:
    import_job(daemon, tmp_path, "logs_json", [step(10, "echo json-line-one; echo json-line-two >&2")])
    assert_exit(start_wait(daemon, "logs_json"), 0)
    run = current_run(daemon, "logs_json")
    reply = daemon.json("logs", "logs_json")  # the whole stdout is one JSON document
    assert isinstance(reply, dict)
    text = Path(run["log_file"]).read_text()
    assert (reply["job"], reply["run_id"], reply["log_file"]) == ("logs_json", run["run_id"], run["log_file"])
    assert reply["content"] == text
    assert reply["offset"] == len(text.encode())
    assert reply["active"] is False
    content = reply["content"].splitlines()
    assert any(line.endswith("INFO    [step 10] json-line-one") for line in content), content
    assert any(line.endswith("STDERR  [step 10] json-line-two") for line in content), content


def test_listall_shows_waiting_and_pausing_runs(daemon: Daemon, tmp_path: Path, gate: Callable[[str], Gate]) -> None:
    blocker = gate("listall_pausing")
    arrival = tmp_path / "listall.ready"
    import_job(daemon, tmp_path, "listall_waiting", [step(10, "true")])
    daemon.ok("event", "add", "listall_waiting", "ready", str(arrival))
    import_job(daemon, tmp_path, "listall_pausing", [step(10, blocker.command()), step(20, "true")])

    daemon.ok("start", "listall_waiting")
    wait_for_status(daemon, "listall_waiting", "Waiting")
    assert listall_status(daemon, "listall_waiting") == "Waiting"
    waiting_rows = daemon.json("listall", "--status", "Waiting")
    assert "listall_waiting" in [r["job_name"] for r in waiting_rows]

    daemon.ok("start", "listall_pausing")
    blocker.wait_started(daemon, "listall_pausing")
    daemon.ok("pause", "listall_pausing")
    assert listall_status(daemon, "listall_pausing") == "Pausing In Progress"
    table = [line for line in daemon.ok("listall").splitlines() if line.startswith("listall_")]
    assert any(line.split()[0] == "listall_pausing" and "Pausing In Progress" in line for line in table), table
    assert any(line.split()[0] == "listall_waiting" and "Waiting" in line for line in table), table

    blocker.open()
    wait_for_status(daemon, "listall_pausing", "Paused")
    assert listall_status(daemon, "listall_pausing") == "Paused"
    daemon.ok("resume", "listall_pausing")
    arrive(arrival)
    for job in ("listall_pausing", "listall_waiting"):
        wait_for_status(daemon, job, "Completed")
        assert listall_status(daemon, job) == "Completed"


# ============================================================================ dry run


def test_dry_run_shows_events_and_skips_and_starts_nothing(daemon: Daemon, tmp_path: Path) -> None:
    flag, arrival = tmp_path / "dry.flag", tmp_path / "dry.ready"
    flag.write_text("must survive a dry run\n")
    import_job(daemon, tmp_path, "dry_events", [step(10, "true", description="dryonly")])
    daemon.ok("event", "add", "dry_events", "dry_wait", str(arrival))
    daemon.ok("event", "add", "-a", "create", "dry_events", "dry_create", str(flag))

    text = daemon.ok("start", "--dry-run", "--skip", "wait", "dry_events")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("dry_")}
    assert rows["dry_wait"] == ["dry_wait", "wait", str(arrival), "skip"], text
    assert rows["dry_create"] == ["dry_create", "create", str(flag), "create"], text
    assert "dryonly" in text

    plan = daemon.json("start", "--dry-run", "--skip", "wait", "dry_events")
    (result,) = plan["results"]
    assert (result["started"], result["action"], result["skips"]) == (False, "dry-run", ["wait"])
    assert sorted((e["event_name"], e["action_type"], e["event_item"], e["status"]) for e in result["events"]) == [
        ("dry_create", "create", str(flag), "Pending"),
        ("dry_wait", "wait", str(arrival), "Skipped"),
    ]
    assert [s["job_step"] for s in result["steps"]] == [10, 20]  # with the automatic Create Events step
    assert result["steps"][1]["function"] == "call_create_event"

    assert status_of(daemon, "dry_events")["status"] == "Not Running"
    assert status_of(daemon, "dry_events")["run"] is None
    assert flag.read_text() == "must survive a dry run\n"  # no create-event reset either
