"""loadmgrctl: every command is one JSON-RPC request to loadmgrd over its Unix socket.

Exit codes: 0 success; 1 the daemon refused or failed the request; 2 bad command line;
4 permission denied (an admin command from a non-admin user); 5 loadmgrd cannot be reached.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from loadmgrctl import output
from loadmgrctl.transport import ClientError, RpcError, call

app = typer.Typer(
    name="loadmgrctl",
    help="Control the Load Manager daemon (loadmgrd).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
job_app = typer.Typer(help="Manage jobs and their steps.", no_args_is_help=True)
event_app = typer.Typer(help="Manage a job's wait and create events.", no_args_is_help=True)
process_app = typer.Typer(help="Manage processes (load windows).", no_args_is_help=True)
currency_app = typer.Typer(help="Manage the data currency of tables.", no_args_is_help=True)
link_app = typer.Typer(help="Link processes to tables' data currency.", no_args_is_help=True)
repo_app = typer.Typer(help="Manage the repository.", no_args_is_help=True)
schedule_app = typer.Typer(help="Start jobs and groups on cron schedules.", no_args_is_help=True)
notify_app = typer.Typer(help="Email notifications.", no_args_is_help=True)
app.add_typer(job_app, name="job")
app.add_typer(event_app, name="event")
app.add_typer(process_app, name="process")
app.add_typer(currency_app, name="currency")
app.add_typer(link_app, name="link")
app.add_typer(repo_app, name="repo")
app.add_typer(schedule_app, name="schedule")
app.add_typer(notify_app, name="notify")


@dataclass
class Settings:
    socket: Path | None
    config: Path | None
    debug: bool

    def socket_path(self) -> Path:
        if self.socket is not None:
            return self.socket
        from loadmgrd.paths import find_config_file, socket_from_config

        return socket_from_config(find_config_file(self.config))


_settings = Settings(None, None, False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.callback()
def _options(
    socket: Annotated[
        str | None,
        typer.Option("--socket", envvar="LOADMGR_SOCKET", help="loadmgrd's socket (default: from the config)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Config file (default: $LOADMGR_CONFIG/loadmgr_config.cfg)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    global _settings
    _settings = Settings(Path(socket) if socket else None, config, debug)


NOTHING_TO_RESUME = 1009  # the daemon's NOT_RUNNING, as a start answers it (docs/protocol.md)


def _fail(message: str, code: int = 1) -> NoReturn:
    output.error(message)
    raise typer.Exit(code)


def rpc(method: str, params: dict[str, Any] | None = None, *, warnings: frozenset[int] = frozenset()) -> Any:
    """Send one request; print the daemon's message and exit non-zero on any error (an error
    whose code is in ``warnings`` is printed as a warning, with the same exit code)."""
    settings = _settings
    try:
        return call(settings.socket_path(), method, params)
    except ClientError as exc:
        if settings.debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, RpcError) and exc.code in warnings:
            output.warn(str(exc))
            raise typer.Exit(exc.exit_code) from None
        _fail(str(exc), exc.exit_code)


def _warnings(result: dict[str, Any]) -> None:
    for message in result.get("warnings", []):
        output.warn(message)


# ---------------------------------------------------------------------------- top level


@app.command()
def ping(as_json: JsonOpt = False) -> None:
    """Check that loadmgrd answers; show its version and schema version."""
    result = rpc("ping")
    if as_json:
        output.print_json(result)
        return
    role = "admin" if result["peer"]["admin"] else "read-only"
    maintenance = ", maintenance mode ON" if result["maintenance_mode"] else ""
    output.info(
        f"loadmgrd {result['version']} (pid {result['pid']}), schema version {result['schema_version']}"
        f"{maintenance}; you are {result['peer']['user']} ({role})"
    )


class RunStatusChoice(StrEnum):
    not_running = "Not Running"
    ready = "Ready"
    waiting = "Waiting"
    running = "Running"
    pausing = "Pausing In Progress"
    paused = "Paused"
    stopping = "Stopping In Progress"
    stopped = "Stopped"
    completed = "Completed"
    failed = "Failed"


@app.command()
def listall(
    status: Annotated[
        RunStatusChoice | None, typer.Option("--status", help="Only jobs in this status.", case_sensitive=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every job: name, group, status, start, end."""
    result = rpc("listall", {"status": status.value} if status else {})
    if as_json:
        output.print_json(result["jobs"])
        return
    output.print_table(
        ["Job", "Group", "Status", "Start", "End"],
        (
            [
                j["job_name"],
                j["job_group"],
                j["status"],
                output.local_time(j["start_ts"]),
                output.local_time(j["end_ts"]),
            ]
            for j in result["jobs"]
        ),
    )


# ---------------------------------------------------------------------------- runs

