"""Step functions: what each ``job_step_function`` does. The runner calls them through ``FUNCTIONS``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadmgrd import procgroup
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
    proc = await asyncio.create_subprocess_exec(
        "/bin/bash",
        "-c",
        line,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ctx.env,
        start_new_session=True,
    )
    ctx.process_groups.add(proc.pid)
    if ctx.on_spawn is not None:
        await asyncio.shield(ctx.on_spawn(proc.pid))
    captured = bytearray()
    cut = False

    async def pump(stream: asyncio.StreamReader | None, is_stdout: bool) -> None:
        nonlocal cut
        if stream is None:
            return
        splitter = _LineSplitter()
        level = "INFO" if is_stdout else "STDERR"
        while chunk := await stream.read(READ_CHUNK):
            if is_stdout and ctx.capture:
                room = ctx.capture_limit - len(captured)
                if room > 0:
                    captured.extend(chunk[:room])
                if len(chunk) > room:
                    cut = True
            for text in splitter.feed(chunk):
                ctx.log.write(text, step=ctx.job_step, level=level)
        for text in splitter.close():
            ctx.log.write(text, step=ctx.job_step, level=level)

    pumps = asyncio.gather(pump(proc.stdout, True), pump(proc.stderr, False))
    try:
        code = await proc.wait()
        try:
            await asyncio.wait_for(asyncio.shield(pumps), DRAIN_TIMEOUT)
        except TimeoutError:
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            ctx.log.write(
                f"the step's command exited but background processes (process group {proc.pid}) still hold "
                "its output; they keep running and their further output is not logged",
                step=ctx.job_step,
                level="WARNING",
            )
    except asyncio.CancelledError:
        procgroup.signal_groups([proc.pid], signal.SIGKILL)
        pumps.cancel()
        raise
    finally:
        ctx.process_groups.discard(proc.pid)
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


FUNCTIONS: dict[str, StepFunctionImpl] = {
    StepFunction.RUN_COMMAND.value: run_command,
    StepFunction.CALL_CREATE_EVENT.value: call_create_event,
}

SHELL_FUNCTIONS = frozenset({StepFunction.RUN_COMMAND.value})


def unavailable(name: str) -> StepResult:
    known = {f.value for f in StepFunction}
    if name in known:
        reason = f"step function {name!r} is not available in this loadmgrd version"
    else:
        reason = f"unknown step function {name!r}"
    return StepResult(127, message=reason, forced_failure=True)
