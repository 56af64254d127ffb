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
    DaemonFactory,
    call,
    import_job,
    is_alive,
    kill_group,
    lines_of,
    live_group_members,
    processes_with_env,
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
