"""Load windows (SPEC §8, docs/processes.md): ``compute_window`` branch by branch, with the
clock injected, plus ``parse_moment`` and ``format_moment``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from loadmgrd.errors import InvalidInput
from loadmgrd.windows import (
    HIGH_DATE,
    LOW_DATE,
    Currency,
    ProcessSettings,
    Window,
    WindowError,
    compute_window,
    format_moment,
    parse_moment,
)

NOW = datetime(2024, 3, 15, 10, 30, 45)
LAST_END = datetime(2024, 3, 10, 8, 15, 30)


def ing(**settings: Any) -> ProcessSettings:
    return ProcessSettings(name="sales_in", process_type="ingestion", **settings)


def con(**settings: Any) -> ProcessSettings:
    return ProcessSettings(name="sales_report", process_type="consumption", **settings)


def cur(table: str, dttm: str, day: str | None = None) -> Currency:
    moment = datetime.fromisoformat(dttm)
    return Currency(table, moment, date.fromisoformat(day) if day else moment.date())


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


LINKED = [
    cur("dw.sales", "2024-03-14 22:00:00"),
    cur("dw.orders", "2024-03-13 06:45:10"),  # the earliest: consumption reads up to here
    cur("dw.items", "2024-03-14 23:59:59"),
]
LINKED_WITH_DATES = [
    cur("dw.sales", "2024-03-14 22:00:00", "2024-03-13"),  # date offset flag: date = datetime - 1 day
    cur("dw.orders", "2024-03-14 06:45:10", "2024-03-14"),
]


class Err:
    """An expected WindowError whose message contains every fragment."""

    def __init__(self, *fragments: str) -> None:
        self.fragments = fragments


# (process, strategy, keyword arguments of compute_window besides `now`, now, expected)
CASES = [
    # ---------------------------------------------------------------- manual
    pytest.param(
        ing(), "manual", {"start_date": "2024-01-05"}, NOW, Window(dt("2024-01-05"), HIGH_DATE), id="manual-start-only"
    ),
    pytest.param(
        ing(),
        "manual",
        {"end_date": "2024-02-01 12:00:00"},
        NOW,
        Window(LOW_DATE, dt("2024-02-01 12:00:00")),
        id="manual-end-only",
    ),
    pytest.param(
        ing(),
        "manual",
        {"start_date": "2024-01-05 01:02:03", "end_date": "2024-02-01"},
        NOW,
        Window(dt("2024-01-05 01:02:03"), dt("2024-02-01")),
        id="manual-both",
    ),
    pytest.param(ing(), "manual", {}, NOW, Err("manual", "start_date", "end_date"), id="manual-none-is-an-error"),
    pytest.param(
        ing(),
        "manual",
        {"start_date": "2024-02-02", "end_date": "2024-02-01"},
        NOW,
        Err("end_date 2024-02-01 00:00:00 is before start_date 2024-02-02 00:00:00"),
        id="manual-end-before-start",
    ),
    pytest.param(
        ing(currency_date_flag=True),
        "manual",
        {"start_date": "2024-01-05 13:14:15", "end_date": "2024-01-06 07:08:09"},
        NOW,
        Window(dt("2024-01-05 13:14:15"), dt("2024-01-06 07:08:09")),
        id="manual-date-flag-not-applied",
    ),
    pytest.param(
        con(),
        "manual",
        {"start_date": "2024-01-05", "linked": None},
        NOW,
        Window(dt("2024-01-05"), HIGH_DATE),
        id="manual-consumption-needs-no-link",
    ),
    pytest.param(
        ing(),
        "manual",
        {"start_date": "2024-01-05", "last_complete_end": LAST_END},
        NOW,
        Window(dt("2024-01-05"), HIGH_DATE),
        id="manual-ignores-the-last-window",
    ),
    pytest.param(ing(), "manual", {"start_date": "soon"}, NOW, Err("start_date", "'soon'"), id="manual-bad-start-date"),
    pytest.param(
        ing(), "manual", {"end_date": "2024-13-01"}, NOW, Err("end_date", "'2024-13-01'"), id="manual-bad-end-date"
    ),
    # ---------------------------------------------------------------- full
    pytest.param(ing(), "full", {"last_complete_end": LAST_END}, NOW, Window(LOW_DATE, HIGH_DATE), id="full-ingestion"),
    pytest.param(
        con(),
        "full",
        {"last_complete_end": LAST_END, "linked": LINKED},
        NOW,
        Window(LOW_DATE, dt("2024-03-13 06:45:10")),
        id="full-consumption-ends-at-earliest-currency",
    ),
    pytest.param(
        con(), "full", {"linked": None}, NOW, Err("link create sales_report"), id="full-consumption-not-linked"
    ),
    # ---------------------------------------------------------------- monthly
    pytest.param(
        ing(),
        "monthly",
        {"last_complete_end": LAST_END},
        NOW,
        Window(dt("2024-03-01"), HIGH_DATE),
        id="monthly-this-month",
    ),
    pytest.param(
        ing(currency_start_offset=20),
        "monthly",
        {},
        NOW,
        Window(dt("2024-02-01"), HIGH_DATE),
        id="monthly-start-offset-crosses-a-month",
    ),
    pytest.param(
        ing(currency_start_offset=15),
        "monthly",
        {},
        dt("2024-01-10 03:00:00"),
        Window(dt("2023-12-01"), HIGH_DATE),
        id="monthly-start-offset-crosses-a-year",
    ),
    pytest.param(
        con(),
        "monthly",
        {"linked": None},
        dt("2024-02-10 09:00:00"),
        Window(dt("2024-02-01"), dt("2024-02-29 23:59:59")),
        id="monthly-consumption-february-leap-year",
    ),
    pytest.param(
        con(),
        "monthly",
        {"linked": []},
        dt("2025-02-28 23:00:00"),
        Window(dt("2025-02-01"), dt("2025-02-28 23:59:59")),
        id="monthly-consumption-february-2025",
    ),
    pytest.param(
        con(),
        "monthly",
        {},
        dt("2024-12-31 23:59:59"),
        Window(dt("2024-12-01"), dt("2024-12-31 23:59:59")),
        id="monthly-consumption-december",
    ),
    pytest.param(
        con(currency_start_offset=10),
        "monthly",
        {},
        dt("2025-01-05 00:00:00"),
        Window(dt("2024-12-01"), dt("2024-12-31 23:59:59")),
        id="monthly-consumption-offset-into-last-year",
    ),
    pytest.param(
        con(currency_start_offset=31),
        "monthly",
        {},
        dt("2024-03-31 12:00:00"),
        Window(dt("2024-02-01"), dt("2024-02-29 23:59:59")),
        id="monthly-consumption-offset-into-february",
    ),
    pytest.param(
        con(currency_date_flag=True),
        "monthly",
        {},
        dt("2024-04-20 12:00:00"),
        Window(dt("2024-04-01"), dt("2024-04-30")),
        id="monthly-consumption-date-flag-cuts-the-end",
    ),
    # ---------------------------------------------------------------- incremental / file
    pytest.param(ing(), "incremental", {}, NOW, Window(LOW_DATE, HIGH_DATE), id="incremental-first-run-low-date"),
    pytest.param(
        ing(),
        "incremental",
        {"last_complete_end": LAST_END},
        NOW,
        Window(LAST_END, HIGH_DATE),
        id="incremental-starts-at-last-end",
    ),
    pytest.param(
        ing(currency_start_offset=2),
        "incremental",
        {"last_complete_end": LAST_END},
        NOW,
        Window(LAST_END - timedelta(days=2), HIGH_DATE),
        id="incremental-minus-start-offset",
    ),
    pytest.param(
        ing(currency_start_offset=2),
        "incremental",
        {},
        NOW,
        Window(LOW_DATE, HIGH_DATE),
        id="incremental-no-offset-from-low-date",
    ),
    pytest.param(ing(), "file", {"last_complete_end": LAST_END}, NOW, Window(LAST_END, HIGH_DATE), id="file-ingestion"),
    pytest.param(ing(), "file", {}, NOW, Window(LOW_DATE, HIGH_DATE), id="file-ingestion-first-run"),
    pytest.param(
        ing(currency_start_offset=1),
        "file",
        {"last_complete_end": LAST_END},
        NOW,
        Window(LAST_END - timedelta(days=1), HIGH_DATE),
        id="file-ingestion-start-offset",
    ),
    pytest.param(
        con(), "file", {"linked": LINKED}, NOW, Err("file", "ingestion processes only"), id="file-consumption-error"
    ),
    # ---------------------------------------------------------------- chunk
    pytest.param(
        ing(),
        "chunk",
        {"last_complete_end": LAST_END},
        NOW,
        Err("chunk", "end offset", "'sales_in'"),
        id="chunk-end-offset-0",
    ),
    pytest.param(
        ing(currency_end_offset=-1),
        "chunk",
        {"last_complete_end": LAST_END},
        NOW,
        Window(LAST_END, dt("2024-03-14 00:00:00")),
        id="chunk-negative-today-midnight-minus-days",
    ),
    pytest.param(
        ing(currency_end_offset=-3),
        "chunk",
        {},
        dt("2024-03-02 00:00:01"),
        Window(LOW_DATE, dt("2024-02-28")),
        id="chunk-negative-across-month-end",
    ),
    pytest.param(
        ing(currency_end_offset=7),
        "chunk",
        {},
        NOW,
        Window(LOW_DATE, dt("1900-01-08")),
        id="chunk-positive-from-low-date",
    ),
    pytest.param(
        ing(currency_start_offset=1, currency_end_offset=3),
        "chunk",
        {"last_complete_end": LAST_END},
        NOW,
        Window(dt("2024-03-09 08:15:30"), dt("2024-03-12 08:15:30")),
        id="chunk-positive-start-plus-days",
    ),
    pytest.param(
        con(),
        "chunk",
        {"last_complete_end": LAST_END, "linked": LINKED},
        NOW,
        Window(LAST_END, dt("2024-03-13 06:45:10")),
        id="chunk-consumption-is-incremental",
    ),
    # ---------------------------------------------------------------- consumption incremental
    pytest.param(
        con(),
        "incremental",
        {"linked": LINKED},
        NOW,
        Window(LOW_DATE, dt("2024-03-13 06:45:10")),
        id="consumption-first-run-earliest-of-several",
    ),
    pytest.param(
        con(),
        "incremental",
        {"linked": LINKED[:1]},
        NOW,
        Window(LOW_DATE, dt("2024-03-14 22:00:00")),
        id="consumption-one-table",
    ),
    pytest.param(
        con(currency_start_offset=1),
        "incremental",
        {"last_complete_end": LAST_END, "linked": LINKED},
        NOW,
        Window(dt("2024-03-09 08:15:30"), dt("2024-03-13 06:45:10")),
        id="consumption-last-end-minus-offset",
    ),
    pytest.param(
        con(),
        "incremental",
        {"linked": None},
        NOW,
        Err("sales_report", "no linked table", "loadmgrctl link create sales_report"),
        id="consumption-not-linked",
    ),
    pytest.param(
        con(),
        "incremental",
        {"linked": []},
        NOW,
        Err("sales_report", "no data currency logged yet"),
        id="consumption-links-without-currency",
    ),
    # ---------------------------------------------------------------- currency-date flag
    pytest.param(
        ing(currency_date_flag=True),
        "incremental",
        {"last_complete_end": LAST_END},
        NOW,
        Window(dt("2024-03-10"), dt("2999-12-31")),
        id="date-flag-cuts-start-and-end",
    ),
    pytest.param(
        ing(currency_date_flag=True, currency_end_offset=2),
        "chunk",
        {"last_complete_end": LAST_END},
        NOW,
        Window(dt("2024-03-10"), dt("2024-03-12")),
        id="date-flag-chunk",
    ),
    pytest.param(
        ing(currency_date_flag=True),
        "full",
        {},
        NOW,
        Window(LOW_DATE, dt("2999-12-31")),
        id="date-flag-full",
    ),
    pytest.param(
        con(currency_date_flag=True),
        "incremental",
        {"last_complete_end": LAST_END, "linked": LINKED_WITH_DATES},
        NOW,
        Window(dt("2024-03-10"), dt("2024-03-13")),
        id="date-flag-consumption-uses-currency-dates",
    ),
    pytest.param(
        con(),
        "incremental",
        {"linked": LINKED_WITH_DATES},
        NOW,
        Window(LOW_DATE, dt("2024-03-14 06:45:10")),
        id="no-date-flag-consumption-uses-currency-datetimes",
    ),
    # ---------------------------------------------------------------- the strategy itself
    pytest.param(
        ing(), "weekly", {}, NOW, Err("load_strategy 'weekly'", "incremental", "manual"), id="invalid-strategy"
    ),
    pytest.param(ing(), "", {}, NOW, Err("load_strategy ''"), id="empty-strategy"),
    pytest.param(
        ing(),
        "  INCREMENTAL ",
        {"last_complete_end": LAST_END},
        NOW,
        Window(LAST_END, HIGH_DATE),
        id="strategy-case-insensitive",
    ),
    pytest.param(
        ing(), "Full", {"last_complete_end": LAST_END}, NOW, Window(LOW_DATE, HIGH_DATE), id="strategy-capitalised"
    ),
    pytest.param(
        ing(),
        "MANUAL",
        {"end_date": "20240201"},
        NOW,
        Window(LOW_DATE, dt("2024-02-01")),
        id="strategy-upper-manual",
    ),
]


@pytest.mark.parametrize(("process", "strategy", "given", "now", "expected"), CASES)
def test_compute_window(
    process: ProcessSettings, strategy: str, given: dict[str, Any], now: datetime, expected: Any
) -> None:
    kwargs: dict[str, Any] = {"start_date": None, "end_date": None, "last_complete_end": None, "linked": None}
    kwargs.update(given)
    if isinstance(expected, Err):
        with pytest.raises(WindowError) as caught:
            compute_window(process, strategy, now=now, **kwargs)
        for fragment in expected.fragments:
            assert fragment in caught.value.message, f"{fragment!r} not in {caught.value.message!r}"
    else:
        assert compute_window(process, strategy, now=now, **kwargs) == expected


def test_there_are_enough_window_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_window_error_is_invalid_input() -> None:
    """A bad window is the caller's input error (a failed step, never a daemon error)."""
    assert issubclass(WindowError, InvalidInput)