FINISHED = ("Completed", "Failed", "Stopped", "Not Running")


@app.command()
def start(
    name: Annotated[str, typer.Argument(help="A job, or a job group (every job of it starts).")],
    step: Annotated[str | None, typer.Option("-s", "--step", help="Steps to run: N, N-M, N- or -M.")] = None,
    job_file: Annotated[
        Path | None, typer.Option("-j", "--job-file", help="Run these steps once instead of the job's own.")
    ] = None,
    resume: Annotated[bool, typer.Option("-r", "--resume", help="Continue a Stopped or Failed run.")] = False,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", help="Skip an event by name, or wait, create or all (repeatable).")
    ] = None,
    tempargs: Annotated[
        list[str] | None, typer.Option("--tempargs", help="key:value step-argument overrides for this run.")
    ] = None,
    no_success_email: Annotated[bool, typer.Option("--no-success-email", help="No success mail for this run.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the steps, events and skips; start nothing.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Block until the run(s) end; exit 0/1/3 (2: part of a group refused).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a job or a job group (a Paused job is resumed)."""
    params: dict[str, Any] = {
        "name": name,
        "resume": resume,
        "skip": skip or [],
        "tempargs": tempargs or [],
        "no_success_email": no_success_email,
        "dry_run": dry_run,
    }
    if step is not None:
        params["step_range"] = step
    if job_file is not None:
        try:
            data = job_file.read_bytes()
        except OSError as exc:
            _fail(f"cannot read {job_file}: {exc.strerror}")
        params["job_file_name"] = str(job_file)
        params["job_file_content_base64"] = base64.b64encode(data).decode("ascii")
    # Nothing left to resume is a warning, not a fault (SPEC §5): there is simply nothing to run.
    result = rpc("start", params, warnings=frozenset({NOTHING_TO_RESUME}))
    waiting = wait and not dry_run
    if as_json and not waiting:
        output.print_json(result)
    if dry_run:
        if not as_json:
            _print_plans(result["results"])
        return
    started = [r for r in result["results"] if r["started"]]
    if not as_json:
        for r in result["results"]:
            if r["started"]:
                output.info(f"job {r['job']} {r['action']}: run {r['run_id']}, log {r['log_file']}")
            else:
                output.error(f"job {r['job']} not started: {r['message']}")
            for message in r.get("warnings", []):
                output.warn(message)
    if not started:
        if as_json and waiting:
            output.print_json(result)
        raise typer.Exit(1)
    some_refused = len(started) < len(result["results"])
    if waiting:
        run_ids = {r["job"]: r["run_id"] for r in started}
        code = _wait_for(run_ids, json_results=result["results"] if as_json else None)
        # A failure or a stop says more than a refusal; a refusal is not "all completed".
        raise typer.Exit(code if code or not some_refused else 2)
    if some_refused:
        raise typer.Exit(2)


def _print_plans(results: list[dict[str, Any]]) -> None:
    for plan in results:
        if plan.get("action") != "dry-run":
            output.error(f"job {plan['job']}: {plan.get('message')}")
            continue
        title = f"{plan['job']}: would run" + (f" (resuming run {plan['resume_of']})" if plan["resume_of"] else "")
        output.print_table(
            ["Step", "Description", "Function", "Command", "Args", "Ignore err", "Plan"],
            (
                [
                    s["job_step"],
                    s["description"],
                    s["function"],
                    s["command"],
                    s["args"],
                    s["ignore_error"],
                    "run" if s["status"] == "Pending" else f"done ({s['status']})",
                ]
                for s in plan["steps"]
            ),
            title=title,
        )
        if plan["events"]:
            output.print_table(
                ["Event", "Action", "Item", "Plan"],
                (
                    [
                        e["event_name"],
                        e["action_type"],
                        e["event_item"],
                        "skip" if e["status"] == "Skipped" else e["action_type"],
                    ]
                    for e in plan["events"]
                ),
            )
        if plan["temp_args"]:
            output.info("temp args: " + ", ".join(f"{k}={v}" for k, v in plan["temp_args"].items()))


def _wait_for(run_ids: dict[str, str], *, json_results: list[Any] | None = None) -> int:
    """Follow the runs (job → run id) until each has ended; 0 all completed, 1 any failed, 3 any stopped.
    With ``json_results`` (start's answer) print ``{"results", "runs"}`` (the runs as they
    ended) as one JSON object instead of a line per run."""
    from loadmgrctl.transport import Connection

    tty = sys.stderr.isatty()
    since = -1
    settings = _settings
    try:
        with Connection(settings.socket_path()) as conn:
            while True:
                reply = conn.call("watch", {"names": list(run_ids), "since": since, "wait": 1.0 if tty else 10.0})
                since = reply["version"]
                runs = [r for r in reply["runs"] if run_ids.get(r["job"]) in (r["run_id"], None)]
                if tty:
                    sys.stderr.write("\r\033[K" + "; ".join(_progress(r) for r in runs))
                    sys.stderr.flush()
                if all(r["status"] in FINISHED or r["run_id"] != run_ids[r["job"]] for r in runs):
                    break
    except ClientError as exc:
        _fail(str(exc), exc.exit_code)
    if tty:
        sys.stderr.write("\n")
    statuses = [r["status"] for r in runs]
    if json_results is not None:
        output.print_json({"results": json_results, "runs": runs})
    else:
        for r in runs:
            output.info(
                f"job {r['job']} run {r['run_id']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else "")
            )
    if "Failed" in statuses:
        return 1
    if "Stopped" in statuses:
        return 3
    return 0


def _progress(run: dict[str, Any]) -> str:
    if "steps_total" not in run:
        return f"{run['job']}: {run['status']}"
    running = ",".join(str(n) for n in run["running_steps"]) or "-"
    minutes, seconds = divmod(int(run["elapsed"]), 60)
    return (
        f"{run['job']}: {run['status']} {run['steps_done']}/{run['steps_total']} steps, "
        f"step {running}, {minutes:02d}:{seconds:02d}"
    )


def _control_results(verb: str, result: dict[str, Any]) -> None:
    if not result["results"]:  # ALL with nothing in progress: nothing to do, and no error
        output.info(f"{result['name']}: no run in progress")
    for r in result["results"]:
        output.info(f"job {r['job']}: {verb} ({r['status']})")


@app.command()
def stop(
    name: Annotated[str, typer.Argument(help="A job, a job group, or ALL.")],
    now: Annotated[bool, typer.Option("--now", help="Also terminate the running step(s).")] = False,
) -> None:
    """Stop runs before their next step (--now: terminate the running step too)."""
    _control_results("stop requested", rpc("stop", {"name": name, "now": now}))


@app.command()
def pause(name: Annotated[str, typer.Argument(help="A job, a job group, or ALL.")]) -> None:
    """Pause runs before their next step."""
    _control_results("pause requested", rpc("pause", {"name": name}))


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="A job or a job group.")],
    tempargs: Annotated[list[str] | None, typer.Option("--tempargs", help="key:value overrides.")] = None,
) -> None:
    """Continue a Paused run (a Stopped or Failed one resumes like start --resume)."""
    result = rpc("resume", {"name": name, "tempargs": tempargs or []})
    failed = 0
    for r in result["results"]:
        if r["started"]:
            output.info(f"job {r['job']} resumed: run {r['run_id']}")
        else:
            failed += 1
            output.error(f"job {r['job']} not resumed: {r['message']}")
    if failed:
        raise typer.Exit(1 if failed == len(result["results"]) else 2)


