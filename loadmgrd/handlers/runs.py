"""Running jobs: start, stop, pause, resume, and watching them (status, history, logs, watch)."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from pydantic import Field

from loadmgrd import jobfile
from loadmgrd.engine import Engine, StartOptions
from loadmgrd.errors import NotFound
from loadmgrd.handlers.jobs import decode_job_file
from loadmgrd.protocol import Name, Params
from loadmgrd.rpc import Context, method
from loadmgrd.states import RunStatus
from loadmgrd.stepargs import parse_tempargs
from loadmgrd.stepranges import parse_range

MAX_WAIT = 30.0
WATCH_COALESCE = 0.05
MAX_LOG_CHUNK = 1024 * 1024


def _engine(ctx: Context) -> Engine:
    engine: Engine = ctx.services.engine
    return engine


class StartParams(Params):
    name: Name
    step_range: str | None = None
    job_file_name: str | None = None
    job_file_content: str | None = None
    job_file_content_base64: str | None = None
    resume: bool = False
    skip: list[str] = Field(default_factory=list)
    tempargs: list[str] = Field(default_factory=list)
    no_success_email: bool = False
    dry_run: bool = False


def _options(ctx: Context, params: StartParams) -> StartOptions:
    one_off = None
    if params.job_file_content is not None or params.job_file_content_base64 is not None:
        file_name = params.job_file_name or "job file"
        text = decode_job_file(file_name, params.job_file_content, params.job_file_content_base64)
        one_off = jobfile.parse(text, file_name, ctx.config.jobs.job_file_delimiter).steps
    return StartOptions(
        step_range=parse_range(params.step_range) if params.step_range else None,
        one_off_steps=one_off,
        one_off_file=params.job_file_name if one_off is not None else None,
        resume=params.resume,
        skips=list(params.skip),
        temp_args=parse_tempargs(params.tempargs),
        no_success_email=params.no_success_email,
        dry_run=params.dry_run,
        requested_by=ctx.peer.user,
    )


@method("start", admin=True, params=StartParams)
async def start(ctx: Context, params: StartParams) -> dict[str, Any]:
    """Start a job, or every job of a group (or resume a Paused one); ``dry_run`` only shows the plan."""
    return await _engine(ctx).start(params.name, _options(ctx, params))


class ControlParams(Params):
    name: str = Field(min_length=1)


class StopParams(ControlParams):
    now: bool = False


@method("stop", admin=True, params=StopParams)
async def stop(ctx: Context, params: StopParams) -> dict[str, Any]:
    """Stop a job, a group or ALL before the next step; ``now`` also terminates the running step."""
    return {"name": params.name, "results": await _engine(ctx).stop(params.name, now=params.now)}


@method("pause", admin=True, params=ControlParams)
async def pause(ctx: Context, params: ControlParams) -> dict[str, Any]:
    """Pause a job, a group or ALL before the next step."""
    return {"name": params.name, "results": await _engine(ctx).pause(params.name)}


class ResumeParams(Params):
    name: Name
    tempargs: list[str] = Field(default_factory=list)
    no_success_email: bool = False


@method("resume", admin=True, params=ResumeParams)
async def resume(ctx: Context, params: ResumeParams) -> dict[str, Any]:
    """Continue a Paused run; a Stopped or Failed one resumes like ``start --resume``."""
    options = StartOptions(
        temp_args=parse_tempargs(params.tempargs),
        no_success_email=params.no_success_email,
        requested_by=ctx.peer.user,
    )
    return await _engine(ctx).resume(params.name, options)


class JobParams(Params):
    job: Name


@method("status", admin=False, params=JobParams)
async def status(ctx: Context, params: JobParams) -> dict[str, Any]:
    """The job's current run: status, steps with their times, running steps, log file."""
    job = await ctx.repo.get_job(params.job)
    run = await ctx.repo.run_detail(job["job_key"])
    if run is None:
        return {"job": params.job, "job_group": job["job_group"], "status": RunStatus.NOT_RUNNING.value, "run": None}
    active = _engine(ctx).active(job["job_key"])
    if active is not None and active.run_key == run["run_key"] and not active.status.is_active:
        run = await ctx.repo.run_detail(job["job_key"]) or run  # it ended while we read: read its end
    if active is not None and active.run_key == run["run_key"] and RunStatus(run["status"]).is_active:
        run["status"] = active.status.value
        now = time.monotonic()
        for step in run["steps"]:
            live = active.live.get(step["job_step"])
            if live is not None:
                step["status"] = "Running"
                step["start_ts"] = live.start_ts
                step["elapsed"] = round(now - live.started, 3)
        run["running_steps"] = sorted(active.live)
        run["queued"] = active.queued
        run["elapsed"] = round(now - active.started_monotonic, 3)
    else:
        run["running_steps"] = []
        run["queued"] = False
    return {"job": params.job, "job_group": job["job_group"], "status": run["status"], "run": run}