def test_consumption_end_is_the_earliest_whatever_the_link_order() -> None:
    for linked in (LINKED, LINKED[::-1], LINKED[1:] + LINKED[:1]):
        window = compute_window(
            con(), "incremental", start_date=None, end_date=None, last_complete_end=None, linked=linked, now=NOW
        )
        assert window.end == dt("2024-03-13 06:45:10")


# ---------------------------------------------------------------------------- parse_moment / format_moment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2024-03-01", dt("2024-03-01 00:00:00"), id="date"),
        pytest.param("2024-03-01 10:11:12", dt("2024-03-01 10:11:12"), id="datetime"),
        pytest.param("2024-03-01T10:11:12", dt("2024-03-01 10:11:12"), id="iso-t"),
        pytest.param("2024-03-01 10:11:12.250000", dt("2024-03-01 10:11:12.25"), id="microseconds"),
        pytest.param("2024-03-01T10:11:12.5", dt("2024-03-01 10:11:12.5"), id="iso-t-fraction"),
        pytest.param("2024-03-01 10:11", dt("2024-03-01 10:11:00"), id="minutes"),
        pytest.param("20240301", dt("2024-03-01"), id="compact"),
        pytest.param("  2024-03-01 10:11:12\n", dt("2024-03-01 10:11:12"), id="whitespace-trimmed"),
        pytest.param("2024-03-01T10:11:12+02:00", dt("2024-03-01 10:11:12"), id="offset-dropped"),
        pytest.param(datetime(2024, 3, 1, 10, 11, 12, tzinfo=UTC), dt("2024-03-01 10:11:12"), id="aware-datetime"),
        pytest.param(
            datetime(2024, 3, 1, 10, 11, 12, tzinfo=timezone(timedelta(hours=-5))),
            dt("2024-03-01 10:11:12"),
            id="aware-datetime-keeps-wall-time",
        ),
        pytest.param(datetime(2024, 3, 1, 10, 11, 12), dt("2024-03-01 10:11:12"), id="naive-datetime"),
        pytest.param(date(2024, 3, 1), dt("2024-03-01"), id="date-object"),
    ],
)
def test_parse_moment_accepts(value: object, expected: datetime) -> None:
    parsed = parse_moment(value, "start_date")
    assert parsed == expected
    assert parsed.tzinfo is None


