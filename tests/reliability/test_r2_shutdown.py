"""R2 — graceful shutdown (SIGTERM, SIGINT) while runs have steps with children and grandchildren.

Three runs are in progress when the signal comes:

- ``tree``: a sequential job whose step 20 has a child, a child with a grandchild, and a grandchild
  that ignores SIGTERM;
- ``fan``: two steps running side by side (wait-step columns), one whose whole process group ignores
  SIGTERM, one with a plain child;
- ``idle``: a run Waiting for its wait event.

With ``stop_grace_period = 1``: loadmgrd exits 0 within a bound; no process of any run survives (no
live member of the steps' process groups, none of the recorded grandchildren, no process whose
environment names one of the runs); after a restart the three runs are ``Stopped`` with the reason,
the interrupted steps are not complete, and ``start --resume --wait`` completes each run, every step
having run once.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability.support import (
    WAIT_TIMEOUT,
    Conn,
    DaemonFactory,
    call,
    connect_ro,
    import_job,
    is_alive,
    job_csv,
    kill_group,
    lines_of,
    live_group_members,
    processes_with_env,
    request,
    run_of,
    step,
    wait_for_status,
    wait_gone,
    wait_until,
)

GRACE = 1
COMPLETE = ("Success", "Warning", "Skipped")
q = shlex.quote


def blocker(directory: Path, name: str, out: Path, number: int, body: str, *, ignore_term: bool = False) -> str:
    """A step that, until ``<name>.release`` exists, records its pgid, starts ``body`` (children),
    touches ``<name>.mark`` and waits; once released it just appends ``number`` to ``out``."""
    d = directory
    return (
        ("trap '' TERM; " if ignore_term else "")
        + f"if [ -f {q(str(d / (name + '.release')))} ]; then echo {number} >> {q(str(out))}; exit 0; fi; "
        + f"echo $$ > {q(str(d / (name + '.pgid')))}; "
        + body
        + f"touch {q(str(d / (name + '.mark')))}; wait"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_leaves_no_process_and_resumable_runs(
    daemon_factory: DaemonFactory,
    tmp_path: Path,
    groups_to_kill: list[int],
    pids_to_kill: list[int],
    signum: int,
) -> None:
    d = daemon_factory(daemon_keys={"stop_grace_period": str(GRACE)})
    d.start()
    t = tmp_path
    out = {job: t / f"{job}.out" for job in ("tree", "fan", "idle")}

    tree_children = (
        "sleep 600 & "
        f"bash -c 'sleep 600 & echo $! > {q(str(t / 'tree.gc1'))}; wait' & "
        f"bash -c '(trap \"\" TERM; exec sleep 600) & echo $! > {q(str(t / 'tree.gc2'))}; wait' & "
    )
    import_job(
        d,
        t,
        "tree",
        [
            step(10, f"echo 10 >> {q(str(out['tree']))}"),
            step(20, blocker(t, "tree", out["tree"], 20, tree_children)),
            step(30, f"echo 30 >> {q(str(out['tree']))}"),
        ],
    )
    import_job(
        d,
        t,
        "fan",
        [
            step(10, f"echo 10 >> {q(str(out['fan']))}"),
            step(
                20,
                blocker(
                    t, "fan20", out["fan"], 20, f"sleep 600 & echo $! > {q(str(t / 'fan20.gc'))}; ", ignore_term=True
                ),
                wait_step=10,
            ),
            step(
                30,
                blocker(t, "fan30", out["fan"], 30, f"sleep 600 & echo $! > {q(str(t / 'fan30.gc'))}; "),
                wait_step=10,
            ),
            step(40, f"echo 40 >> {q(str(out['fan']))}", wait_step=20, alt_wait_step=30),
        ],
    )
    import_job(d, t, "idle", [step(10, f"echo 10 >> {q(str(out['idle']))}")])
    d.ok("event", "add", "idle", "never", str(t / "never.flag"))
    for job in ("tree", "fan", "idle"):
        d.ok("job", "group", job, "r2")

    run_ids = {r["job"]: r["run_id"] for r in call(d, "start", {"name": "r2"})["results"]}
    assert sorted(run_ids) == ["fan", "idle", "tree"], run_ids
    for name in ("tree", "fan20", "fan30"):
        wait_until((t / f"{name}.mark").exists, WAIT_TIMEOUT, f"step {name} running")
    wait_for_status(d, "idle", "Waiting")
    pgids = [int((t / f"{name}.pgid").read_text()) for name in ("tree", "fan20", "fan30")]
    groups_to_kill.extend(pgids)
    gc_files = [t / name for name in ("tree.gc1", "tree.gc2", "fan20.gc", "fan30.gc")]
    for path in gc_files:  # written by the background children themselves
        wait_until(lambda path=path: path.exists() and path.read_text().strip() != "", WAIT_TIMEOUT, f"{path}")
    grandchildren = [int(path.read_text()) for path in gc_files]
    pids_to_kill.extend(grandchildren)
    assert all(live_group_members(p) for p in pgids), "the step processes are not all running"
    assert all(is_alive(p) for p in grandchildren), "the grandchildren are not all running"
    run_processes = [p for run_id in run_ids.values() for p in processes_with_env(f"LOADMGR_RUN_ID={run_id}")]
    assert len(run_processes) >= 10, f"expected the steps' process trees: {run_processes}"

    assert d.proc is not None
    began = time.monotonic()
    d.proc.send_signal(signum)
    try:
        code = d.proc.wait(timeout=GRACE + 20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"loadmgrd did not exit on {signal.Signals(signum).name}:\n{d.log()[-3000:]}") from None
    took = time.monotonic() - began
    d.proc = None
    assert code == 0, f"exit {code}:\n{d.log()[-3000:]}"
    assert took < GRACE + 10, f"shutdown took {took:.1f} s with a {GRACE} s grace period"
    assert not d.socket.exists(), "the socket was left behind"

    # nothing of the runs survives (a short bounded wait for the kernel to finish tearing them down)
    for pgid in pgids:
        assert wait_gone(lambda pgid=pgid: live_group_members(pgid), 2) == [], f"process group {pgid} survived"
    survivors = [p for p in grandchildren if is_alive(p)]
    assert survivors == [], f"grandchildren survived the shutdown: {survivors}"
    for run_id in run_ids.values():
        left = wait_gone(lambda run_id=run_id: processes_with_env(f"LOADMGR_RUN_ID={run_id}"), 2)
        assert left == [], f"processes of run {run_id} survived: {left}"

    d.start()
    for job, run_id in run_ids.items():
        run = run_of(d, job)
        assert run["run_id"] == run_id
        assert run["status"] == "Stopped", f"{job}: {run['status']} ({run['status_reason']})"
        assert "shut down" in (run["status_reason"] or ""), f"{job}: {run['status_reason']!r}"
    steps = {job: {s["job_step"]: s["status"] for s in run_of(d, job)["steps"]} for job in run_ids}
    assert steps["tree"][10] in COMPLETE and steps["tree"][20] not in COMPLETE, steps
    assert steps["fan"][20] not in COMPLETE and steps["fan"][30] not in COMPLETE, steps
    assert steps["idle"][10] not in COMPLETE, steps

    for name in ("tree", "fan20", "fan30"):
        (t / f"{name}.release").touch()
    resumed = d.ctl("start", "--resume", "--wait", "r2")
    assert resumed.returncode == 0, f"resume failed ({resumed.returncode}): {resumed.stderr}"
    for job, run_id in run_ids.items():
        run = run_of(d, job)
        assert run["status"] == "Completed", f"{job}: {run['status']} ({run['status_reason']})"
        assert run["resumed_from"] == run_id
    assert lines_of(out["tree"]) == ["10", "20", "30"]
    fan = lines_of(out["fan"])
    assert fan[0] == "10" and sorted(fan[1:3]) == ["20", "30"] and fan[3:] == ["40"], fan
    assert lines_of(out["idle"]) == ["10"]
    for pgid in pgids:
        kill_group(pgid)


GROUP_JOBS = 120


def test_sigterm_during_a_group_start_stops_every_run_it_started(
    daemon_factory: DaemonFactory, tmp_path: Path, groups_to_kill: list[int]
) -> None:
    """SIGTERM while a start of a large group is still launching its jobs: the runs it launched
    are Stopped like any other (none left Ready or Running for the next daemon to call a crash),
    the jobs not reached yet are refused as shutting down, and no step process survives."""
    d = daemon_factory(daemon_keys={"stop_grace_period": str(GRACE), "max_concurrent_jobs": str(GROUP_JOBS)})
    d.start()
    marks = tmp_path / "marks"
    marks.mkdir()
    command = f'touch {q(str(marks))}/"$LOADMGR_JOB"; echo $$ > {q(str(marks))}/"$LOADMGR_JOB.pgid"; sleep 600'
    content = job_csv([step(10, command)])
    for n in range(GROUP_JOBS):
        call(d, "job.import", {"job": f"r2-big-{n:03d}", "group": "r2-big", "file_name": "big.csv", "content": content})
    with Conn(d.socket, timeout=WAIT_TIMEOUT) as conn:
        conn.request(request("start", {"name": "r2-big"}))
        wait_until((marks / "r2-big-000").exists, WAIT_TIMEOUT, "the group's first step running")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        reply = conn.read_json()
        code = d.proc.wait(timeout=GRACE + 20)
    d.proc = None
    groups_to_kill.extend(int(p.read_text()) for p in marks.glob("*.pgid") if p.read_text().strip())
    assert code == 0, f"exit {code}:\n{d.log()[-3000:]}"
    assert "Traceback" not in d.log(), d.log()[-5000:]

    results = {r["job"]: r for r in reply["result"]["results"]}
    started = sorted(job for job, r in results.items() if r["started"])
    refused = {job: r["message"] for job, r in results.items() if not r["started"]}
    assert started and len(started) + len(refused) == GROUP_JOBS, reply
    assert all("shutting down" in message for message in refused.values()), refused
    with connect_ro(d.database) as db:
        statuses = dict(
            db.execute("SELECT j.job_name, r.status FROM job j JOIN job_run r ON r.job_key = j.job_key").fetchall()
        )
    assert sorted(statuses) == started, "a run exists exactly for each job the start reported started"
    assert set(statuses.values()) == {"Stopped"}, {s: list(statuses.values()).count(s) for s in set(statuses.values())}
    for job in started:
        run_id = results[job]["run_id"]
        left = wait_gone(lambda run_id=run_id: processes_with_env(f"LOADMGR_RUN_ID={run_id}"), 2)
        assert left == [], f"processes of run {run_id} survived: {left}"
