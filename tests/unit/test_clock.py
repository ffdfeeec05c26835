"""``core.clock.as_utc``: every moment we store or compare is in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from core.clock import as_utc


def test_a_naive_moment_is_taken_as_utc() -> None:
    assert as_utc(datetime(2026, 5, 1, 10, 0)) == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def test_an_offset_moment_is_converted_to_the_same_instant_in_utc() -> None:
    local = datetime(2026, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-5)))
    converted = as_utc(local)
    assert converted.utcoffset() == timedelta(0)
    assert converted.replace(tzinfo=None) == datetime(2026, 5, 1, 15, 0)  # the wall time too
