"""Load windows of processes (SPEC §8). Pure: every input, the clock included, is passed in.

A window is [start, end] in the target data's own (naive) datetimes. ``compute_window`` decides
it for ``start_process``; ``parse_moment`` reads the dates operators and queries give us.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from loadmgrd.errors import InvalidInput
from loadmgrd.states import ProcessType

LOW_DATE = datetime(1900, 1, 1, 0, 0, 0)
HIGH_DATE = datetime(2999, 12, 31, 23, 59, 59)
STRATEGIES = ("incremental", "full", "monthly", "chunk", "file", "manual")
_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y%m%d",
)


class WindowError(InvalidInput):
    pass


@dataclass(frozen=True)
class ProcessSettings:
    name: str
    process_type: str = ProcessType.INGESTION.value
    currency_date_flag: bool = False
    currency_start_offset: int = 0
    currency_end_offset: int = 0


@dataclass(frozen=True)
class Currency:
    """A linked table's current data currency."""

    table: str
    dttm: datetime
    day: date


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def parse_moment(value: object, what: str) -> datetime:
    """A date or datetime from text (``YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]``, ``YYYYMMDD``) or a
    ``date``/``datetime`` value; timezone-aware values become naive (the data's own time)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, time())
    text = str(value).strip()
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise WindowError(f"{what} {text!r} is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)") from None


def format_moment(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _midnight(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), time())


def _last_of_month(moment: datetime) -> datetime:
    last_day = calendar.monthrange(moment.year, moment.month)[1]
    return datetime(moment.year, moment.month, last_day, 23, 59, 59)


def compute_window(
    process: ProcessSettings,
    strategy: str,
    *,
    start_date: str | None,
    end_date: str | None,
    last_complete_end: datetime | None,
    linked: list[Currency] | None,
    now: datetime,
) -> Window:
    """The window a ``start_process`` opens. ``linked`` = the linked tables' current currencies
    (``[]`` when linked tables have no currency yet, ``None`` when nothing is linked)."""
    strategy = strategy.strip().lower()
    if strategy not in STRATEGIES:
        raise WindowError(f"load_strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    today = _midnight(now)

    if strategy == "manual":
        if not start_date and not end_date:
            raise WindowError("load_strategy manual needs start_date, end_date or both")
        start = parse_moment(start_date, "start_date") if start_date else LOW_DATE
        end = parse_moment(end_date, "end_date") if end_date else HIGH_DATE
        if end < start:
            raise WindowError(f"end_date {format_moment(end)} is before start_date {format_moment(start)}")
        return Window(start, end)

    if strategy == "full":
        start = LOW_DATE
    elif strategy == "monthly":
        shifted = now - timedelta(days=process.currency_start_offset)
        start = datetime(shifted.year, shifted.month, 1)
    elif last_complete_end is None:
        start = LOW_DATE
    else:
        start = last_complete_end - timedelta(days=process.currency_start_offset)

    if process.process_type == ProcessType.CONSUMPTION:
        if strategy == "monthly":
            end = _last_of_month(start)
        elif strategy == "file":
            raise WindowError("load_strategy file is for ingestion processes only")
        else:
            if linked is None:
                raise WindowError(
                    f"process {process.name!r} is a consumption process with no linked table "
                    f"(loadmgrctl link create {process.name} SCHEMA TABLE)"
                )
            if not linked:
                raise WindowError(f"the tables linked to process {process.name!r} have no data currency logged yet")
            if process.currency_date_flag:
                end = datetime.combine(min(c.day for c in linked), time())
            else:
                end = min(c.dttm for c in linked)
    elif strategy == "chunk":
        offset = process.currency_end_offset
        if offset == 0:
            raise WindowError(f"load_strategy chunk needs a currency end offset on process {process.name!r}")
        end = today + timedelta(days=offset) if offset < 0 else start + timedelta(days=offset)
    else:
        end = HIGH_DATE

    if process.currency_date_flag:
        start, end = _midnight(start), _midnight(end)
    return Window(start, end)
