"""Cron expressions for schedules: validation and next fire times. Pure (the caller passes ``now``).

Five fields (minute hour day-of-month month day-of-week), or six with a leading seconds field
(``*/10 * * * * *`` = every ten seconds). A timezone name (IANA, e.g. ``Europe/Paris``) makes
the fields local to it, daylight-saving changes included; the default is the host's local time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from loadmgrd.errors import InvalidInput


def local_zone() -> tzinfo:
    """The host's timezone with its daylight-saving rules ($TZ, else /etc/localtime, else UTC)."""
    return _local_zone(os.environ.get("TZ", ""))


@lru_cache(maxsize=4)
def _local_zone(tz_variable: str) -> tzinfo:
    name = tz_variable.lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC


def zone(name: str | None) -> tzinfo:
    """The timezone named (None = the host's local time)."""
    if not name:
        return local_zone()
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
    """The first fire time strictly after ``after`` (an aware datetime), in UTC.

    Fields are wall-clock times in the zone. When clocks go back, a wall-clock time that
    repeats fires once (at its first occurrence); when they go forward, a time that does not
    exist fires at the first time after it.
    """
    tz = zone(timezone)
    local = after.astimezone(tz)
    fields = expression.split()
    hour_field = fields[2] if len(fields) == 6 else fields[1]
    fixed_hours = "*" not in hour_field  # vixie cron: fixed times do not rerun when clocks go back
    it = croniter(expression, local, second_at_beginning=len(fields) == 6)
    fire: datetime = it.get_next(datetime)
    for _ in range(8):
        if fire.tzinfo is None:
            fire = fire.replace(tzinfo=tz)
        repeated = fire.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None)
        if not (fixed_hours and repeated):
            break
        fire = it.get_next(datetime)
    return fire.astimezone(UTC)


def catch_up(expression: str, timezone: str | None, last_fire: datetime, now: datetime) -> bool:
    """Was at least one fire missed between ``last_fire`` and ``now``? (At most one catch-up run
    replaces however many fires were missed.)"""
    return next_fire(expression, timezone, last_fire) <= now