@pytest.mark.parametrize(
    ("value", "what"),
    [
        pytest.param("notadate", "start_date", id="word"),
        pytest.param("", "end_date", id="empty"),
        pytest.param("2024-02-30", "currency_date", id="impossible-day"),
        pytest.param("2024-03-01 25:00:00", "the currency of dw.sales", id="impossible-hour"),
        pytest.param("01/03/2024", "start_date", id="slashes"),
        pytest.param(None, "window end", id="none"),
    ],
)
def test_parse_moment_refuses_garbage_naming_the_field(value: object, what: str) -> None:
    with pytest.raises(WindowError) as caught:
        parse_moment(value, what)
    message = caught.value.message
    assert message.startswith(f"{what} {str(value).strip()!r} is not a date"), message
    assert "YYYY-MM-DD" in message


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        pytest.param(datetime(2024, 3, 1, 5, 6, 7, 999999), "2024-03-01 05:06:07", id="microseconds-dropped"),
        pytest.param(LOW_DATE, "1900-01-01 00:00:00", id="low-date"),
        pytest.param(HIGH_DATE, "2999-12-31 23:59:59", id="high-date"),
        pytest.param(datetime(2024, 12, 31), "2024-12-31 00:00:00", id="midnight"),
    ],
)
def test_format_moment(moment: datetime, text: str) -> None:
    assert format_moment(moment) == text
    assert parse_moment(text, "x") == moment.replace(microsecond=0)
