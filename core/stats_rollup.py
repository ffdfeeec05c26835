"""The stats rollup (``stream_stats``): written with every status change, read by the stats API.

Where it is written, and why there: a session's status changes are added to the rollup by a
``before_commit`` hook, in the same transaction as the changes themselves. The rollup can
therefore never drift from the messages: a crash, a rollback or a failed commit loses both or
neither (an after-commit listener would lose counts whenever a process died in between).

The cost is a row lock on the bucket being incremented. It is kept short and deadlock-free:
the increments of a transaction are summed first (one row per stream, bucket and status, so
a batch of 1,000 accepted messages is one upsert), written as the transaction's very last
statement (the lock is held only for the commit itself), and written in key order (two
transactions lock shared rows in the same order). ``bench/rollup_writes.py`` measures it.

Each change is counted in its minute and in its hour. Long ranges read hours, with minutes
only at the two ragged ends, so a 30-day query touches about 720 buckets per status.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, event, select, union_all
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.database import SessionFactory
from core.status_feed import PENDING_KEY
from core.status_kinds import ERROR_STATUSES, is_acceptance
from schemas.enums import MessageStatus
from schemas.events import StatusChange
from schemas.tables import StreamStat

#: The pseudo-status under which messages entering the system are counted.
ACCEPTED = "accepted"
MINUTE = 60
HOUR = 3600
DAY = 86400
GRANULARITIES = (MINUTE, HOUR)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RollupKey = tuple[uuid.UUID, int, datetime, str]


# ---------------------------------------------------------------- writing


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """The start of the ``seconds``-long UTC bucket holding ``moment``."""
    elapsed = int((as_utc(moment) - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=elapsed - elapsed % seconds)


def rollup_increments(changes: Iterable[StatusChange]) -> list[dict[str, Any]]:
    """The rows to add for ``changes``: one per (stream, granularity, bucket, status), in key
    order. Pure."""
    totals: dict[RollupKey, list[int]] = defaultdict(lambda: [0, 0])
    for change in changes:
        statuses = [change.status.value]
        if is_acceptance(change):
            statuses.append(ACCEPTED)
        for seconds in GRANULARITIES:
            start = bucket_start(change.at, seconds)
            for status in statuses:
                total = totals[(change.stream_id, seconds, start, status)]
                total[0] += 1
                total[1] += change.segments
    return [
        {
            "stream_id": key[0],
            "bucket_seconds": key[1],
            "bucket_start": key[2],
            "status": key[3],
            "messages": value[0],
            "segments": value[1],
        }
        for key, value in sorted(totals.items(), key=lambda item: _sort_key(item[0]))
    ]


def _sort_key(key: RollupKey) -> tuple[str, int, datetime, str]:
    return (str(key[0]), key[1], key[2], key[3])


def add_to_rollup(session: Session, changes: Sequence[StatusChange]) -> None:
    """Add ``changes`` to the rollup inside the session's transaction."""
    rows = rollup_increments(changes)
    if not rows:
        return
    connection = session.connection()
    connection.execute(_upsert_statement(connection.dialect.name), rows)


@cache
def _upsert_statement(dialect: str):  # type: ignore[no-untyped-def]
    """``INSERT ... ON CONFLICT DO UPDATE SET messages = messages + excluded.messages``.

    Built once and run as an executemany of plain parameters, so SQLAlchemy compiles it once
    (a multi-row VALUES clause would be compiled again for every transaction)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    table = StreamStat.__table__
    statement = dialect_insert(table)
    return statement.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns],
        set_={
            "messages": table.c.messages + statement.excluded.messages,
            "segments": table.c.segments + statement.excluded.segments,
        },
    )


def _before_commit(session: Session) -> None:
    changes = session.info.get(PENDING_KEY)
    if changes:
        add_to_rollup(session, changes)


def install_stats_rollup(session_factory: SessionFactory) -> None:
    """Make every commit of this factory's sessions add its status changes to the rollup."""
    event.listen(session_factory, "before_commit", _before_commit)


# ---------------------------------------------------------------- reading


@dataclass(slots=True)
class SeriesPoint:
    at: datetime
    accepted: int = 0
    sent: int = 0
    delivered: int = 0
    errors: int = 0


@dataclass(slots=True)
class StatsTotals:
    """What the rollup says about one stream over ``[start, end)``."""

    start: datetime
    end: datetime
    counts: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    series_seconds: int = MINUTE
    series: list[SeriesPoint] = field(default_factory=list)


def series_seconds_for(span: timedelta) -> int:
    """Minutes up to 6 hours, hours up to 7 days, days beyond: at most a few hundred points."""
    if span <= timedelta(hours=6):
        return MINUTE
    if span <= timedelta(days=7):
        return HOUR
    return DAY


def read_stats(
    session: Session, stream_id: uuid.UUID, start: datetime, end: datetime
) -> StatsTotals:
    """Sum the rollup of ``stream_id`` over ``[start, end)``; both must be whole minutes.

    Reads only ``stream_stats`` (never ``messages``): whole hours from hour buckets, the
    ragged ends from minute buckets, each an index range scan on the primary key.
    """
    series_seconds = series_seconds_for(end - start)
    totals = StatsTotals(start=start, end=end, series_seconds=series_seconds)
    points = {at: SeriesPoint(at=at) for at in _series_starts(start, end, series_seconds)}
    for bucket, status, messages, segments in session.execute(
        _bucket_query(stream_id, start, end, series_seconds)
    ):
        totals.counts[status] = totals.counts.get(status, 0) + messages
        totals.segments[status] = totals.segments.get(status, 0) + segments
        point = points.get(bucket_start(bucket, series_seconds))
        if point is None:
            continue
        if status == ACCEPTED:
            point.accepted += messages
        elif status == MessageStatus.sent.value:
            point.sent += messages
        elif status == MessageStatus.delivered.value:
            point.delivered += messages
        elif status in _ERROR_VALUES:
            point.errors += messages
    totals.series = list(points.values())
    return totals


_ERROR_VALUES = frozenset(status.value for status in ERROR_STATUSES)


def _series_starts(start: datetime, end: datetime, seconds: int) -> list[datetime]:
    first = bucket_start(start, seconds)
    count = -(-int((end - first).total_seconds()) // seconds)
    return [first + timedelta(seconds=seconds * i) for i in range(count)]


def _bucket_query(stream_id: uuid.UUID, start: datetime, end: datetime, series_seconds: int):  # type: ignore[no-untyped-def]
    def buckets(seconds: int, low: datetime, high: datetime):  # type: ignore[no-untyped-def]
        return select(
            StreamStat.bucket_start, StreamStat.status, StreamStat.messages, StreamStat.segments
        ).where(
            and_(
                StreamStat.stream_id == stream_id,
                StreamStat.bucket_seconds == seconds,
                StreamStat.bucket_start >= low,
                StreamStat.bucket_start < high,
            )
        )

    whole_hours_from = _ceil(start, HOUR)
    whole_hours_to = bucket_start(end, HOUR)
    if series_seconds < HOUR or whole_hours_from >= whole_hours_to:
        return buckets(MINUTE, start, end)
    parts = [buckets(HOUR, whole_hours_from, whole_hours_to)]
    if start < whole_hours_from:
        parts.append(buckets(MINUTE, start, whole_hours_from))
    if whole_hours_to < end:
        parts.append(buckets(MINUTE, whole_hours_to, end))
    return union_all(*parts)


def _ceil(moment: datetime, seconds: int) -> datetime:
    floor = bucket_start(moment, seconds)
    return floor if floor == moment else floor + timedelta(seconds=seconds)
