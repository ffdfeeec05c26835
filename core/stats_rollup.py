"""The stats rollup (``stream_stats``): written with every status change, read by the stats API.

Where it is written, and why there: a session's status changes are added to the rollup by a
``before_commit`` hook, in the same transaction as the changes themselves. The rollup can
therefore never drift from the messages: a crash, a rollback or a failed commit loses both or
neither (an after-commit listener would lose counts whenever a process died in between). It
counts the history, with one correction: a failure (or an expiry after a claim) the carrier
contradicts later is taken out again (``Retraction``, ``core.receipts``), so a message counts
as failed or expired only while that stands.

The cost is a row lock on the bucket being incremented. It is kept short and deadlock-free:
the increments of a transaction are summed first (one row per stream, bucket and status, so
a batch of 1,000 accepted messages is one upsert), written as the transaction's very last
statement (the lock is held only for the commit itself), and written in key order (two
transactions lock shared rows in the same order). ``bench/rollup_writes.py`` measures it.

The worker's two hot statements are the exception (``rollup_upsert_sql``): the claim and
the record write their rollup in the statement that makes the changes, one statement less
per transaction. Their lock is held a little longer: the claim's while the worker makes
the claimed rows into jobs before it commits, the record's over the rare update of the
stream's last activity. Key order is the same, and no transaction writes both kinds, so
they cannot deadlock with each other; worker groups (``workers.group_commit``) keep the
number of such transactions per stream low.

Each change is counted in its minute, its hour and its day. A range is read from the coarsest
buckets that fit inside it, with finer ones only at the two ragged ends: a 30-day query reads
about 30 day buckets, at most 46 hour buckets and 118 minute buckets per status, however busy
the stream (``bench/stats.py``: ten million messages).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, event, select, text, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.database import SessionFactory, bulk_insert, on_conflict_adding_sql
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
GRANULARITIES = (MINUTE, HOUR, DAY)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RollupKey = tuple[uuid.UUID, int, datetime, str]

#: Session key: the retractions (``Retraction``) to write with the session's next commit.
RETRACTIONS_KEY = "streams.rollup_retractions"


# ---------------------------------------------------------------- writing


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """The start of the ``seconds``-long UTC bucket holding ``moment``."""
    elapsed = int((as_utc(moment) - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=elapsed - elapsed % seconds)


@dataclass(frozen=True, slots=True)
class Retraction:
    """A count to take back: the message that entered ``status`` at ``at`` is no longer
    counted there (a failure or expiry the carrier has since contradicted, ``core.receipts``)."""

    stream_id: uuid.UUID
    status: MessageStatus
    at: datetime
    segments: int


def retract_from_rollup(session: Session, retraction: Retraction) -> None:
    """Take ``retraction`` out of the rollup when the session commits, with its changes (one
    upsert, rows in key order, so it cannot deadlock with another transaction's rollup)."""
    session.info.setdefault(RETRACTIONS_KEY, []).append(retraction)


def rollup_increments(
    changes: Iterable[StatusChange], retractions: Iterable[Retraction] = ()
) -> list[dict[str, Any]]:
    """The rows to add for ``changes`` (and subtract for ``retractions``): one per (stream,
    granularity, bucket, status), in key order. Pure.

    The changes of one transaction mostly share their stream and their moment, so they are
    counted per (stream, moment, status) first and each group is spread over its buckets
    once: the bucket arithmetic runs per group, not three times per change."""
    groups: dict[tuple[uuid.UUID, datetime, str], list[int]] = defaultdict(lambda: [0, 0])
    for change in changes:
        group = groups[(change.stream_id, change.at, change.status.value)]
        group[0] += 1
        group[1] += change.segments
        if is_acceptance(change):
            group = groups[(change.stream_id, change.at, ACCEPTED)]
            group[0] += 1
            group[1] += change.segments
    for retraction in retractions:
        group = groups[(retraction.stream_id, retraction.at, retraction.status.value)]
        group[0] -= 1
        group[1] -= retraction.segments
    totals: dict[RollupKey, list[int]] = defaultdict(lambda: [0, 0])
    for (stream_id, moment, status), (messages, segments) in groups.items():
        for seconds in GRANULARITIES:
            total = totals[(stream_id, seconds, bucket_start(moment, seconds), status)]
            total[0] += messages
            total[1] += segments
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


_STATS: Table = StreamStat.__table__  # type: ignore[assignment]
#: The rollup's key (stream, granularity, bucket, status) and the counters an upsert adds.
_KEY = tuple(column.name for column in _STATS.primary_key.columns)
_COUNTS = ("messages", "segments")


def add_to_rollup(
    session: Session, changes: Sequence[StatusChange], retractions: Sequence[Retraction] = ()
) -> None:
    """Add ``changes`` to the rollup (and take ``retractions`` out of it) inside the
    session's transaction: one upsert statement, rows in key order."""
    rows = rollup_increments(changes, retractions)
    if not rows:
        return
    bulk_insert(session, _STATS, rows, add_on_conflict=(_KEY, _COUNTS))


def _before_commit(session: Session) -> None:
    changes = session.info.get(PENDING_KEY)
    retractions = session.info.pop(RETRACTIONS_KEY, None) or ()
    if changes or retractions:
        counted = [change for change in changes or () if not change.in_rollup]
        add_to_rollup(session, counted, retractions)


def _after_rollback(session: Session) -> None:
    session.info.pop(RETRACTIONS_KEY, None)


def rollup_upsert_sql(source: str, moment: str) -> str:
    """On PostgreSQL, the rollup written by the statement that makes the changes, as the
    body of a data-modifying CTE: one statement less per transaction on the delivery path.

    ``source`` is SQL yielding one row per change, with ``stream_id``, ``status`` and
    ``segments`` columns; ``moment`` names the bind parameter holding the changes' moment.
    The rows are the ones ``rollup_increments`` makes (the same buckets, from the epoch,
    in UTC), upserted in the same key order (the uuid order of PostgreSQL is the order of
    their text). The changes it counts must be made with ``in_rollup=True`` and must not
    be acceptances (no ``accepted`` row is written here)."""
    granularities = ", ".join(f"({seconds})" for seconds in GRANULARITIES)
    epoch = f"extract(epoch FROM CAST(:{moment} AS TIMESTAMP WITH TIME ZONE))"
    return (
        f"INSERT INTO stream_stats ({', '.join((*_KEY, *_COUNTS))}) "
        f"SELECT c.stream_id, g.seconds, to_timestamp(floor({epoch} / g.seconds) * g.seconds), "
        "c.status, count(*), sum(c.segments) "
        f"FROM ({source}) AS c CROSS JOIN (VALUES {granularities}) AS g(seconds) "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
        + on_conflict_adding_sql(postgresql.dialect(), _STATS, _KEY, _COUNTS)
    )


def install_stats_rollup(session_factory: SessionFactory) -> None:
    """Make every commit of this factory's sessions add its status changes to the rollup."""
    event.listen(session_factory, "before_commit", _before_commit)
    event.listen(session_factory, "after_rollback", _after_rollback)


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

    Reads only ``stream_stats`` (never ``messages``), one primary-key range scan per piece of
    ``covering_pieces``.
    """
    series_seconds = series_seconds_for(end - start)
    totals = StatsTotals(start=start, end=end, series_seconds=series_seconds)
    first = _epoch_seconds(start) // series_seconds * series_seconds
    points = [
        SeriesPoint(at=_EPOCH + timedelta(seconds=at))
        for at in range(first, _epoch_seconds(end), series_seconds)
    ]
    counts, segments = totals.counts, totals.segments
    if session.get_bind().dialect.name == "postgresql":
        # A few hundred rows by primary key: starting parallel workers costs more than the
        # scan (measured: p50 16 ms with a Parallel Append, 6 ms without, bench/stats.py).
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    for bucket, status, messages, segment_count in session.execute(
        _bucket_query(stream_id, covering_pieces(start, end, series_seconds))
    ):
        counts[status] = counts.get(status, 0) + messages
        segments[status] = segments.get(status, 0) + segment_count
        point = points[(_epoch_seconds(bucket) - first) // series_seconds]
        if status == ACCEPTED:
            point.accepted += messages
        elif status == _SENT:
            point.sent += messages
        elif status == _DELIVERED:
            point.delivered += messages
        elif status in _ERROR_VALUES:
            point.errors += messages
    totals.series = points
    return totals


_ERROR_VALUES = frozenset(status.value for status in ERROR_STATUSES)
_SENT = MessageStatus.sent.value
_DELIVERED = MessageStatus.delivered.value

Piece = tuple[int, datetime, datetime]


def covering_pieces(start: datetime, end: datetime, coarsest: int = DAY) -> list[Piece]:
    """``[start, end)`` (whole minutes) as (granularity, from, to) pieces: the coarsest
    buckets that fit, finer ones at the ragged ends. No bucket is longer than ``coarsest``
    (the series needs buckets no longer than its points). Pure."""
    usable = [g for g in sorted(GRANULARITIES, reverse=True) if g <= coarsest]

    def split(low: datetime, high: datetime, level: int) -> list[Piece]:
        if low >= high:
            return []
        seconds = usable[level]
        if level == len(usable) - 1:
            return [(seconds, low, high)]
        inner_low, inner_high = _ceil(low, seconds), bucket_start(high, seconds)
        if inner_low >= inner_high:
            return split(low, high, level + 1)
        return [
            *split(low, inner_low, level + 1),
            (seconds, inner_low, inner_high),
            *split(inner_high, high, level + 1),
        ]

    return split(start, end, 0)


def _bucket_query(stream_id: uuid.UUID, pieces: list[Piece]):  # type: ignore[no-untyped-def]
    selects = [
        select(
            StreamStat.bucket_start, StreamStat.status, StreamStat.messages, StreamStat.segments
        ).where(
            and_(
                StreamStat.stream_id == stream_id,
                StreamStat.bucket_seconds == seconds,
                StreamStat.bucket_start >= low,
                StreamStat.bucket_start < high,
            )
        )
        for seconds, low, high in pieces
    ]
    return selects[0] if len(selects) == 1 else union_all(*selects)


def _epoch_seconds(moment: datetime) -> int:
    return int((as_utc(moment) - _EPOCH).total_seconds())


def _ceil(moment: datetime, seconds: int) -> datetime:
    floor = bucket_start(moment, seconds)
    return floor if floor == moment else floor + timedelta(seconds=seconds)
