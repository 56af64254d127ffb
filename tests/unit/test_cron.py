"""Unit tests for loadmgrd.cron: validation, timezones, next fire times (DST included), catch-up.

Every expected fire time below is derived by hand, not taken from the implementation:
Europe/Paris is UTC+1 (CET) in winter and UTC+2 (CEST) in summer; in 2026 the clocks go
forward on Sunday 29 March at 02:00 CET (01:00 UTC, 02:00-02:59 local does not exist) and back
on Sunday 25 October at 03:00 CEST (01:00 UTC, 02:00-02:59 local happens twice).
2026-01-01 is a Thursday.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from loadmgrd import cron
from loadmgrd.errors import ErrorCode, InvalidInput


def utc(text: str) -> datetime:
    """``2026-03-29T01:00:00`` (or with fractional seconds) as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def host_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the host's local timezone (TZ) for one test; restored afterwards."""

    def set_tz(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


# ---------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("30 2 * * *", "30 2 * * *", id="five-fields"),
        pytest.param("*/10 * * * * *", "*/10 * * * * *", id="six-fields-seconds-first"),
        pytest.param("  30   2  * *  * ", "30 2 * * *", id="five-fields-extra-spaces"),
        pytest.param("\t*/10 *\t* * * *\n", "*/10 * * * * *", id="six-fields-tabs-newline"),
        pytest.param("0 6 * * 1-5", "0 6 * * 1-5", id="weekday-range"),
        pytest.param("0,15,30,45 8-18 1,15 1-12 *", "0,15,30,45 8-18 1,15 1-12 *", id="lists-and-ranges"),
        pytest.param("59 23 31 12 6", "59 23 31 12 6", id="upper-bounds"),
        pytest.param("59 0 0 1 1 0", "59 0 0 1 1 0", id="six-fields-bounds"),
    ],
)
def test_validate_accepts_and_normalises(expression: str, expected: str) -> None:
    assert cron.validate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        pytest.param("* * *", ["'* * *'", "3 fields", "use 5", "6 with seconds"], id="three-fields"),
        pytest.param("* * * * * * *", ["'* * * * * * *'", "7 fields", "use 5"], id="seven-fields"),
        pytest.param("", ["0 fields"], id="empty"),
        pytest.param("   ", ["0 fields"], id="blank"),
        pytest.param("* * * *", ["4 fields"], id="four-fields"),
        pytest.param("61 * * * *", ["invalid cron expression", "'61 * * * *'", "out of range"], id="minute-61"),
        pytest.param("60 * * * *", ["invalid cron expression", "'60 * * * *'"], id="minute-60"),
        pytest.param("* 24 * * *", ["invalid cron expression", "'* 24 * * *'"], id="hour-24"),
        pytest.param("* * 32 * *", ["invalid cron expression", "'* * 32 * *'"], id="day-32"),
        pytest.param("* * 0 * *", ["invalid cron expression", "'* * 0 * *'"], id="day-0"),
        pytest.param("* * * 13 *", ["invalid cron expression", "'* * * 13 *'"], id="month-13"),
        pytest.param("* * * * 8", ["invalid cron expression", "'* * * * 8'"], id="weekday-8"),
        pytest.param("60 * * * * *", ["invalid cron expression", "'60 * * * * *'"], id="second-60"),
        pytest.param("a b c d e", ["invalid cron expression", "'a b c d e'"], id="garbage-letters"),
        pytest.param("*/0 * * * *", ["invalid cron expression", "'*/0 * * * *'"], id="step-zero"),
        pytest.param("1-2-3 * * * *", ["invalid cron expression"], id="double-range"),
        pytest.param("% * * * *", ["invalid cron expression"], id="punctuation"),
    ],
)
def test_validate_refuses_with_a_clear_message(expression: str, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        cron.validate(expression)
    assert info.value.code == ErrorCode.INVALID_INPUT
    for word in words:
        assert word in info.value.message, f"{word!r} not in {info.value.message!r}"
    assert "Traceback" not in info.value.message


# ---------------------------------------------------------------------------- zone


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Etc/GMT-3"])
def test_zone_valid_names(name: str) -> None:
    tz = cron.zone(name)
    assert isinstance(tz, ZoneInfo)
    assert tz.key == name


@pytest.mark.parametrize("name", [None, ""])
def test_zone_none_means_host_local_time(name: str | None) -> None:
    assert cron.zone(name) is cron.local_zone()


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe/Nowhere", "not a zone", "../../etc/passwd", "/etc/localtime"])
def test_zone_invalid_name_is_refused_naming_it(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        cron.zone(name)
    assert info.value.code == ErrorCode.INVALID_INPUT
    assert repr(name) in info.value.message
    assert "timezone" in info.value.message


# ---------------------------------------------------------------------------- next_fire


NEXT_FIRE_CASES = [
    # seconds-level, six fields
    pytest.param("*/10 * * * * *", "UTC", "2026-01-01T00:00:00", "2026-01-01T00:00:10", id="every-10s-on-boundary"),
    pytest.param("*/10 * * * * *", "UTC", "2026-01-01T00:00:05.500", "2026-01-01T00:00:10", id="every-10s-fraction"),
    pytest.param("*/10 * * * * *", "UTC", "2026-01-01T00:00:59", "2026-01-01T00:01:00", id="every-10s-minute-wrap"),
    pytest.param("*/10 * * * * *", "UTC", "2026-12-31T23:59:55", "2027-01-01T00:00:00", id="every-10s-year-wrap"),
    pytest.param("*/1 * * * * *", "UTC", "2026-06-01T12:00:00.999", "2026-06-01T12:00:01", id="every-second"),
    pytest.param("15 0 * * * *", "UTC", "2026-06-01T12:00:15", "2026-06-01T13:00:15", id="six-fields-hourly"),
    # daily at 02:30 UTC
    pytest.param("30 2 * * *", "UTC", "2026-01-01T02:29:59", "2026-01-01T02:30:00", id="daily-same-day"),
    pytest.param("30 2 * * *", "UTC", "2026-01-01T02:30:00", "2026-01-02T02:30:00", id="daily-strictly-after"),
    pytest.param("30 2 * * *", "UTC", "2026-01-01T02:30:00.000001", "2026-01-02T02:30:00", id="daily-just-after"),
    pytest.param("30 2 * * *", "UTC", "2026-02-28T03:00:00", "2026-03-01T02:30:00", id="daily-no-feb-29-in-2026"),
    pytest.param("30 2 * * *", "UTC", "2026-12-31T23:00:00", "2027-01-01T02:30:00", id="daily-year-wrap"),
    # weekday ranges (2026-01-02 is a Friday, 2026-01-05 a Monday)
    pytest.param("0 6 * * 1-5", "UTC", "2026-01-02T07:00:00", "2026-01-05T06:00:00", id="weekdays-skip-weekend"),
    pytest.param("0 6 * * 1-5", "UTC", "2026-01-05T05:59:59", "2026-01-05T06:00:00", id="weekdays-monday"),
    pytest.param("0 6 * * 1-5", "UTC", "2026-01-01T06:00:00", "2026-01-02T06:00:00", id="weekdays-thu-to-fri"),
    pytest.param("0 6 * * 6,0", "UTC", "2026-01-02T07:00:00", "2026-01-03T06:00:00", id="weekend-list"),
    pytest.param("0 6 * * 0", "UTC", "2026-01-03T07:00:00", "2026-01-04T06:00:00", id="sunday-is-0"),
    pytest.param("0 0 1 * *", "UTC", "2026-01-15T00:00:00", "2026-02-01T00:00:00", id="monthly"),
    # a timezone: Europe/Paris in winter (UTC+1) and summer (UTC+2)
    pytest.param("0 6 * * 1-5", "Europe/Paris", "2026-01-02T07:00:00", "2026-01-05T05:00:00", id="paris-winter"),
    pytest.param("0 6 * * *", "Europe/Paris", "2026-07-01T00:00:00", "2026-07-01T04:00:00", id="paris-summer"),
    pytest.param("30 2 * * *", "Europe/Paris", "2026-01-10T00:00:00", "2026-01-10T01:30:00", id="paris-0230-winter"),
    pytest.param("0 6 * * *", "America/New_York", "2026-01-10T00:00:00", "2026-01-10T11:00:00", id="new-york-winter"),
    # spring forward, Sunday 2026-03-29 (02:00 CET -> 03:00 CEST)
    pytest.param("0 6 * * *", "Europe/Paris", "2026-03-28T05:00:00", "2026-03-29T04:00:00", id="paris-spring-0600"),
    pytest.param(
        "30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00", "2026-03-29T01:00:00", id="paris-spring-missing-0230"
    ),
    pytest.param("30 2 * * *", "Europe/Paris", "2026-03-29T01:00:00", "2026-03-30T00:30:00", id="paris-spring-after"),
    pytest.param("0 * * * *", "Europe/Paris", "2026-03-29T00:00:00", "2026-03-29T01:00:00", id="paris-spring-hourly"),
    pytest.param("0 * * * *", "Europe/Paris", "2026-03-29T01:00:00", "2026-03-29T02:00:00", id="paris-spring-hourly-2"),
    # fall back, Sunday 2026-10-25 (03:00 CEST -> 02:00 CET)
    pytest.param("0 6 * * *", "Europe/Paris", "2026-10-24T04:00:00", "2026-10-25T05:00:00", id="paris-autumn-0600"),
    pytest.param(
        "30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00", "2026-10-25T00:30:00", id="paris-autumn-first-0230"
    ),
    pytest.param("0 * * * *", "Europe/Paris", "2026-10-25T00:00:00", "2026-10-25T01:00:00", id="paris-autumn-hourly"),
    pytest.param("0 * * * *", "Europe/Paris", "2026-10-25T01:00:00", "2026-10-25T02:00:00", id="paris-autumn-hourly-2"),
    pytest.param("0 6 * * *", "Europe/Paris", "2026-10-25T12:00:00", "2026-10-26T05:00:00", id="paris-after-autumn"),
]


@pytest.mark.parametrize(("expression", "tz", "after", "expected"), NEXT_FIRE_CASES)
def test_next_fire(expression: str, tz: str | None, after: str, expected: str) -> None:
    start = utc(after)
    fire = cron.next_fire(expression, tz, start)
    assert fire.tzinfo is not None
    assert fire.utcoffset() == timedelta(0)
    assert fire > start
    assert fire == utc(expected), f"{fire.isoformat()} != {expected}Z"


def test_next_fire_chain_of_a_six_field_schedule_is_every_ten_seconds() -> None:
    moment = utc("2026-05-05T10:00:03")
    fires = []
    for _ in range(7):
        moment = cron.next_fire("*/10 * * * * *", "UTC", moment)
        fires.append(moment)
    assert fires == [utc("2026-05-05T10:00:10") + timedelta(seconds=10 * n) for n in range(7)]


def test_next_fire_without_timezone_uses_the_host_local_time(host_tz: Callable[[str], None]) -> None:
    host_tz("Asia/Kolkata")  # UTC+05:30, no daylight saving
    assert cron.next_fire("30 2 * * *", None, utc("2026-01-01T00:00:00")) == utc("2026-01-01T21:00:00")
    host_tz("UTC")
    assert cron.next_fire("30 2 * * *", None, utc("2026-01-01T00:00:00")) == utc("2026-01-01T02:30:00")


def test_next_fire_host_local_time_follows_daylight_saving(host_tz: Callable[[str], None]) -> None:
    host_tz("Europe/Paris")
    # Saturday's 06:00 CET fire was 05:00 UTC; Sunday's 06:00 is CEST = 04:00 UTC.
    assert cron.next_fire("0 6 * * *", None, utc("2026-03-28T05:00:00")) == utc("2026-03-29T04:00:00")


def test_next_fire_daily_schedule_fires_once_on_the_fall_back_day() -> None:
    first = cron.next_fire("30 2 * * *", "Europe/Paris", utc("2026-10-24T12:00:00"))
    assert first == utc("2026-10-25T00:30:00")
    assert cron.next_fire("30 2 * * *", "Europe/Paris", first) == utc("2026-10-26T01:30:00")


def test_next_fire_same_instant_whatever_the_zone_of_after() -> None:
    after = datetime(2026, 3, 28, 13, 0, tzinfo=timezone(timedelta(hours=1)))  # 12:00 UTC
    fire = cron.next_fire("30 2 * * *", "Europe/Paris", after)
    assert fire == utc("2026-03-29T01:00:00")
    assert fire > after


def test_next_fire_result_is_in_utc_even_for_a_non_utc_after() -> None:
    after = datetime(2026, 3, 28, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert cron.next_fire("30 2 * * *", "Europe/Paris", after).utcoffset() == timedelta(0)


# ---------------------------------------------------------------------------- catch_up


@pytest.mark.parametrize(
    ("expression", "tz", "last_fire", "now", "missed"),
    [
        pytest.param("0 * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-01T10:00:01", False, id="hourly-just-fired"),
        pytest.param("0 * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-01T10:59:59", False, id="hourly-not-yet"),
        pytest.param("0 * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-01T11:00:01", True, id="hourly-one-missed"),
        pytest.param("0 * * * *", "UTC", "2026-01-01T10:00:00", "2026-01-03T15:30:00", True, id="hourly-many-missed"),
        pytest.param("*/10 * * * * *", "UTC", "2026-01-01T00:00:10", "2026-01-01T00:00:19", False, id="10s-not-yet"),
        pytest.param("*/10 * * * * *", "UTC", "2026-01-01T00:00:10", "2026-01-01T00:00:21", True, id="10s-missed"),
        pytest.param("0 6 * * 1-5", "UTC", "2026-01-02T06:00:00", "2026-01-04T23:59:00", False, id="weekend-nothing"),
        pytest.param("0 6 * * 1-5", "UTC", "2026-01-02T06:00:00", "2026-01-05T06:00:01", True, id="monday-missed"),
        pytest.param(
            "30 2 * * *", "Europe/Paris", "2026-03-28T01:30:00", "2026-03-29T00:59:59", False, id="paris-spring-not-yet"
        ),
        pytest.param(
            "30 2 * * *", "Europe/Paris", "2026-03-28T01:30:00", "2026-03-29T01:00:01", True, id="paris-spring-missed"
        ),
    ],
)
def test_catch_up(expression: str, tz: str | None, last_fire: str, now: str, missed: bool) -> None:
    assert cron.catch_up(expression, tz, utc(last_fire), utc(now)) is missed
