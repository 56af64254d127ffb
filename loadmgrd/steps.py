"""Step functions: what each ``job_step_function`` does. The runner calls them through ``FUNCTIONS``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadmgrd import procgroup
from loadmgrd.childproc import Child
from loadmgrd.filewatch import touch_atomically
from loadmgrd.states import EventAction, StepFunction

if TYPE_CHECKING:
    from loadmgrd.runlog import RunLog

DRAIN_TIMEOUT = 2.0
READ_CHUNK = 65536


@dataclass
class StepResult:
    exit_code: int
    output: str | None = None
    message: str | None = None
    forced_failure: bool = False  # fails the run whatever ignore_error says
    variables_changed: bool = False  # the step set run variables (start_process, stop_process)


@dataclass
class StepContext:
    """Everything a step function may use; built by the runner for one step."""

    job: str
    run_id: str
    job_step: int
    command: str
    args_text: str
    args: dict[str, str]
    env: dict[str, str]
    log: RunLog
    capture: bool
    capture_limit: int
    events: list[dict[str, Any]]
    process_groups: set[int]
    services: Any = None
    notes: list[str] = field(default_factory=list)
    on_spawn: Callable[[int], Awaitable[None]] | None = None
    variables: dict[str, Any] = field(default_factory=dict)  # the run's variables (mutable)

    def expand(self, text: str) -> str:
        return expand_path(text, self.env)


def expand_path(text: str, env: Mapping[str, str]) -> str:
    """``$VAR``/``${VAR}`` and ``~`` from ``env``; unknown variables stay as they are."""

    def replace(match: re.Match[str]) -> str:
        return env.get(match.group(1) or match.group(2), match.group(0))

    expanded = re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", replace, text)
    return os.path.expanduser(expanded)


StepFunctionImpl = Callable[[StepContext], Awaitable[StepResult]]


class _LineSplitter:
    """Bytes in, complete text lines out; a partial last line is kept until more arrives."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]

    def close(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [rest.decode("utf-8", errors="replace").rstrip("\r")] if rest else []


async def run_command(ctx: StepContext) -> StepResult:
    """``command + " " + args`` with bash, in its own session and process group."""
    line = f"{ctx.command} {ctx.args_text}".strip() if ctx.args_text else ctx.command
    child = Child(["/bin/bash", "-c", line], ctx.env)
    ctx.process_groups.add(child.pid)
    captured = bytearray()
    cut = False
    splitters = {"INFO": _LineSplitter(), "STDERR": _LineSplitter()}

    def feed(level: str, chunk: bytes) -> None:
        nonlocal cut
        if level == "INFO" and ctx.capture:
            room = ctx.capture_limit - len(captured)
            if room > 0:
                captured.extend(chunk[:room])
            if len(chunk) > room:
                cut = True
        for text in splitters[level].feed(chunk):
            ctx.log.write(text, step=ctx.job_step, level=level)

    pumps = asyncio.ensure_future(child.stream(lambda b: feed("INFO", b), lambda b: feed("STDERR", b)))
    try:
        if ctx.on_spawn is not None:
            await asyncio.shield(ctx.on_spawn(child.pid))
        code = await child.wait()
        try:
            await asyncio.wait_for(asyncio.shield(pumps), DRAIN_TIMEOUT)
        except TimeoutError:
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            ctx.log.write(
                f"the step's command exited but background processes (process group {child.pid}) still hold "
                "its output; they keep running and their further output is not logged",
                step=ctx.job_step,
                level="WARNING",
            )
    except asyncio.CancelledError:
        procgroup.signal_groups([child.pid], signal.SIGKILL)
        pumps.cancel()
        with contextlib.suppress(Exception):
            child.proc.wait(timeout=5)
        raise
    finally:
        ctx.process_groups.discard(child.pid)
        child.close()
    for level, splitter in splitters.items():
        for text in splitter.close():
            ctx.log.write(text, step=ctx.job_step, level=level)
    message = None
    if code < 0:
        message = f"killed by signal {signal.Signals(-code).name}"
        code = 128 - code
    output = None
    if ctx.capture:
        output = captured.decode("utf-8", errors="replace").strip()
        if cut:
            ctx.log.write(
                f"captured output cut at {ctx.capture_limit} bytes ([jobs] capture_output_limit)",
                step=ctx.job_step,
                level="WARNING",
            )
    return StepResult(code, output, message)


async def call_create_event(ctx: StepContext) -> StepResult:
    """Touch every create-event file of the run (atomically, so a waiting job sees it complete)."""
    failures = []
    created = 0
    for event in ctx.events:
        if event["action_type"] != EventAction.CREATE or event["status"] == "Skipped":
            continue
        path = Path(ctx.expand(event["event_item"]))
        try:
            touch_atomically(path)
        except OSError as exc:
            failures.append(f"{event['event_name']} ({path}): {exc.strerror}")
            ctx.log.write(
                f"create event {event['event_name']}: cannot create {path}: {exc.strerror}",
                step=ctx.job_step,
                level="ERROR",
            )
            continue
        event["status"] = "Created"
        ctx.notes.append(event["event_name"])
        created += 1
        ctx.log.write(f"create event {event['event_name']}: created {path}", step=ctx.job_step)
    if failures:
        return StepResult(1, message="could not create " + "; ".join(failures))
    return StepResult(0, output=str(created))


def _list_arg(value: str) -> list[str]:
    """A list argument: a JSON list, or comma-separated text."""
    text = value.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("expected a list")
        return [str(i).strip() for i in items if str(i).strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


async def send_email(ctx: StepContext) -> StepResult:
    """Mail from a step: command = JSON with recipients and subject; args email_body, attachments, params."""
    from jinja2 import Environment, StrictUndefined, TemplateError

    from loadmgrd import mail
    from loadmgrd.notifier import SendError, send_now, sender

    try:
        spec = json.loads(ctx.command) if ctx.command.strip() else {}
    except json.JSONDecodeError as exc:
        return StepResult(1, message=f"the command must be JSON with recipients and subject: {exc.msg}")
    if not isinstance(spec, dict):
        return StepResult(1, message="the command must be a JSON object with recipients and subject")
    raw_recipients = ctx.args.get("recipients", spec.get("recipients", ""))
    recipients = raw_recipients if isinstance(raw_recipients, list) else _list_arg(str(raw_recipients))
    subject_line = str(ctx.args.get("subject", spec.get("subject", ""))).strip()
    bad = [r for r in recipients if not mail.valid_address(r)]
    if not recipients or bad:
        return StepResult(1, message=f"bad recipients: {', '.join(bad) or 'none given'}")
    if not subject_line:
        return StepResult(1, message="no subject given")

    body = ctx.args.get("email_body", "")
    is_html = body.lstrip().lower().startswith("<html")
    if not is_html and body.strip().lower().endswith((".html", ".htm", ".txt")) and "\n" not in body:
        path = Path(ctx.expand(body.strip()))
        try:
            body = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return StepResult(1, message=f"cannot read email_body file {path}: {exc}")
        is_html = path.suffix.lower() in (".html", ".htm")
    params: dict[str, Any] = {}
    if ctx.args.get("params"):
        try:
            decoded: Any = json.loads(ctx.args["params"])
        except json.JSONDecodeError as exc:
            return StepResult(1, message=f"params is not a JSON object: {exc.msg}")
        if not isinstance(decoded, dict):
            return StepResult(1, message="params must be a JSON object")
        params = decoded
    if params:
        try:
            body = Environment(autoescape=is_html, undefined=StrictUndefined).from_string(body).render(**params)
        except TemplateError as exc:
            return StepResult(1, message=f"email_body template error: {exc}")

    config = ctx.services.config.email
    msg = EmailMessage()
    msg["Subject"] = subject_line
    msg["From"] = sender(config)
    msg["To"] = ", ".join(recipients)
    if is_html:
        msg.set_content("This message is in HTML.\n")
        msg.add_alternative(body, subtype="html")
    else:
        msg.set_content(body or "\n")
    try:
        attachments = _list_arg(ctx.args.get("attachments", ""))
    except (ValueError, json.JSONDecodeError):
        return StepResult(1, message="attachments must be a JSON list or comma-separated paths")
    for item in attachments:
        path = Path(ctx.expand(item))
        if path.is_dir():
            return StepResult(1, message=f"attachment {path} is a directory, not a file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            ctx.log.write(f"attachment {path} does not exist; sent without it", step=ctx.job_step, level="WARNING")
            continue
        except OSError as exc:
            return StepResult(1, message=f"cannot read attachment {path}: {exc.strerror}")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        main_type, sub_type = kind.split("/", 1)
        msg.add_attachment(data, maintype=main_type, subtype=sub_type, filename=path.name)
    try:
        answer = await send_now(config, msg)
    except SendError as exc:
        return StepResult(1, message=f"mail not sent: {exc}")
    ctx.log.write(f"mail {subject_line!r} sent to {', '.join(recipients)}", step=ctx.job_step)
    return StepResult(0, output=answer.strip())


FUNCTIONS: dict[str, StepFunctionImpl] = {
    StepFunction.RUN_COMMAND.value: run_command,
    StepFunction.CALL_CREATE_EVENT.value: call_create_event,
    StepFunction.SEND_EMAIL.value: send_email,
}


def _register_data_steps() -> None:
    from loadmgrd import datasteps

    FUNCTIONS.update(
        {
            StepFunction.START_PROCESS.value: datasteps.start_process,
            StepFunction.STOP_PROCESS.value: datasteps.stop_process,
            StepFunction.LOG_DATA_CURRENCY.value: datasteps.log_data_currency,
            StepFunction.EXECUTE_SQL.value: datasteps.execute_sql,
            StepFunction.FILE_RECORD_COUNT.value: datasteps.file_record_count,
            StepFunction.CREATE_DONE_FILE.value: datasteps.create_done_file,
            StepFunction.HDFS_FILE_STAGE.value: datasteps.hdfs_file_stage,
        }
    )


SHELL_FUNCTIONS = frozenset({StepFunction.RUN_COMMAND.value})


def unavailable(name: str) -> StepResult:
    known = {f.value for f in StepFunction}
    if name in known:
        reason = f"step function {name!r} is not available in this loadmgrd version"
    else:
        reason = f"unknown step function {name!r}"
    return StepResult(127, message=reason, forced_failure=True)