@app.command()
def status(job: Annotated[str, typer.Argument(help="Job name.")], as_json: JsonOpt = False) -> None:
    """The job's current run: status, steps, current step, log file."""
    result = rpc("status", {"job": job})
    if as_json:
        output.print_json(result)
        return
    run = result["run"]
    if run is None:
        output.info(f"job {job}: Not Running (no run yet)")
        return
    output.print_fields(
        {
            "job": job,
            "status": run["status"]
            + (" (queued: waiting for a free slot, [daemon] max_concurrent_jobs)" if run.get("queued") else "")
            + (f" — {run['status_reason']}" if run.get("status_reason") else ""),
            "run id": run["run_id"],
            "steps": f"{run['start_step']}–{run['end_step']}",
            "running steps": ", ".join(str(n) for n in run["running_steps"]) or "none",
            "last completed step": run["last_completed_step"],
            "start": output.local_time(run["start_ts"]),
            "end": output.local_time(run["end_ts"]),
            "duration (s)": run["duration"],
            "log file": run["log_file"],
        }
    )
    _steps_table(run["steps"])


def _steps_table(steps: list[dict[str, Any]], title: str | None = None) -> None:
    output.print_table(
        ["Step", "Description", "Function", "Status", "Start", "End", "Duration (s)", "Exit"],
        (
            [
                s["job_step"],
                s["job_step_description"],
                s["job_step_function"],
                s["status"],
                output.local_time(s["start_ts"]),
                output.local_time(s["end_ts"]),
                s.get("elapsed") if s["status"] == "Running" else s["duration"],
                s["exit_code"],
            ]
            for s in steps
        ),
        title=title,
    )