class HistoryParams(Params):
    job: Name
    limit: Annotated[int, Field(ge=1, le=10000)] = 10


@method("history", admin=False, params=HistoryParams)
async def history(ctx: Context, params: HistoryParams) -> dict[str, Any]:
    """Past runs of a job, newest first, with their steps and events (the current run too once it ended)."""
    job = await ctx.repo.get_job(params.job)
    runs = []
    current = await ctx.repo.run_detail(job["job_key"])
    if current is not None and RunStatus(current["status"]).is_finished:
        runs.append({**current, "archived_ts": None})
    runs.extend(await ctx.repo.history(job["job_key"], params.limit - len(runs)) if params.limit > len(runs) else [])
    process_log = await ctx.repo.process_log_entries(params.job, params.limit)
    return {"job": params.job, "runs": runs[: params.limit], "process_log": process_log}


class LogsParams(Params):
    job: Name
    offset: Annotated[int, Field(ge=0)] = 0
    wait: Annotated[float, Field(ge=0, le=MAX_WAIT)] = 0.0


@method("logs", admin=False, params=LogsParams)
async def logs(ctx: Context, params: LogsParams) -> dict[str, Any]:
    """The current run's log from ``offset``; with ``wait``, block until more arrives or the run ends."""
    job = await ctx.repo.get_job(params.job)
    run = await ctx.repo.current_run(job["job_key"])
    if run is None or not run["log_file"]:
        raise NotFound(f"job {params.job!r} has no run, so no log")
    active = _engine(ctx).active(job["job_key"])
    is_active = active is not None and active.run_key == run["run_key"]
    content, offset = _read_from(run["log_file"], params.offset)
    if not content and is_active and params.wait > 0 and active is not None:
        await active.log.wait_changed(params.wait)
        content, offset = _read_from(run["log_file"], params.offset)
        is_active = _engine(ctx).active(job["job_key"]) is active
    return {
        "job": params.job,
        "run_id": run["run_id"],
        "log_file": run["log_file"],
        "content": content,
        "offset": offset,
        "active": is_active,
    }


def _read_from(path: str, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(MAX_LOG_CHUNK)
    except FileNotFoundError:
        return "", offset
    if len(data) == MAX_LOG_CHUNK:  # do not split a line (or a UTF-8 sequence) between chunks
        cut = data.rfind(b"\n") + 1
        data = data[:cut] if cut > 0 else data
    return data.decode("utf-8", errors="replace"), offset + len(data)


class WatchParams(Params):
    names: list[Name] = Field(min_length=1)
    since: int = -1
    wait: Annotated[float, Field(ge=0, le=MAX_WAIT)] = 0.0


@method("watch", admin=False, params=WatchParams)
async def watch(ctx: Context, params: WatchParams) -> dict[str, Any]:
    """Progress of the runs of jobs/groups; with ``wait``, answers when something changed (long poll)."""
    engine = _engine(ctx)
    version = engine.version
    if params.since == version and params.wait > 0:
        await engine.wait_changed(params.since, params.wait)
        rows = await engine.status_rows(params.names)
        if all(RunStatus(r["status"]).is_active for r in rows):
            # Coalesce bursts (a run of short steps changes many times a second): progress goes
            # out at most 1/WATCH_COALESCE times a second; a run's end cuts the wait short.
            await engine.wait_ended(WATCH_COALESCE)
        version = engine.version
    return {"version": version, "runs": await engine.status_rows(params.names), "pid": os.getpid()}
