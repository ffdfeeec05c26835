"""The rollup's pure parts: buckets, increments and the series resolution."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from core.stats_rollup import (
    ACCEPTED,
    DAY,
    HOUR,
    MINUTE,
    Retraction,
    bucket_start,
    covering_pieces,
    rollup_increments,
    series_seconds_for,
)
from schemas.enums import MessageStatus
from schemas.events import StatusChange

STREAM_A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
STREAM_B = uuid.UUID("00000000-0000-0000-0000-00000000000b")


def change(stream, status, at, segments=1, detail=None) -> StatusChange:
    return StatusChange(
        message_id=uuid.uuid4(),
        stream_id=stream,
        account_id=uuid.uuid4(),
        stream_type="marketing",
        status=status,
        at=at,
        segments=segments,
        detail=detail,
    )


def test_bucket_start_floors_to_utc_minutes_hours_and_days():
    moment = datetime(2026, 5, 1, 13, 47, 59, 999_000, tzinfo=timezone(timedelta(hours=2)))
    assert bucket_start(moment, MINUTE) == datetime(2026, 5, 1, 11, 47, tzinfo=UTC)
    assert bucket_start(moment, HOUR) == datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    assert bucket_start(moment, DAY) == datetime(2026, 5, 1, tzinfo=UTC)
    naive_from_sqlite = datetime(2026, 5, 1, 11, 47, 30)
    assert bucket_start(naive_from_sqlite, MINUTE) == datetime(2026, 5, 1, 11, 47, tzinfo=UTC)


def test_increments_are_summed_per_bucket_and_counted_in_minute_and_hour():
    at = datetime(2026, 5, 1, 10, 15, 5, tzinfo=UTC)
    rows = rollup_increments(
        [
            change(STREAM_A, MessageStatus.queued, at, segments=2),
            change(STREAM_A, MessageStatus.queued, at + timedelta(seconds=20), segments=3),
            change(
                STREAM_A, MessageStatus.queued, at + timedelta(minutes=1), detail="retry after x"
            ),
        ]
    )
    by_key = {(r["bucket_seconds"], r["bucket_start"], r["status"]): r for r in rows}
    minute = datetime(2026, 5, 1, 10, 15, tzinfo=UTC)
    hour = datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert by_key[(MINUTE, minute, "queued")]["messages"] == 2
    assert by_key[(MINUTE, minute, "queued")]["segments"] == 5
    assert by_key[(MINUTE, minute, ACCEPTED)]["messages"] == 2
    assert by_key[(MINUTE, minute + timedelta(minutes=1), "queued")]["messages"] == 1
    # The retry is a queued change, not a second acceptance.
    assert (MINUTE, minute + timedelta(minutes=1), ACCEPTED) not in by_key
    assert by_key[(HOUR, hour, "queued")]["messages"] == 3
    assert by_key[(HOUR, hour, ACCEPTED)]["messages"] == 2
    assert by_key[(DAY, datetime(2026, 5, 1, tzinfo=UTC), ACCEPTED)]["segments"] == 5
    assert len(rows) == 3 + 2 + 2  # two minutes, but one hour and one day


def test_increments_come_in_one_total_order_so_concurrent_writers_cannot_deadlock():
    at = datetime(2026, 5, 1, 10, 15, tzinfo=UTC)
    changes = [
        change(STREAM_B, MessageStatus.sent, at),
        change(STREAM_A, MessageStatus.sent, at),
        change(STREAM_B, MessageStatus.delivered, at),
        change(STREAM_A, MessageStatus.queued, at),
    ]
    forward = rollup_increments(changes)
    backward = rollup_increments(list(reversed(changes)))
    keys = [
        (str(r["stream_id"]), r["bucket_seconds"], r["bucket_start"], r["status"]) for r in forward
    ]
    assert keys == sorted(keys)
    assert forward == backward


def test_a_retraction_is_taken_from_the_buckets_of_its_own_moment_in_key_order():
    """A failure the carrier contradicts hours later: the failure leaves the buckets it was
    counted in, and its rows sort with the new change's, so one upsert writes both in the
    order every writer uses."""
    failed_at = datetime(2026, 5, 1, 10, 15, 30, tzinfo=UTC)
    now = failed_at + timedelta(hours=3)
    rows = rollup_increments(
        [change(STREAM_A, MessageStatus.delivered, now, segments=2)],
        [Retraction(STREAM_A, MessageStatus.failed, failed_at, 2)],
    )
    by_key = {(r["bucket_seconds"], r["bucket_start"], r["status"]): r for r in rows}
    day = datetime(2026, 5, 1, tzinfo=UTC)
    assert {key: (r["messages"], r["segments"]) for key, r in by_key.items()} == {
        (MINUTE, datetime(2026, 5, 1, 10, 15, tzinfo=UTC), "failed"): (-1, -2),
        (HOUR, datetime(2026, 5, 1, 10, tzinfo=UTC), "failed"): (-1, -2),
        (DAY, day, "failed"): (-1, -2),
        (MINUTE, datetime(2026, 5, 1, 13, 15, tzinfo=UTC), "delivered"): (1, 2),
        (HOUR, datetime(2026, 5, 1, 13, tzinfo=UTC), "delivered"): (1, 2),
        (DAY, day, "delivered"): (1, 2),
    }
    keys = [
        (str(r["stream_id"]), r["bucket_seconds"], r["bucket_start"], r["status"]) for r in rows
    ]
    assert keys == sorted(keys)


def test_series_resolution_keeps_a_few_hundred_points_at_most():
    assert series_seconds_for(timedelta(hours=6)) == MINUTE
    assert series_seconds_for(timedelta(hours=6, minutes=1)) == HOUR
    assert series_seconds_for(timedelta(days=7)) == HOUR
    assert series_seconds_for(timedelta(days=30)) == DAY


def test_a_range_is_covered_by_the_coarsest_buckets_that_fit():
    start = datetime(2026, 5, 1, 22, 47, tzinfo=UTC)
    end = datetime(2026, 5, 31, 1, 5, tzinfo=UTC)
    pieces = covering_pieces(start, end)
    assert pieces == [
        (MINUTE, start, datetime(2026, 5, 1, 23, tzinfo=UTC)),
        (HOUR, datetime(2026, 5, 1, 23, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)),
        (DAY, datetime(2026, 5, 2, tzinfo=UTC), datetime(2026, 5, 31, tzinfo=UTC)),
        (HOUR, datetime(2026, 5, 31, tzinfo=UTC), datetime(2026, 5, 31, 1, tzinfo=UTC)),
        (MINUTE, datetime(2026, 5, 31, 1, tzinfo=UTC), end),
    ]
    # Contiguous and exact: every minute of the range is in exactly one piece.
    assert pieces[0][1] == start and pieces[-1][2] == end
    assert all(a[2] == b[1] for a, b in zip(pieces, pieces[1:], strict=False))


def test_pieces_are_never_coarser_than_the_series_points():
    start = datetime(2026, 5, 1, 22, 47, tzinfo=UTC)
    end = start + timedelta(days=3)
    assert {g for g, _, _ in covering_pieces(start, end, coarsest=HOUR)} == {MINUTE, HOUR}
    assert covering_pieces(start, start + timedelta(hours=5), coarsest=MINUTE) == [
        (MINUTE, start, start + timedelta(hours=5))
    ]
    aligned = datetime(2026, 5, 1, tzinfo=UTC)
    assert covering_pieces(aligned, aligned + timedelta(days=2)) == [
        (DAY, aligned, aligned + timedelta(days=2))
    ]
