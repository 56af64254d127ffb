"""One run in progress: waits for its events, runs its steps, commits each outcome.

A run is one asyncio task. Steps whose prerequisites are complete start together (plain
sequential order when no wait steps are given); pause and stop stop new steps from starting and
take effect when the running ones end (``stop --now`` also terminates them). Every step outcome
is committed with the run's progress in one transaction before anything else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadmgrd import procgroup
from loadmgrd import steps as step_functions
from loadmgrd.errors import LoadmgrError
from loadmgrd.jobfile import StepDef, prerequisites
from loadmgrd.notifier import read_log
from loadmgrd.runlog import RunLog
from loadmgrd.states import EventAction, RunStatus, StepStatus
from loadmgrd.stepargs import CONTROL_ARGS, parse_args, step_control
from loadmgrd.steps import expand_path
from loadmgrd.timefmt import now_ts
from loadmgrd.variables import substitute

if TYPE_CHECKING:
    from loadmgrd.engine import Engine

log = logging.getLogger("loadmgrd.runner")

# what systemd gives the daemon alone; a step must not see it (it would talk to systemd as us)
_DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")
_PROCESS_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class LiveStep:
    started: float
    start_ts: str


@dataclass
class ActiveRun:
    """A run owned by the daemon right now (Ready, Waiting, Running, Pausing or Stopping)."""

    engine: Engine
    job_key: int
    job_name: str
    job_group: str | None
    run_key: int
    run_id: str
    log: RunLog
    status: RunStatus = RunStatus.READY
    pause_requested: bool = False
    stop_requested: bool = False
    stop_now: bool = False
    reason: str | None = None
    live: dict[int, LiveStep] = field(default_factory=dict)
    process_groups: set[int] = field(default_factory=set)
    total_steps: int = 0
    done_steps: int = 0
    started_monotonic: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    control: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    warnings_seen: bool = False
    queued: bool = False  # Ready, waiting for a free slot ([daemon] max_concurrent_jobs)
    last_completed: int | None = None
    no_success_email: bool = False
    base_env: dict[str, str] | None = None  # the steps' environment before per-step names
    step_outputs: dict[str, str] | None = None  # %step_N% values of the run's complete steps
    terminators: list[asyncio.Future[None]] = field(default_factory=list)
    closing: bool = False  # its end is being written: readers may already see it ended

    # ------------------------------------------------------------------ control

    def request(self, *, pause: bool = False, stop: bool = False, now: bool = False) -> None:
        if stop:
            self.stop_requested = True
            self.stop_now = self.stop_now or now
        if pause:
            self.pause_requested = True
        self.control.set()
        if now:
            self.terminate_steps()

    def terminate_steps(self) -> None:
        """SIGTERM every running step's process group; SIGKILL what is left after the grace period."""
        if self.process_groups:
            grace = self.engine.config.daemon.stop_grace_period
            self.terminators.append(asyncio.ensure_future(procgroup.terminate(set(self.process_groups), grace)))

    def snapshot(self) -> dict[str, Any]:
        return {
            "job": self.job_name,
            "run_id": self.run_id,
            "status": self.status.value,
            "reason": self.reason if self.status.is_finished else None,
            "queued": self.queued,
            "running_steps": sorted(self.live),
            "steps_done": self.done_steps,
            "steps_total": self.total_steps,
            "elapsed": round(time.monotonic() - self.started_monotonic, 3),
        }

    # ------------------------------------------------------------------ the task

    async def execute(self, *, continuing: bool) -> None:
        """The run's task body. ``continuing`` = a Paused run resumed (events already handled)."""
        repo = self.engine.repo
        try:
            run = await repo.run_by_key(self.run_key)
            assert run is not None
            self.total_steps = len(run["steps"])
            self.no_success_email = bool(run["no_success_email"])
            self.step_outputs = None  # built from this fresh copy of the run when first needed
            complete = [s["job_step"] for s in run["steps"] if StepStatus(s["status"]).is_complete]
            self.done_steps = len(complete)
            self.last_completed = run.get("last_completed_step") or (max(complete) if complete else None)
            if not continuing:
                self.log.write(f"run {self.run_id} of job {self.job_name} started")
                self._reset_create_events(run)
            else:
                self.log.write(f"run {self.run_id} of job {self.job_name} resumed")
            async with self.engine.slot(self):
                if self.stop_requested or self.pause_requested:
                    await self._finish(run)
                    return
                if not await self._wait_events(run):
                    await self._finish(run)
                    return
                await self._set_status(RunStatus.RUNNING)
                await self._run_steps(run)
                await self._finish(run)
        except asyncio.CancelledError:
            self.reason = self.reason or "loadmgrd shut down"
            await asyncio.shield(self._close(RunStatus.STOPPED))
            raise
        except Exception as exc:
            log.exception("run %s of job %s failed inside loadmgrd", self.run_id, self.job_name)
            self.reason = f"internal error: {type(exc).__name__}: {exc}"
            await asyncio.shield(self._close(RunStatus.FAILED))
        finally:
            self.engine.forget(self)

    def _reset_create_events(self, run: Mapping[str, Any]) -> None:
        env = self._environment(None, run)
        for event in run["events"]:
            if event["action_type"] == EventAction.CREATE and event["status"] != "Skipped":
                path = Path(expand_path(event["event_item"], env))
                try:
                    path.unlink()
                    self.log.write(f"create event {event['event_name']}: removed {path} (reset)")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.log.write(
                        f"create event {event['event_name']}: cannot remove {path}: {exc.strerror}", level="WARNING"
                    )

    async def _wait_events(self, run: Mapping[str, Any]) -> bool:
        """Wait for every pending wait event; False if the run must end (timeout, stop, pause).

        All the files are watched before the run says ``Waiting``, so a file created the moment
        someone sees that status is noticed through inotify, not by a later poll."""
        waits = [e for e in run["events"] if e["action_type"] == EventAction.WAIT and e["status"] == "Pending"]
        if not waits:
            return True
        config = self.engine.config.events
        env = self._environment(None, run)
        claims: dict[asyncio.Future[None], tuple[dict[str, Any], Path]] = {}
        for event in waits:
            path = Path(expand_path(event["event_item"], env))
            self.log.write(f"waiting for event {event['event_name']}: {path}")
            claim = asyncio.ensure_future(
                self.engine.watcher.claim(path, config.wait_sleep_time, f"{self.run_id}-{event['event_name']}")
            )
            claims[claim] = (event, path)
        await asyncio.sleep(0)  # each claim registers its watch on its first step
        await self._set_status(RunStatus.WAITING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.wait_timeout if config.wait_timeout else None
        control: asyncio.Future[Any] = asyncio.ensure_future(self.control.wait())
        pending: set[asyncio.Future[Any]] = set(claims)
        try:
            while pending:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                done, _ = await asyncio.wait(
                    pending | {control}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if control in done:
                    break
                for task in done:
                    pending.discard(task)
                    event, path = claims[task]
                    task.result()
                    event["status"] = "Found"
                    await self.engine.repo.set_event_status(self.run_key, event["event_name"], "Found")
                    self.log.write(f"event {event['event_name']} arrived: {path} (consumed)")
        finally:
            control.cancel()
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not pending:
            return True
        if not self.control.is_set():
            missing = [claims[t] for t in claims if t in pending]
            names = ", ".join(f"{event['event_name']} ({path})" for event, path in missing)
            self.reason = f"wait event {names} timed out after {config.wait_timeout:g} s"
            self.log.write(self.reason, level="ERROR")
            for event, _path in missing:
                await self.engine.repo.set_event_status(self.run_key, event["event_name"], "Timed Out")
            self.failed = True
        return False

    async def _run_steps(self, run: dict[str, Any]) -> None:
        """Start each step once its prerequisites are complete; steps ready together run together."""
        rows = {s["job_step"]: s for s in run["steps"]}
        needs = prerequisites([StepDef.from_mapping(s) for s in run["steps"]])
        done = {n for n, s in rows.items() if StepStatus(s["status"]).is_complete}
        pending = {n for n in rows if n not in done}
        # what each pending step still waits for (prerequisites outside the run count as done)
        waiting = {n: {p for p in needs[n] if p in rows and p not in done} for n in pending}
        dependents: dict[int, list[int]] = {}
        for n, prereqs in waiting.items():
            for p in prereqs:
                dependents.setdefault(p, []).append(n)
        ready = sorted(n for n in pending if not waiting[n])
        running: dict[asyncio.Task[bool], int] = {}
        self.failed = False
        while True:
            if not (self.failed or self.stop_requested or self.pause_requested):
                for number in ready:
                    pending.discard(number)
                    running[asyncio.ensure_future(self._run_step(rows[number], run))] = number
                ready = []
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                number = running.pop(task)
                if not task.result():
                    self.failed = True
                    continue
                for dependent in dependents.get(number, ()):
                    waiting[dependent].discard(number)
                    if not waiting[dependent]:
                        ready.append(dependent)
            ready.sort()
        run["pending"] = sorted(pending)

    async def _run_step(self, row: dict[str, Any], run: dict[str, Any]) -> bool:
        """Run one step (with its retries) and commit its outcome; True if the run may go on."""
        number = row["job_step"]
        start_ts = now_ts()
        started = time.monotonic()
        self.live[number] = LiveStep(started, start_ts)
        self.engine.changed()
        description = row["job_step_description"] or row["job_step_function"]
        attempts: list[dict[str, Any]] = []
        try:
            if row["skip_step"]:
                self.log.write(f"step {number} ({description}) skipped (skip_step)", step=number)
                result = step_functions.StepResult(0, message="skip_step")
                status = StepStatus.SKIPPED
            else:
                self.log.write(f"step {number} started: {description}", step=number)
                try:
                    result = await self._attempts(row, run, attempts)
                except LoadmgrError as exc:
                    result = step_functions.StepResult(1, message=exc.message)
                except Exception as exc:  # a bug must fail this step, not strand the run
                    log.exception("step %s of run %s failed inside loadmgrd", number, self.run_id)
                    result = step_functions.StepResult(1, message=f"internal error: {type(exc).__name__}: {exc}")
                if result.exit_code == 0:
                    status = StepStatus.SUCCESS
                elif row["job_step_ignore_error"] and not result.forced_failure:
                    status = StepStatus.WARNING
                else:
                    status = StepStatus.FAILURE
            duration = time.monotonic() - started
            outcome = f"step {number} {status.value.lower()}: exit code {result.exit_code}, {duration:.3f} s"
            if result.message:
                outcome += f" ({result.message})"
            level = {StepStatus.FAILURE: "ERROR", StepStatus.WARNING: "WARNING"}.get(status, "INFO")
            self.log.write(outcome, step=number, level=level)
            self.log.flush()
            row.update(status=status.value, output=result.output)
            if self.step_outputs is not None and status.is_complete and result.output is not None:
                self.step_outputs[f"step_{number}"] = result.output
            run_fields: dict[str, Any] = {"current_step": number}
            if result.variables_changed:
                run_fields["variables"] = run["variables"]
            if status is StepStatus.WARNING:
                self.warnings_seen = True
            if status.is_complete:
                self.done_steps += 1
                self.last_completed = max(self.last_completed or number, number)
                run_fields["last_completed_step"] = self.last_completed
            if status is StepStatus.FAILURE and not self.stop_requested:
                self.reason = f"step {number} failed" + (f": {result.message}" if result.message else "")
            await asyncio.shield(
                self.engine.repo.finish_step(
                    self.run_key,
                    number,
                    {
                        "status": status.value,
                        "start_ts": start_ts,
                        "end_ts": now_ts(),
                        "duration": round(duration, 6),
                        "exit_code": result.exit_code,
                        "attempts": len(attempts),
                        "output": result.output,
                        "message": result.message,
                        "attempt_log": attempts if len(attempts) > 1 else None,
                    },
                    run_fields,
                )
            )
            return status.is_complete
        finally:
            self.live.pop(number, None)
            self.engine.changed()

    async def _attempts(
        self, row: Mapping[str, Any], run: dict[str, Any], attempts: list[dict[str, Any]]
    ) -> step_functions.StepResult:
        """Call the step function, with ``timeout`` per attempt and up to ``retries`` more attempts."""
        number = row["job_step"]
        own = parse_args(row["job_step_args"])
        control = step_control({**own, **{k: v for k, v in run["temp_args"].items() if k in CONTROL_ARGS}})
        total = control.retries + 1
        result = step_functions.StepResult(1)
        for attempt in range(1, total + 1):
            if attempt > 1:
                self.log.write(
                    f"step {number}: attempt {attempt} of {total} in {control.retry_delay:g} s",
                    step=number,
                    level="WARNING",
                )
                if await self._interrupted_within(control.retry_delay):
                    break
            begun, begun_ts = time.monotonic(), now_ts()
            try:
                result = await asyncio.wait_for(self._call(row, run), control.timeout)
            except TimeoutError:
                result = step_functions.StepResult(124, message=f"timed out after {control.timeout:g} s")
            attempts.append(
                {
                    "attempt": attempt,
                    "start_ts": begun_ts,
                    "end_ts": now_ts(),
                    "duration": round(time.monotonic() - begun, 6),
                    "exit_code": result.exit_code,
                    "message": result.message,
                }
            )
            if result.exit_code == 0 or result.forced_failure or self.stop_requested:
                break
            if attempt < total:
                self.log.write(
                    f"step {number}: attempt {attempt} failed (exit code {result.exit_code}"
                    + (f", {result.message}" if result.message else "")
                    + ")",
                    step=number,
                    level="WARNING",
                )
        return result

    async def _interrupted_within(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a stop arrives first (True = stop)."""
        if self.stop_requested:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.control.wait(), seconds)
        return self.stop_requested

    async def _call(self, row: Mapping[str, Any], run: dict[str, Any]) -> step_functions.StepResult:
        name = row["job_step_function"]
        impl = step_functions.FUNCTIONS.get(name)
        if impl is None:
            return step_functions.unavailable(name)
        config = self.engine.config
        shell = name in step_functions.SHELL_FUNCTIONS
        values = await self._variables(row, run)
        delimiter = config.jobs.variable_delimiter
        command = substitute(row["job_step_command"], values, delimiter, quote=shell)
        temp_args: dict[str, str] = run["temp_args"]
        own_args = parse_args(row["job_step_args"])
        unresolved = list(command.unresolved)
        # Every argument value gets its variables first (as plain text) and only then becomes
        # one shell word: a value can never close a quote it sits in.
        effective_args: dict[str, str] = {}
        for key, value in {**own_args, **temp_args}.items():
            filled = substitute(value, values, delimiter, quote=False)
            unresolved += filled.unresolved
            effective_args[key] = filled.text
        if shell:
            args_text = " ".join(
                f"{key}={shlex.quote(effective_args[key])}" for key in own_args if key not in CONTROL_ARGS
            )
        else:
            args_text = substitute(row["job_step_args"], values, delimiter, quote=False).text
        for name_missing in unresolved:
            self.log.write(
                f"variable {delimiter}{name_missing}{delimiter} is not known here; left as is",
                step=row["job_step"],
                level="WARNING",
            )
        context = step_functions.StepContext(
            job=self.job_name,
            run_id=self.run_id,
            job_step=row["job_step"],
            command=command.text,
            args_text=args_text,
            args=effective_args,
            env=self._environment(row["job_step"], run),
            log=self.log,
            capture=bool(row["job_step_capture_output"]),
            capture_limit=config.jobs.capture_output_limit,
            events=run["events"],
            process_groups=self.process_groups,
            services=self.engine,
            on_spawn=lambda pid: self._spawned(row["job_step"], pid),
            variables=run.setdefault("variables", {}),
        )
        result = await impl(context)
        for event_name in context.notes:
            await self.engine.repo.set_event_status(self.run_key, event_name, "Created")
        return result

    async def _spawned(self, job_step: int, pid: int) -> None:
        live = self.live.get(job_step)
        start_ts = live.start_ts if live else now_ts()
        await self.engine.repo.step_started(self.run_key, job_step, start_ts, pid)

    async def _variables(self, row: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {"job_log_file": str(self.log.path)}
        variables: Mapping[str, Any] = run.get("variables") or {}
        for key in ("currency_start_dttm", "currency_end_dttm"):
            if variables.get(key):
                values[key] = str(variables[key])
        values.update(variables.get("step_outputs", {}))
        if self.step_outputs is None:
            self.step_outputs = {
                f"step_{step['job_step']}": step["output"]
                for step in run["steps"]
                if step.get("output") is not None and StepStatus(step["status"]).is_complete
            }
        values.update(self.step_outputs)
        delimiter = self.engine.config.jobs.variable_delimiter
        text = f"{row['job_step_command']} {row['job_step_args']}"
        for match in re.finditer(re.escape(delimiter) + r"([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)", text):
            name = match.group(1)
            process, attribute = name.split(".", 1)
            entry = (variables.get("processes") or {}).get(process) or await self.engine.repo.latest_process_log(
                process
            )
            if entry and attribute in entry and entry[attribute] is not None:
                values[name] = str(entry[attribute])
        return values

    def _environment(self, job_step: int | None, run: Mapping[str, Any]) -> dict[str, str]:
        if self.base_env is None:  # once per run: decoding os.environ costs more than copying a dict
            base = dict(os.environ)
            for name in _DAEMON_ONLY_ENV:
                base.pop(name, None)
            base["LOADMGR_JOB"] = self.job_name
            base["LOADMGR_RUN_ID"] = self.run_id
            base["LOADMGR_LOG_FILE"] = str(self.log.path)
            self.base_env = base
        env = dict(self.base_env)
        if job_step is not None:
            env["LOADMGR_STEP"] = str(job_step)
        variables: Mapping[str, Any] = run.get("variables") or {}
        if variables.get("currency_start_dttm"):
            env["LOADMGR_CURRENCY_START_DTTM"] = str(variables["currency_start_dttm"])
        if variables.get("currency_end_dttm"):
            env["LOADMGR_CURRENCY_END_DTTM"] = str(variables["currency_end_dttm"])
        return env

    # ------------------------------------------------------------------ endings

    async def _finish(self, run: Mapping[str, Any]) -> None:
        pending = run.get("pending")
        if pending is None:
            pending = [s for s in run["steps"] if not StepStatus(s["status"]).is_complete]
        if self.stop_requested:
            self.reason = self.reason or "stopped by an operator"
            await self._close(RunStatus.STOPPED)
        elif self.failed:
            await self._close(RunStatus.FAILED)
        elif self.pause_requested and pending:
            await self._close(RunStatus.PAUSED)
        else:
            await self._close(RunStatus.COMPLETED)

    async def _close(self, status: RunStatus) -> None:
        """Record the run's end state (survives cancellation: called under shield). The live
        status changes only once the repository has it, so no reader sees an end half-written."""
        ended = status is not RunStatus.PAUSED
        fields: dict[str, Any] = {"status": status.value, "status_reason": self.reason}
        if ended:
            fields["end_ts"] = now_ts()
            fields["duration"] = round(time.monotonic() - self.started_monotonic, 6)
        self.closing = True
        await self.engine.repo.update_run(self.run_key, **fields)
        self.status = status
        self.engine.forget(self)  # from now on the job may start again
        line = f"run {self.run_id} {status.value.lower()}"
        if self.reason and status is not RunStatus.COMPLETED:
            line += f": {self.reason}"
        self.log.write(line, level="ERROR" if status is RunStatus.FAILED else "INFO")
        self.log.close()
        if ended:
            await self._notify()
        log.info(
            "job %s run %s: %s%s", self.job_name, self.run_id, status.value, f" ({self.reason})" if self.reason else ""
        )
        self.engine.changed()

    async def _notify(self) -> None:
        """Queue the run's notification mail (never blocks on the mail server)."""
        notifier = self.engine.notifier
        if notifier is None:
            return
        try:
            wanted = notifier.run_mail(
                self.job_name, self.status.value, warnings=self.warnings_seen, no_success_email=self.no_success_email
            )
            if wanted is None:
                return  # nothing to send: the run and its log need not be read
            run = await self.engine.repo.run_by_key(self.run_key)
            if run is not None:
                text = await asyncio.to_thread(read_log, run["log_file"])
                notifier.run_ended(self.job_name, run, warnings=self.warnings_seen, log_text=text)
        except Exception:
            log.exception("could not prepare the notification for run %s", self.run_id)

    async def _set_status(self, status: RunStatus) -> None:
        self.status = status
        await self.engine.repo.update_run(self.run_key, status=status.value)
        self.engine.changed()


def _kill_groups(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
