"""The execution engine: starts runs, keeps the registry of runs in progress, and carries out
stop / pause / resume. Each run in progress is an ``ActiveRun`` task (see ``runner.py``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadmgrd.errors import (
    AlreadyRunning,
    Conflict,
    ErrorCode,
    InvalidInput,
    LoadmgrError,
    MaintenanceMode,
    NotFound,
    NotRunning,
    ProtocolError,
)
from loadmgrd.filewatch import FileWatcher
from loadmgrd.jobfile import StepDef
from loadmgrd.planning import Plan, plan_fresh, plan_resume
from loadmgrd.repository import NewRun, NewStep, Row
from loadmgrd.runlog import RunLog, new_log_file
from loadmgrd.runner import ActiveRun
from loadmgrd.states import RunStatus
from loadmgrd.stepargs import CONTROL_ARGS, step_control
from loadmgrd.stepranges import StepRange
from loadmgrd.targets import Targets
from loadmgrd.timefmt import now_ts, stamp, to_ts

if TYPE_CHECKING:
    from loadmgrd.config import Config
    from loadmgrd.daemon import Daemon
    from loadmgrd.notifier import Notifier
    from loadmgrd.repository import Repository

log = logging.getLogger("loadmgrd.engine")

ALL = "ALL"
START_SETTLE_TIMEOUT = 5.0  # how long a stop waits for the starts under way to launch their runs


@dataclass
class StartOptions:
    step_range: StepRange | None = None
    one_off_steps: list[StepDef] | None = None
    one_off_file: str | None = None
    resume: bool = False
    skips: list[str] = field(default_factory=list)
    temp_args: dict[str, str] = field(default_factory=dict)
    no_success_email: bool = False
    dry_run: bool = False
    requested_by: str | None = None


class Engine:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.watcher = FileWatcher()
        self.runs: dict[int, ActiveRun] = {}
        self._starting: dict[int, str] = {}  # jobs (key: name) with a start request in progress
        self._no_starts = asyncio.Event()  # set while _starting is empty (shutdown waits for it)
        self._no_starts.set()
        # Stops are numbered; a start under way refuses a job stopped (by name, group or ALL) after it began.
        self._stops = 0
        self._job_stopped_at: dict[int, int] = {}
        self._all_stopped_at = 0
        self.accepting = True
        self._running_slots = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._version = 0
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self.recovery: asyncio.Task[None] | None = None  # ending the steps of a daemon that died
        self.notifier: Notifier | None = None
        self.databases = Targets(lambda: self.config.targets)

    @property
    def repo(self) -> Repository:
        assert self._daemon.repo is not None
        return self._daemon.repo

    @property
    def config(self) -> Config:
        return self._daemon.config

    # ------------------------------------------------------------------ registry

    def is_executing(self, job_name: str) -> bool:
        """A run of the job is owned by the daemon, or a request is starting one."""
        return job_name in self._starting.values() or any(r.job_name == job_name for r in self.runs.values())

    def active(self, job_key: int) -> ActiveRun | None:
        return self.runs.get(job_key)

    def forget(self, run: ActiveRun) -> None:
        if self.runs.get(run.job_key) is run:
            del self.runs[run.job_key]
            self._ended.set()
            self._ended = asyncio.Event()
        self.changed()

    def changed(self) -> None:
        """Wake everyone watching runs (``start --wait``, ``logs -f``, the status line)."""
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, since: int, timeout: float) -> int:
        if self._version == since:
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return self._version

    async def wait_ended(self, timeout: float) -> None:
        """Until some run leaves the daemon (ended, paused or stopped), at most ``timeout`` s."""
        event = self._ended
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    @property
    def version(self) -> int:
        return self._version

    def reopen_logs(self) -> int:
        for run in self.runs.values():
            run.log.reopen()
        return len(self.runs)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = collections.Counter(r.status.value for r in self.runs.values())
        return dict(counts)

    # ------------------------------------------------------------------ concurrency limit

    @contextlib.asynccontextmanager
    async def slot(self, run: ActiveRun) -> AsyncIterator[None]:
        """At most ``[daemon] max_concurrent_jobs`` runs past Ready; the others queue in order."""
        if self._running_slots >= self.config.daemon.max_concurrent_jobs or self._slot_waiters:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            control: asyncio.Future[Any] = asyncio.ensure_future(run.control.wait())
            run.queued = True
            self.changed()
            try:
                await asyncio.wait([waiter, control], return_when=asyncio.FIRST_COMPLETED)
            finally:
                control.cancel()
                run.queued = False
            if not waiter.done():
                waiter.cancel()
                self._slot_waiters.remove(waiter)
                yield  # stopped or paused while queued: the run ends without taking a slot
                return
        else:
            self._running_slots += 1
        try:
            yield
        finally:
            self._running_slots -= 1
            self._wake_waiters()

    def config_changed(self) -> None:
        """After a reload: new target URLs for the next query; a raised job limit lets queued runs go."""
        self.databases.dispose()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        while self._slot_waiters and self._running_slots < self.config.daemon.max_concurrent_jobs:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._running_slots += 1
                waiter.set_result(None)

    # ------------------------------------------------------------------ start

    async def targets(self, name: str) -> tuple[list[Row], bool]:
        """The jobs NAME means: a job, else every job of the group NAME. Returns (jobs, is_group)."""
        job = await self.repo.find_job(name)
        if job is not None:
            return [job], False
        jobs = await self.repo.jobs_in_group(name)
        if not jobs:
            raise NotFound(f"no job or job group named {name!r}")
        return jobs, True

    async def start(self, name: str, options: StartOptions) -> dict[str, Any]:
        begun = self._stops
        if not self.accepting:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "loadmgrd is shutting down and starts no new run")
        info = await self.repo.info()
        if info["maintenance_mode"] and not options.dry_run:
            raise MaintenanceMode(
                "maintenance mode is on: no run may start (turn it off with: loadmgrctl repo maintenance --off)"
            )
        control_args = {k: v for k, v in options.temp_args.items() if k in CONTROL_ARGS}
        step_control(control_args)  # a bad --tempargs timeout:/retries: is refused before anything starts
        jobs, is_group = await self.targets(name)
        if is_group and options.one_off_steps is not None:
            raise InvalidInput("-j/--job-file runs one job; NAME is a job group")
        results = []
        for job in jobs:
            try:
                if not options.dry_run and self._stopped_since(job["job_key"], begun):
                    raise Conflict("not started: a stop of this job arrived while this start was under way")
                results.append(await self._start_one(job, options))
            except LoadmgrError as exc:
                if isinstance(exc, AlreadyRunning) and self.notifier is not None and not options.dry_run:
                    active = self.runs.get(job["job_key"])
                    self.notifier.start_refused(job["job_name"], exc.message, active.run_id if active else None)
                if not is_group:
                    raise
                results.append(_refusal(job, exc))
        return {"name": name, "group": is_group, "results": results}

    async def _start_one(self, job: Row, options: StartOptions) -> dict[str, Any]:
        """Start (or resume, or describe) one job's run. Two requests for the same job never
        interleave: the check that the job is free and the launch are separated by awaits, so
        a second request arriving meanwhile is refused as already running."""
        job_key = job["job_key"]
        if options.dry_run:  # reads only
            return await self._start_free_job(job, options)
        if not self.accepting:  # checked per job: a group start may be under way when shutdown begins
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "loadmgrd is shutting down and starts no new run")
        if job_key in self._starting:
            raise AlreadyRunning(f"job {job['job_name']!r} is already being started by another request")
        self._starting[job_key] = job["job_name"]
        self._no_starts.clear()
        try:
            return await self._start_free_job(job, options)
        finally:
            del self._starting[job_key]
            if not self._starting:
                self._no_starts.set()

    async def _start_free_job(self, job: Row, options: StartOptions) -> dict[str, Any]:
        job_key, job_name = job["job_key"], job["job_name"]
        if self.recovery is not None and not self.recovery.done():
            await asyncio.shield(self.recovery)  # no step may run while its crashed twin still does
        active = self.runs.get(job_key)
        if active is not None and (active.closing or not active.status.is_active) and active.task is not None:
            # It has just ended (a reader may already have seen its end) and is finishing its
            # bookkeeping: this start follows it rather than being refused as "already running".
            await asyncio.shield(active.task)
        if job_key in self.runs:
            raise AlreadyRunning(f"job {job_name!r} is already running ({self.runs[job_key].status.value})")
        current = await self.repo.run_detail(job_key)
        status = RunStatus(current["status"]) if current else RunStatus.NOT_RUNNING
        if status.is_active:
            raise AlreadyRunning(f"job {job_name!r} is already running ({status.value})")
        if status is RunStatus.PAUSED and current is not None and not options.dry_run:
            return await self._continue(job, current, options.temp_args)
        events = await self.repo.enabled_events(job_key)
        if options.resume:
            if current is None or status not in (RunStatus.STOPPED, RunStatus.FAILED):
                raise NotRunning(
                    f"nothing to resume: job {job_name!r} is {status.value} (only a Stopped or Failed run resumes)"
                )
            plan = plan_resume(current, events, options.step_range, options.skips, self.config.jobs.queue_size_limit)
        else:
            steps = options.one_off_steps if options.one_off_steps is not None else await self.repo.job_steps(job_key)
            if not steps:  # an imported job has steps: this one was removed by a request meanwhile
                raise NotFound(f"job {job_name!r} was removed while it was being started")
            plan = plan_fresh(
                steps, events, options.step_range or StepRange(), options.skips, self.config.jobs.queue_size_limit
            )
        if options.dry_run:
            return self._describe(job_name, plan, options, current)
        started = datetime.now(UTC)
        run_id = f"{job_key}{stamp(started)}"
        logging_config = self.config.logging
        log_path = new_log_file(
            logging_config.location,
            logging_config.prefix,
            logging_config.extension,
            logging_config.date_format,
            job_name,
            started.astimezone(),
        )
        run_log = RunLog(log_path)
        new = NewRun(
            job_key=job_key,
            run_id=run_id,
            status=RunStatus.READY.value,
            start_ts=to_ts(started),
            log_file=str(log_path),
            steps=[NewStep(p.step, p.status, p.output, p.message) for p in plan.steps],
            events=plan.events,
            start_step=plan.start_step,
            end_step=plan.end_step,
            last_completed_step=None,
            resumed_from=current["run_id"] if options.resume and current else None,
            one_off=options.one_off_steps is not None,
            temp_args=options.temp_args,
            skip_events=options.skips,
            no_success_email=options.no_success_email,
            requested_by=options.requested_by,
            variables={"step_outputs": plan.carried_outputs} if plan.carried_outputs else {},
        )
        try:
            run_key = await self.repo.create_run(new)
        except BaseException:
            run_log.close()
            with contextlib.suppress(OSError):
                log_path.unlink()  # no run owns it
            raise
        run_id = new.run_id  # made unique by the repository
        if options.one_off_file:
            run_log.write(f"steps from the one-off job file {options.one_off_file}")
        if options.temp_args:
            run_log.write("temp args: " + ", ".join(f"{k}={v}" for k, v in options.temp_args.items()))
        if new.resumed_from:
            run_log.write(f"resuming run {new.resumed_from} from step {plan.start_step}")
        self._launch(job, run_key, run_id, run_log, continuing=False)
        return {
            "job": job_name,
            "started": True,
            "action": "resumed" if options.resume else "started",
            "run_id": run_id,
            "log_file": str(log_path),
            "steps": len(plan.pending),
        }

    async def _continue(self, job: Row, current: Row, temp_args: dict[str, str]) -> dict[str, Any]:
        """A Paused run goes on from where it stopped (same run, same log file); temp args given
        now join the run's own (a key given again takes the new value) for the steps still to run."""
        changes: dict[str, Any] = {"status": RunStatus.READY.value, "status_reason": None}
        if temp_args:
            changes["temp_args"] = {**current["temp_args"], **temp_args}
        await self.repo.update_run(current["run_key"], **changes)
        run_log = RunLog(Path(current["log_file"]))
        if temp_args:
            run_log.write("temp args on resume: " + ", ".join(f"{k}={v}" for k, v in temp_args.items()))
        self._launch(job, current["run_key"], current["run_id"], run_log, continuing=True)
        return {
            "job": job["job_name"],
            "started": True,
            "action": "resumed",
            "run_id": current["run_id"],
            "log_file": current["log_file"],
        }

    def _launch(self, job: Row, run_key: int, run_id: str, run_log: RunLog, *, continuing: bool) -> None:
        run = ActiveRun(
            engine=self,
            job_key=job["job_key"],
            job_name=job["job_name"],
            job_group=job["job_group"],
            run_key=run_key,
            run_id=run_id,
            log=run_log,
        )
        self.runs[run.job_key] = run
        run.task = asyncio.create_task(run.execute(continuing=continuing), name=f"run {run_id} ({job['job_name']})")
        self.changed()

    @staticmethod
    def _describe(job_name: str, plan: Plan, options: StartOptions, current: Row | None) -> dict[str, Any]:
        return {
            "job": job_name,
            "started": False,
            "action": "dry-run",
            "resume_of": current["run_id"] if options.resume and current else None,
            "steps": [
                {
                    "job_step": p.step.job_step,
                    "description": p.step.job_step_description,
                    "function": p.step.job_step_function,
                    "command": p.step.job_step_command,
                    "args": p.step.job_step_args,
                    "ignore_error": p.step.job_step_ignore_error,
                    "status": p.status,
                }
                for p in plan.steps
            ],
            "events": [
                {
                    "event_name": e["event_name"],
                    "action_type": e["action_type"],
                    "event_item": e["event_item"],
                    "status": e["status"],
                }
                for e in plan.events
            ],
            "skips": options.skips,
            "temp_args": options.temp_args,
        }

    # ------------------------------------------------------------------ stop / pause / resume

    async def _control_targets(self, name: str) -> tuple[list[Row], bool]:
        if name == ALL:
            return [], True
        return await self.targets(name)

    async def stop(self, name: str, *, now: bool) -> list[dict[str, Any]]:
        jobs, is_group = await self._control_targets(name)
        results = []
        # Starts under way (a large group, say) launch none of these jobs from now on; a start
        # at hand finishes launching its run, which is then stopped with the rest.
        self._stops += 1
        if name == ALL:
            self._all_stopped_at = self._stops
        for job in jobs:
            self._job_stopped_at[job["job_key"]] = self._stops
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_starts.wait(), START_SETTLE_TIMEOUT)
        if name == ALL:
            results = [await self._stop_active(active, now) for active in list(self.runs.values())]
            for paused in await self.repo.paused_runs():  # a Paused run has no task: only its row
                if paused["job_key"] not in self.runs:
                    results.append(await self._stop_paused(paused["job_name"], paused["run_key"]))
            return results
        for job in jobs:
            run = self.runs.get(job["job_key"])
            if run is not None:
                results.append(await self._stop_active(run, now))
                continue
            current = await self.repo.current_run(job["job_key"])
            if current is not None and current["status"] == RunStatus.PAUSED:
                results.append(await self._stop_paused(job["job_name"], current["run_key"]))
            elif not is_group:
                status = current["status"] if current else RunStatus.NOT_RUNNING.value
                raise NotRunning(f"job {job['job_name']!r} is not running ({status})")
        if is_group and not results:
            raise NotRunning(f"no job of group {name!r} is running")
        return results

    async def _stop_paused(self, job_name: str, run_key: int) -> dict[str, Any]:
        await self.repo.update_run(
            run_key, status=RunStatus.STOPPED.value, status_reason="stopped while paused", end_ts=now_ts()
        )
        self.changed()
        return {"job": job_name, "status": RunStatus.STOPPED.value}

    def _stopped_since(self, job_key: int, begun: int) -> bool:
        return max(self._all_stopped_at, self._job_stopped_at.get(job_key, 0)) > begun

    async def _stop_active(self, run: ActiveRun, now: bool) -> dict[str, Any]:
        run.reason = "stopped by an operator" + (" (--now)" if now else "")
        run.request(stop=True, now=now)
        if run.status is RunStatus.RUNNING or run.status is RunStatus.PAUSING:
            run.status = RunStatus.STOPPING
            await self.repo.update_run(run.run_key, status=RunStatus.STOPPING.value)
        run.log.write(run.reason)
        self.changed()
        return {"job": run.job_name, "run_id": run.run_id, "status": run.status.value}

    async def pause(self, name: str) -> list[dict[str, Any]]:
        jobs, is_group = await self._control_targets(name)
        runs = (
            list(self.runs.values())
            if name == ALL
            else [self.runs[j["job_key"]] for j in jobs if j["job_key"] in self.runs]
        )
        if not runs and name != ALL:
            if is_group:
                raise NotRunning(f"no job of group {name!r} is running")
            current = await self.repo.current_run(jobs[0]["job_key"])
            status = current["status"] if current else RunStatus.NOT_RUNNING.value
            raise NotRunning(f"job {jobs[0]['job_name']!r} is not running ({status})")
        results = []
        for run in runs:
            if run.stop_requested:
                results.append({"job": run.job_name, "run_id": run.run_id, "status": run.status.value})
                continue
            run.request(pause=True)
            if run.status is RunStatus.RUNNING:
                run.status = RunStatus.PAUSING
                await self.repo.update_run(run.run_key, status=RunStatus.PAUSING.value)
            run.log.write("pause requested by an operator")
            self.changed()
            results.append({"job": run.job_name, "run_id": run.run_id, "status": run.status.value})
        return results

    async def resume(self, name: str, options: StartOptions) -> dict[str, Any]:
        """Paused → continue the same run; Stopped/Failed → ``start --resume``."""
        jobs, is_group = await self.targets(name)
        resumed = dataclasses.replace(options, resume=True)
        results = []
        for job in jobs:
            current = await self.repo.current_run(job["job_key"])
            status = RunStatus(current["status"]) if current else RunStatus.NOT_RUNNING
            try:
                if status is RunStatus.PAUSED:
                    results.append(await self._start_one(job, options))
                elif status in (RunStatus.STOPPED, RunStatus.FAILED):
                    results.append(await self._start_one(job, resumed))
                else:
                    raise NotRunning(f"job {job['job_name']!r} has nothing to resume ({status.value})")
            except LoadmgrError as exc:
                if not is_group:
                    raise
                results.append(_refusal(job, exc))
        return {"name": name, "group": is_group, "results": results}

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Stop every run: terminate running steps (TERM, then KILL after the grace period) and
        record the runs as Stopped, resumable. No step process is left behind."""
        self.accepting = False
        grace = self.config.daemon.stop_grace_period
        # A start already past its checks launches its run; wait for it, so that run is stopped too.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_starts.wait(), grace + 5)
        runs = list(self.runs.values())
        for run in runs:
            run.reason = "loadmgrd shut down"
            run.request(stop=True, now=True)
        tasks = [r.task for r in runs if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace + 5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self.databases.dispose()
        # A step's command may be gone while children that ignore SIGTERM live on in its group:
        # the terminators send them SIGKILL when the grace period ends.
        terminators = [t for r in runs for t in r.terminators if not t.done()]
        if terminators:
            await asyncio.wait(terminators, timeout=grace + 5)
        self.watcher.close()

    async def status_rows(self, names: Sequence[str]) -> list[dict[str, Any]]:
        rows = []
        for name in names:
            jobs, _ = await self.targets(name)
            for job in jobs:
                run = self.runs.get(job["job_key"])
                if run is not None:
                    rows.append(run.snapshot())
                    continue
                current = await self.repo.current_run(job["job_key"])
                rows.append(
                    {
                        "job": job["job_name"],
                        "run_id": current["run_id"] if current else None,
                        "status": current["status"] if current else RunStatus.NOT_RUNNING.value,
                        "running_steps": [],
                        "reason": current["status_reason"] if current else None,
                    }
                )
        return rows


def _refusal(job: Row, exc: LoadmgrError) -> dict[str, Any]:
    return {"job": job["job_name"], "started": False, "message": exc.message, "code": int(exc.code)}
