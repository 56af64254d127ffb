"""Job metadata: import, export, rename, group, remove, reset, listall."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from loadmgrd import jobfile
from loadmgrd.errors import Conflict, InvalidInput, JobFileError
from loadmgrd.protocol import JobName, Name, Params
from loadmgrd.rpc import Context, method
from loadmgrd.states import RunStatus


class ImportParams(Params):
    job: JobName
    file_name: str
    content: str | None = None
    content_base64: str | None = None
    group: Name | None = None
    force: bool = False


def decode_job_file(file_name: str, content: str | None, content_base64: str | None) -> str:
    """The job file's text from either form of the params (base64 carries undecodable bytes)."""
    if (content is None) == (content_base64 is None):
        raise InvalidInput("give exactly one of content and content_base64")
    if content is not None:
        return content
    assert content_base64 is not None
    try:
        raw = base64.b64decode(content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("content_base64 is not valid base64") from None
    return jobfile.decode(raw, file_name)


@method("job.import", admin=True, params=ImportParams)
async def job_import(ctx: Context, params: ImportParams) -> dict[str, Any]:
    """Add a job from a job file's content; with ``force`` replace an existing job's steps."""
    text = decode_job_file(params.file_name, params.content, params.content_base64)
    parsed = jobfile.parse(text, params.file_name, ctx.config.jobs.job_file_delimiter)
    limit = ctx.config.jobs.queue_size_limit
    if len(parsed.steps) > limit:
        raise JobFileError(
            params.file_name, None, None, f"{len(parsed.steps)} steps, more than [jobs] queue_size_limit = {limit}"
        )
    outcome = await ctx.repo.import_job(params.job, params.group, params.file_name, parsed.steps, force=params.force)
    warnings = list(parsed.warnings)
    if outcome == "exists":
        warnings.append(f"job {params.job!r} already exists; nothing changed (use --force to replace its steps)")
    return {"job": params.job, "outcome": outcome, "steps": len(parsed.steps), "warnings": warnings}


class ExportParams(Params):
    job: Name
    format: Literal["csv", "json"] = "csv"


@method("job.export", admin=False, params=ExportParams)
async def job_export(ctx: Context, params: ExportParams) -> dict[str, Any]:
    """A job's steps as a job file that re-imports to the same job."""
    job = await ctx.repo.get_job(params.job)
    steps = await ctx.repo.job_steps(job["job_key"])
    delimiter = ctx.config.jobs.job_file_delimiter
    if params.format == "json":
        content = jobfile.to_json(steps)
    else:
        for step in steps:
            for column, value in step.to_dict().items():
                if isinstance(value, str) and ("\n" in value or "\r" in value):
                    raise InvalidInput(
                        f"step {step.job_step} has a line break in {column}, which a CSV job file cannot hold; "
                        "export as JSON (a file name ending in .json)"
                    )
        content = jobfile.to_csv(steps, delimiter, job=params.job)
    return {
        "job": params.job,
        "group": job["job_group"],
        "format": params.format,
        "steps": len(steps),
        "content": content,
    }


class JobParams(Params):
    job: Name


@method("job.view", admin=False, params=JobParams)
async def job_view(ctx: Context, params: JobParams) -> dict[str, Any]:
    """A job's settings and steps."""
    job = await ctx.repo.get_job(params.job)
    steps = await ctx.repo.job_steps(job["job_key"])
    return {**job, "steps": [s.to_dict() for s in steps]}


class RenameParams(Params):
    old: Name
    new: JobName


@method("job.rename", admin=True, params=RenameParams)
async def job_rename(ctx: Context, params: RenameParams) -> dict[str, Any]:
    """Rename a job; refused when the new name is taken."""
    moved = await ctx.repo.rename_job(params.old, params.new)
    if moved:
        _schedules_changed(ctx)
    return {"job": params.new, "old": params.old, "schedules": moved}


class GroupParams(Params):
    job: Name
    group: Name | None


@method("job.group", admin=True, params=GroupParams)
async def job_group(ctx: Context, params: GroupParams) -> dict[str, Any]:
    """Set (or with null, clear) a job's group."""
    await ctx.repo.set_job_group(params.job, params.group)
    return {"job": params.job, "group": params.group}


def _schedules_changed(ctx: Context) -> None:
    scheduler = getattr(ctx.services, "scheduler", None)
    if scheduler is not None:
        scheduler.changed()


def _is_executing(ctx: Context, job_name: str) -> bool:
    engine = getattr(ctx.services, "engine", None)
    return bool(engine is not None and engine.is_executing(job_name))


@method("job.remove", admin=True, params=JobParams)
async def job_remove(ctx: Context, params: JobParams) -> dict[str, Any]:
    """Remove a job with its steps, events, runs and history; refused while it runs."""
    await ctx.repo.get_job(params.job)
    if _is_executing(ctx, params.job):
        raise Conflict(f"job {params.job!r} is running; stop it first (loadmgrctl stop {params.job})")
    removed = await ctx.repo.remove_job(params.job)
    if removed:
        _schedules_changed(ctx)
    return {"job": params.job, "removed": True, "schedules": removed}


@method("job.reset", admin=True, params=JobParams)
async def job_reset(ctx: Context, params: JobParams) -> dict[str, Any]:
    """Set a run left in a running status (after a crash) back to Not Running."""
    job = await ctx.repo.get_job(params.job)
    if _is_executing(ctx, params.job):
        raise Conflict(f"job {params.job!r} is really executing; stop it instead of resetting it")
    run = await ctx.repo.current_run(job["job_key"])
    if run is None:
        return {"job": params.job, "previous_status": None, "status": RunStatus.NOT_RUNNING.value}
    previous = await ctx.repo.reset_run(job["job_key"], f"reset by {ctx.peer.user}")
    return {"job": params.job, "previous_status": previous, "status": RunStatus.NOT_RUNNING.value}


class ListParams(Params):
    status: RunStatus | None = None


@method("listall", admin=False, params=ListParams)
async def listall(ctx: Context, params: ListParams) -> dict[str, Any]:
    """Every job with its group, status, start and end (optionally only one status)."""
    rows = await ctx.repo.list_jobs(params.status.value if params.status else None)
    return {"jobs": rows}
