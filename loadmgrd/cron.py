"""Cron expressions for schedules: validation and next fire times. Pure (the caller passes ``now``).

Five fields (minute hour day-of-month month day-of-week), or six with a leading seconds field
(``*/10 * * * * *`` = every ten seconds). A timezone name (IANA, e.g. ``Europe/Paris``) makes
the fields local to it, daylight-saving changes included; the default is the host's local time.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from loadmgrd.errors import InvalidInput


def zone(name: str | None) -> tzinfo | None:
    """The timezone named (None = the host's local time)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown timezone {name!r} (use an IANA name such as Europe/Paris or UTC)") from None


def validate(expression: str) -> str:
    """The expression, normalised; a clear error when it is not 5 or 6 valid cron fields."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise InvalidInput(
            f"cron expression {expression!r} has {len(fields)} fields; use 5 (minute hour day month weekday) "
            "or 6 with seconds first"
        )
    normalised = " ".join(fields)
    try:
        croniter(normalised, datetime(2000, 1, 1), second_at_beginning=len(fields) == 6)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidInput(f"invalid cron expression {expression!r}: {exc}") from None
    return normalised


def next_fire(expression: str, timezone: str | None, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (an aware datetime); returned aware, in UTC."""
    tz = zone(timezone)
    local = after.astimezone(tz) if tz is not None else after.astimezone()
    it = croniter(expression, local, second_at_beginning=len(expression.split()) == 6)
    fire: datetime = it.get_next(datetime)
    if fire.tzinfo is None:
        fire = fire.replace(tzinfo=local.tzinfo)
    return fire.astimezone(after.tzinfo)


def catch_up(expression: str, timezone: str | None, last_fire: datetime, now: datetime) -> bool:
    """Was at least one fire missed between ``last_fire`` and ``now``? (At most one catch-up run
    replaces however many fires were missed.)"""
    return next_fire(expression, timezone, last_fire) <= now
