"""The stored timestamp form: one text per moment, read back to the same moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from loadmgrd.timefmt import TS_FORMAT, from_ts, to_ts

moments = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9998, 12, 31)).map(
    lambda m: m.replace(tzinfo=UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(moments, offsets)
def test_stored_form_is_utc_iso_with_z(moment: datetime, zone: timezone) -> None:
    local = moment.astimezone(zone)
    text = to_ts(local)
    assert text == moment.strftime(TS_FORMAT)
    assert text.endswith("Z") and len(text) == 27
    assert from_ts(text) == moment


def test_whole_seconds_keep_their_microseconds() -> None:
    assert to_ts(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)) == "2024-02-29T23:59:59.000000Z"
