"""The one stored form of timestamps, and the stamps used in run ids and batch numbers. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
DTTM_FORMAT = "%Y-%m-%d %H:%M:%S"


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ts(moment: datetime) -> str:
    """A moment as stored: UTC, ISO 8601, microseconds, ``Z``."""
    # isoformat writes the same text as strftime(TS_FORMAT) with "+00:00" for "Z", twice as fast
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def from_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)


def now_ts() -> str:
    return to_ts(utcnow())


def stamp(moment: datetime) -> str:
    """``yymmddHHMMSS`` in the host's local time (run ids, batch numbers)."""
    return moment.astimezone().strftime("%y%m%d%H%M%S")
