"""Step arguments: a JSON object, or ``key=value`` pairs split the way a shell would. Pure."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass

from loadmgrd.errors import InvalidInput


def parse_args(text: str) -> dict[str, str]:
    """Parse ``job_step_args``. Values become strings (JSON scalars) or JSON text (objects/lists)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("["):
        raise InvalidInput("step args in JSON must be an object, not a list")
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"step args are not valid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(value, dict):
            raise InvalidInput("step args in JSON must be an object")
        return {str(k): _as_text(v) for k, v in value.items()}
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise InvalidInput(f"step args cannot be split: {exc}") from None
    args: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidInput(f"step arg {word!r} is not in key=value form")
        args[key] = value
    return args


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def parse_tempargs(items: list[str]) -> dict[str, str]:
    """``--tempargs key:value ...``: every item must have a non-empty key before the first colon."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise InvalidInput(f"temp arg {item!r} is not in key:value form")
        result[key.strip()] = value
    return result


CONTROL_ARGS = frozenset({"timeout", "retries", "retry_delay"})


@dataclass(frozen=True)
class StepControl:
    """How loadmgr runs a step (never passed to the step's command)."""

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0


def step_control(args: dict[str, str]) -> StepControl:
    """``timeout=SECONDS`` (> 0), ``retries=N`` (≥ 0), ``retry_delay=SECONDS`` (≥ 0) from step args."""
    timeout = None
    if "timeout" in args:
        timeout = _number(args["timeout"], "timeout")
        if timeout <= 0:
            raise InvalidInput(f"timeout={args['timeout']}: must be a number of seconds above 0")
    retries = 0
    if "retries" in args:
        text = args["retries"].strip()
        if not text.isdigit() or not text.isascii():
            raise InvalidInput(f"retries={args['retries']}: must be a whole number (0 or more)")
        retries = int(text)
        if retries > 100:
            raise InvalidInput(f"retries={retries}: at most 100")
    delay = 0.0
    if "retry_delay" in args:
        delay = _number(args["retry_delay"], "retry_delay")
        if delay < 0:
            raise InvalidInput(f"retry_delay={args['retry_delay']}: must be 0 or more seconds")
    return StepControl(timeout, retries, delay)


def _number(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{key}={text}: not a number of seconds") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{key}={text}: not a number of seconds")
    return value