@app.command()
def history(
    job: Annotated[str, typer.Argument(help="Job name.")],
    count: Annotated[int, typer.Option("-n", help="How many runs, newest first.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Past runs of a job with their steps and events."""
    result = rpc("history", {"job": job, "limit": count})
    if as_json:
        output.print_json(result)  # {"job", "runs", "process_log"}, as the protocol answers
        return
    if result["process_log"]:
        output.print_table(
            ["Process", "Batch", "Run id", "Strategy", "Window start", "Window end", "Status", "Rows", "Duration (s)"],
            (
                [
                    p["process_name"],
                    p["batch_nbr"],
                    p["run_id"],
                    p["load_strategy"],
                    p["currency_start_dttm"],
                    p["currency_end_dttm"],
                    p["status"],
                    p["row_count"],
                    p["duration"],
                ]
                for p in result["process_log"]
            ),
            title=f"Process log of {job}",
        )
    if not result["runs"]:
        output.info(f"job {job} has no finished runs")
    for run in result["runs"]:
        reason = f" — {run['status_reason']}" if run.get("status_reason") else ""
        title = (
            f"run {run['run_id']}: {run['status']}{reason}; {output.local_time(run['start_ts'])} → "
            f"{output.local_time(run['end_ts'])} ({run['duration'] or 0:.1f} s)"
        )
        _steps_table(run["steps"], title)
        if run["events"]:
            output.info(
                "events: " + ", ".join(f"{e['event_name']} ({e['action_type']}: {e['status']})" for e in run["events"])
            )


@app.command()
def logs(
    job: Annotated[str, typer.Argument(help="Job name.")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Follow the log until the run ends.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: one object, or with -f one object per line as text arrives.")
    ] = False,
) -> None:
    """Print the current run's log (-f follows it live until the run ends)."""
    import json

    from loadmgrctl.transport import Connection

    offset = 0
    collected: list[str] = []
    reply: dict[str, Any] = {}
    try:
        with Connection(_settings.socket_path()) as conn:
            while True:
                reply = conn.call("logs", {"job": job, "offset": offset, "wait": 10.0 if follow else 0.0})
                if reply["content"]:
                    if as_json and follow:
                        sys.stdout.write(json.dumps(reply) + "\n")
                    elif as_json:
                        collected.append(reply["content"])
                    else:
                        sys.stdout.write(reply["content"])
                    sys.stdout.flush()
                offset = reply["offset"]
                if not reply["content"] and (not follow or not reply["active"]):
                    break
    except ClientError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json and not follow:
        output.print_json({**reply, "content": "".join(collected), "offset": offset})


# ---------------------------------------------------------------------------- jobs


@job_app.command("import")
def job_import(
    job: Annotated[str, typer.Argument(help="Job name.")],
    job_file: Annotated[Path, typer.Argument(help="Job file (CSV, or JSON with a steps list).")],
    force: Annotated[bool, typer.Option("-f", "--force", help="Replace the steps of an existing job.")] = False,
    group: Annotated[str | None, typer.Option("-g", "--group", help="Job group.")] = None,
) -> None:
    """Add a job from a job file (with --force, replace an existing job's steps)."""
    try:
        data = job_file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {job_file}: {exc.strerror}")
    params: dict[str, Any] = {
        "job": job,
        "file_name": str(job_file),
        "content_base64": base64.b64encode(data).decode("ascii"),
        "force": force,
    }
    if group is not None:
        params["group"] = group
    result = rpc("job.import", params)
    _warnings(result)
    if result["outcome"] == "created":
        output.info(f"job {job} imported with {result['steps']} steps")
    elif result["outcome"] == "replaced":
        output.info(f"job {job} replaced with {result['steps']} steps")


@job_app.command("export")
def job_export(
    job: Annotated[str, typer.Argument(help="Job name.")],
    job_file: Annotated[str, typer.Argument(help="File to write ('-' for standard output).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the file name, else csv).")
    ] = None,
) -> None:
    """Write a job's steps to a job file that re-imports to the same job."""
    chosen = fmt or ("json" if job_file.lower().endswith(".json") else "csv")
    if chosen not in ("csv", "json"):
        _fail(f"--format must be csv or json, not {chosen!r}", 2)
    result = rpc("job.export", {"job": job, "format": chosen})
    if job_file == "-":
        sys.stdout.write(result["content"])
        return
    try:
        Path(job_file).write_text(result["content"], encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {job_file}: {exc.strerror}")
    output.info(f"job {job} exported to {job_file} ({result['steps']} steps)")


@job_app.command("view")
def job_view(job: Annotated[str, typer.Argument(help="Job name.")], as_json: JsonOpt = False) -> None:
    """A job's group, file and steps."""
    result = rpc("job.view", {"job": job})
    if as_json:
        output.print_json(result)
        return
    output.print_fields({"job": result["job_name"], "group": result["job_group"], "file": result["job_file"]})
    output.print_table(
        ["Step", "Description", "Function", "Command", "Args", "Ignore err", "Capture", "Waits for"],
        (
            [
                s["job_step"],
                s["job_step_description"],
                s["job_step_function"],
                s["job_step_command"],
                s["job_step_args"],
                s["job_step_ignore_error"],
                s["job_step_capture_output"],
                ", ".join(str(n) for n in (s["job_step_wait_step"], s["job_step_alt_wait_step"]) if n),
            ]
            for s in result["steps"]
        ),
    )


@job_app.command("rename")
def job_rename(old: str, new: str) -> None:
    """Rename a job (its schedules follow it)."""
    result = rpc("job.rename", {"old": old, "new": new})
    moved = result.get("schedules", 0)
    output.info(f"job {old} renamed to {new}" + (f" (with its {_schedules(moved)})" if moved else ""))


@job_app.command("group")
def job_group(job: str, group: Annotated[str, typer.Argument(help="New group ('' to clear it).")]) -> None:
    """Set a job's group."""
    rpc("job.group", {"job": job, "group": group or None})
    output.info(f"job {job} is now in group {group}" if group else f"job {job} is now in no group")


@job_app.command("remove")
def job_remove(
    job: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False
) -> None:
    """Remove a job with its steps, events, runs and history."""
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"removing job {job} needs confirmation; pass --yes to confirm without a terminal")
        if not typer.confirm(f"Remove job {job} with its steps, events, runs and history?"):
            _fail("not removed", 1)
    result = rpc("job.remove", {"job": job})
    removed = result.get("schedules", 0)
    output.info(f"job {job} removed" + (f" (with its {_schedules(removed)})" if removed else ""))


def _schedules(count: int) -> str:
    return f"{count} schedule" + ("" if count == 1 else "s")


@job_app.command("reset")
def job_reset(job: str) -> None:
    """Set a run left in a running status after a crash back to Not Running."""
    result = rpc("job.reset", {"job": job})
    previous = result["previous_status"]
    output.info(f"job {job}: {previous or 'no run'} -> {result['status']}")


# ---------------------------------------------------------------------------- events


class EventAction(StrEnum):
    wait = "wait"
    create = "create"


class EventType(StrEnum):
    file = "file"
    other = "other"


@event_app.command("add")
def event_add(
    job: str,
    event: str,
    item: Annotated[str, typer.Argument(help="The file path ($VARS are expanded at run time).")],
    action: Annotated[EventAction, typer.Option("-a", "--action", help="wait or create.")] = EventAction.wait,
    event_type: Annotated[EventType, typer.Option("-t", "--type", help="file (other is reserved).")] = EventType.file,
) -> None:
    """Add a wait or create event to a job."""
    rpc("event.add", {"job": job, "event": event, "item": item, "action": action.value, "type": event_type.value})
    output.info(f"{action.value} event {event} added to job {job}")


def _event_change(method: str, verb: str, job: str, events: list[str]) -> None:
    rpc(method, {"job": job, "events": events})
    output.info(f"job {job}: {verb} {', '.join(events)}")


@event_app.command("enable")
def event_enable(job: str, events: Annotated[list[str], typer.Argument(help="Event names.")]) -> None:
    """Enable events of a job."""
    _event_change("event.enable", "enabled", job, events)


@event_app.command("disable")
def event_disable(job: str, events: Annotated[list[str], typer.Argument(help="Event names.")]) -> None:
    """Disable events of a job."""
    _event_change("event.disable", "disabled", job, events)


@event_app.command("remove")
def event_remove(job: str, events: Annotated[list[str], typer.Argument(help="Event names.")]) -> None:
    """Remove events of a job."""
    _event_change("event.remove", "removed", job, events)


@event_app.command("rename")
def event_rename(job: str, old: str, new: str) -> None:
    """Rename an event of a job."""
    rpc("event.rename", {"job": job, "old": old, "new": new})
    output.info(f"job {job}: event {old} renamed to {new}")


@event_app.command("view")
def event_view(job: str, as_json: JsonOpt = False) -> None:
    """Every event of a job."""
    result = rpc("event.view", {"job": job})
    if as_json:
        output.print_json(result["events"])
        return
    output.print_table(
        ["Event", "Action", "Type", "Item", "Enabled"],
        ([e["event_name"], e["action_type"], e["event_type"], e["event_item"], e["enabled"]] for e in result["events"]),
        title=f"Events of {job}",
    )


# ---------------------------------------------------------------------------- processes


class ProcessType(StrEnum):
    ingestion = "ingestion"
    consumption = "consumption"


class RowCountType(StrEnum):
    batch = "Batch"
    temp_table = "Temp Table"


ProcessTypeOpt = Annotated[ProcessType | None, typer.Option("--process_type", "--process-type")]
SubjectAreaOpt = Annotated[str | None, typer.Option("--subject_area", "--subject-area")]
RowCountTypeOpt = Annotated[RowCountType | None, typer.Option("--row_count_type", "--row-count-type")]
RowCountPropertyOpt = Annotated[
    str | None, typer.Option("--row_count_property", "--row-count-property", help="Table used for counting rows.")
]
DateFlagOpt = Annotated[
    bool | None,
    typer.Option(
        "--currency_date_flag/--no_currency_date_flag",
        "--currency-date-flag/--no-currency-date-flag",
        help="Windows are dates only (no time).",
    ),
]
StartOffsetOpt = Annotated[int | None, typer.Option("--currency_start_offset", "--currency-start-offset", help="Days.")]
EndOffsetOpt = Annotated[int | None, typer.Option("--currency_end_offset", "--currency-end-offset", help="Days.")]


def _process_command(method: str, doc: str) -> Any:
    """``process add`` and ``process update`` take the same options; only the method differs."""

    def command(
        name: str,
        process_type: ProcessTypeOpt = None,
        subject_area: SubjectAreaOpt = None,
        row_count_type: RowCountTypeOpt = None,
        row_count_property: RowCountPropertyOpt = None,
        currency_date_flag: DateFlagOpt = None,
        currency_start_offset: StartOffsetOpt = None,
        currency_end_offset: EndOffsetOpt = None,
    ) -> None:
        given = {
            "process_type": process_type.value if process_type else None,
            "subject_area": subject_area,
            "row_count_type": row_count_type.value if row_count_type else None,
            "row_count_property": row_count_property,
            "currency_date_flag": currency_date_flag,
            "currency_start_offset": currency_start_offset,
            "currency_end_offset": currency_end_offset,
        }
        result = rpc(method, {"name": name, **{k: v for k, v in given.items() if v is not None}})
        if result["outcome"] == "created":
            output.info(f"process {name} added")
        elif method == "process.add":
            output.info(f"process {name} already existed: updated")
        else:
            output.info(f"process {name} updated")

    command.__doc__ = doc
    return command


process_app.command("add")(
    _process_command("process.add", "Add a process (on an existing one, update the given settings).")
)
process_app.command("update")(_process_command("process.update", "Change only the given settings of a process."))


@process_app.command("remove")
def process_remove(name: str) -> None:
    """Remove a process with its log (unlink its tables first)."""
    rpc("process.remove", {"name": name})
    output.info(f"process {name} removed")


@process_app.command("rename")
def process_rename(old: str, new: str) -> None:
    """Rename a process."""
    rpc("process.rename", {"old": old, "new": new})
    output.info(f"process {old} renamed to {new}")


@process_app.command("view")
def process_view(name: str, as_json: JsonOpt = False) -> None:
    """A process's settings, latest window, status, batch and linked tables."""
    result = rpc("process.view", {"name": name})
    if as_json:
        output.print_json(result)
        return
    process = result["process"]
    latest = result["latest_log"] or {}
    output.print_fields(
        {
            "process": process["process_name"],
            "type": process["process_type"],
            "subject area": process["subject_area"],
            "row count type": process["row_count_type"],
            "row count property": process["row_count_property"],
            "currency date flag": process["currency_date_flag"],
            "start offset (days)": process["currency_start_offset"],
            "end offset (days)": process["currency_end_offset"],
            "linked tables": ", ".join(result["linked_tables"]),
            "latest window": f"{latest['currency_start_dttm']} → {latest['currency_end_dttm']}" if latest else "",
            "latest status": latest.get("status"),
            "latest batch": latest.get("batch_nbr"),
            "latest rows": latest.get("row_count"),
        }
    )


# ---------------------------------------------------------------------------- data currency


@currency_app.command("configure")
def currency_configure(
    schema: str,
    table: str,
    column: Annotated[str, typer.Argument(help="The table's date column.")],
    subject_area: SubjectAreaOpt = None,
    currency_date_offset: Annotated[
        bool, typer.Option("--currency_date_offset", "--currency-date-offset", help="Currency date = datetime − 1 day.")
    ] = False,
    currency_dttm_query: Annotated[
        str | None, typer.Option("--currency_dttm_query", "--currency-dttm-query", help="SQL that returns the date.")
    ] = None,
) -> None:
    """Configure the data currency of a table."""
    params: dict[str, Any] = {
        "schema": schema,
        "table": table,
        "column": column,
        "currency_date_offset": currency_date_offset,
    }
    if subject_area is not None:
        params["subject_area"] = subject_area
    if currency_dttm_query is not None:
        params["currency_dttm_query"] = currency_dttm_query
    result = rpc("currency.configure", params)
    output.info(f"data currency for {schema}.{table} {result['outcome']}")


@currency_app.command("remove")
def currency_remove(schema: str, table: str) -> None:
    """Remove a table's data currency with its log."""
    rpc("currency.remove", {"schema": schema, "table": table})
    output.info(f"data currency for {schema}.{table} removed")


@currency_app.command("rename")
def currency_rename(old_schema: str, old_table: str, new_schema: str, new_table: str) -> None:
    """Rename the table a data currency entry belongs to."""
    rpc(
        "currency.rename",
        {"old_schema": old_schema, "old_table": old_table, "new_schema": new_schema, "new_table": new_table},
    )
    output.info(f"data currency {old_schema}.{old_table} renamed to {new_schema}.{new_table}")


@currency_app.command("view")
def currency_view(schema: str, table: str, as_json: JsonOpt = False) -> None:
    """A table's currency settings and current currency date and datetime."""
    result = rpc("currency.view", {"schema": schema, "table": table})
    if as_json:
        output.print_json(result)
        return
    currency = result["currency"]
    output.print_fields(
        {
            "table": f"{currency['table_schema']}.{currency['table_name']}",
            "subject area": currency["subject_area"],
            "date column": currency["date_column"],
            "query override": currency["currency_dttm_query"],
            "date offset": currency["currency_date_offset"],
            "active": currency["active"],
            "current currency datetime": result["current_currency_dttm"],
            "current currency date": result["current_currency_date"],
            "linked processes": ", ".join(result["linked_processes"]),
        }
    )


# ---------------------------------------------------------------------------- links


@link_app.command("create")
def link_create(process: str, schema: str, table: str) -> None:
    """Link a process to a table's data currency."""
    rpc("link.create", {"process": process, "schema": schema, "table": table})
    output.info(f"process {process} linked to {schema}.{table}")


@link_app.command("remove")
def link_remove(process: str, schema: str, table: str) -> None:
    """Remove a process↔table link."""
    rpc("link.remove", {"process": process, "schema": schema, "table": table})
    output.info(f"process {process} unlinked from {schema}.{table}")


# ---------------------------------------------------------------------------- schedules


@schedule_app.command("add")
def schedule_add(
    name: Annotated[str, typer.Argument(help="A job or a job group.")],
    cron: Annotated[str, typer.Argument(help="5 cron fields, or 6 with seconds first; quote it.")],
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA timezone of the fields (default: the host's).")
    ] = None,
) -> None:
    """Start NAME whenever CRON fires."""
    params: dict[str, Any] = {"name": name, "cron": cron}
    if timezone:
        params["timezone"] = timezone
    result = rpc("schedule.add", params)
    next_fire = output.local_time(result["next_fire_ts"], zone=True)
    output.info(f"{name} scheduled '{result['cron']}'; next fire {next_fire}")


@schedule_app.command("remove")
def schedule_remove(
    name: str, cron: Annotated[str | None, typer.Argument(help="Only this schedule (default: all).")] = None
) -> None:
    """Remove NAME's schedules (or only CRON)."""
    params: dict[str, Any] = {"name": name}
    if cron:
        params["cron"] = cron
    result = rpc("schedule.remove", params)
    output.info(f"{name}: {result['removed']} schedule(s) removed")


@schedule_app.command("enable")
def schedule_enable(name: str) -> None:
    """Enable NAME's schedules."""
    result = rpc("schedule.enable", {"name": name})
    output.info(f"{name}: {result['schedules']} schedule(s) enabled")


@schedule_app.command("disable")
def schedule_disable(name: str) -> None:
    """Disable NAME's schedules (kept, but not fired)."""
    result = rpc("schedule.disable", {"name": name})
    output.info(f"{name}: {result['schedules']} schedule(s) disabled")


@schedule_app.command("list")
def schedule_list(as_json: JsonOpt = False) -> None:
    """Every schedule with its next fire time."""
    result = rpc("schedule.list")
    if as_json:
        output.print_json(result["schedules"])
        return
    output.print_table(
        ["Name", "Cron", "Timezone", "Enabled", "Last fire", "Next fire"],
        (
            [
                s["target_name"],
                s["cron"],
                s["timezone"] or "local",
                s["enabled"],
                output.local_time(s["last_fire_ts"], zone=True),
                output.local_time(s["next_fire_ts"], zone=True),
            ]
            for s in result["schedules"]
        ),
    )


# ---------------------------------------------------------------------------- notifications


@notify_app.command("test")
def notify_test(as_json: JsonOpt = False) -> None:
    """Send a test mail to the success and failure lists; show the server's answer."""
    result = rpc("notify.test")
    if as_json:
        output.print_json(result)
    elif not result["results"]:
        output.warn("[email] success_list and failure_list are both empty: nothing sent")
    for item in [] if as_json else result["results"]:
        to = ", ".join(item["recipients"])
        if item["sent"]:
            output.info(f"{item['list']} ({to}): sent via {result['server']}: {item['answer']}")
        else:
            output.error(f"{item['list']} ({to}): not sent: {item['error']}")
    if any(not item["sent"] for item in result["results"]):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- repository


@repo_app.command("create")
def repo_create() -> None:
    """Create the repository or bring it up to date (running it again changes nothing)."""
    result = rpc("repo.create")
    applied = result["migrations_applied"]
    detail = f"applied {', '.join(applied)}" if applied else "already up to date"
    output.info(f"repository {result['database']} at schema version {result['schema_version']}: {detail}")


@repo_app.command("maintenance")
def repo_maintenance(
    on: Annotated[bool | None, typer.Option("--on/--off", help="Set instead of toggling.")] = None,
) -> None:
    """Toggle maintenance mode (no run may start while it is on)."""
    result = rpc("repo.maintenance", {} if on is None else {"enabled": on})
    output.info(f"maintenance mode is {'ON' if result['maintenance_mode'] else 'OFF'}")


@repo_app.command("backup")
def repo_backup(
    path: Annotated[Path, typer.Argument(help="Where the daemon writes the copy (on its host).")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace an existing file.")] = False,
) -> None:
    """Copy the repository online (jobs may run), consistently, and check the copy."""
    result = rpc("repo.backup", {"path": str(path.absolute()), "force": force})
    output.info(f"repository copied to {result['path']} ({result['bytes']} bytes, integrity check ok)")


@repo_app.command("check")
def repo_check(as_json: JsonOpt = False) -> None:
    """Run SQLite's integrity and foreign-key checks on the repository."""
    result = rpc("repo.check")
    if as_json:
        output.print_json(result)
    elif result["ok"]:
        output.info("repository integrity check: ok")
    else:
        for problem in [*result["integrity_check"], *result["foreign_key_check"]]:
            output.error(problem)
    if not result["ok"]:
        raise typer.Exit(1)


@repo_app.command("info")
def repo_info(as_json: JsonOpt = False) -> None:
    """Repository file, schema version and maintenance mode."""
    result = rpc("repo.info")
    if as_json:
        output.print_json(result)
        return
    output.print_fields(
        {
            "database": result["database"],
            "schema version": result["schema_version"],
            "maintenance mode": result["maintenance_mode"],
            "created": output.local_time(result["created_ts"]),
        }
    )


# Options that take the next word as their value (the ones ``_expand_argv`` must step over).
_VALUE_OPTIONS = frozenset({"--socket", "--config", "-s", "--step", "-j", "--job-file"})


def _expand_argv(argv: list[str]) -> list[str]:
    """``--tempargs a:1 b:2`` → repeated options; a bare ``--skip`` means ``--skip all``.

    ``--skip`` is bare when nothing follows it, an option follows it, or the word after it is
    the last one and no NAME came before (``start --skip JOB``); otherwise that word is its
    value (``start JOB --skip wait``)."""
    out: list[str] = []
    positionals = 0
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + argv[i:]
        if token in _VALUE_OPTIONS:
            out += argv[i : i + 2]
            i += 2
            continue
        if token == "--tempargs":
            i += 1
            values = []
            while i < len(argv) and ":" in argv[i] and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            if not values and i < len(argv):
                values.append(argv[i])  # let the daemon say what is wrong with it
                i += 1
            for value in values:
                out += ["--tempargs", value]
            continue
        if token == "--skip":
            following = argv[i + 1] if i + 1 < len(argv) else None
            name_follows = i + 1 == len(argv) - 1 and positionals < 2  # the command, then NAME
            if following is None or following.startswith("-") or name_follows:
                out += ["--skip", "all"]
                i += 1
                continue
            out += ["--skip", following]
            i += 2
            continue
        if not token.startswith("-"):
            positionals += 1
        out.append(token)
        i += 1
    return out


def _lean_app(argv: list[str]) -> typer.Typer:
    """Only the command at hand: typer builds every registered command before parsing, which
    for the whole tree costs more than the request itself. Help and errors use the full tree."""
    first = None
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--socket", "--config"):
            skip = True
        elif not token.startswith("-"):
            first = token
            break
    groups = [g for g in app.registered_groups if g.name == first]
    commands = [c for c in app.registered_commands if c.callback is not None and first in (c.name, c.callback.__name__)]
    if not groups and not commands:
        return app
    lean = typer.Typer(
        name=app.info.name,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    lean.registered_callback = app.registered_callback
    lean.registered_groups = groups
    lean.registered_commands = commands
    return lean


def main() -> int:
    try:
        argv = _expand_argv(sys.argv[1:])
        _lean_app(argv)(args=argv, prog_name="loadmgrctl")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
