"""A stream's stats (the Info tab), read from the rollup only: never a scan of messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from core.clock import as_utc
from core.stats_rollup import ACCEPTED, MINUTE, bucket_start, read_stats
from core.status_kinds import SETTLED_STATUSES
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from schemas.enums import MessageStatus
from schemas.errors import ErrorBody
from schemas.stats import Segments, StreamStats, Throughput, ThroughputPoint
from schemas.tables import Stream

router = APIRouter(prefix="/api/v1/streams", tags=["streams"])
Account = Annotated[uuid.UUID, Depends(require_account)]
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 422)}

DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=93)
#: Timestamps outside these years cannot hold messages (and would overflow when rounded).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_TIMESTAMP_HELP = "ISO 8601 with a time zone offset, e.g. 2026-05-01T00:00:00Z."


def parse_timestamp(value: str, field: str) -> datetime:
    """An aware datetime from ISO 8601; 422 naming ``field`` otherwise.

    A ``+`` left unescaped in a query string arrives as a space, so ``...00 02:00`` is read as
    ``...00+02:00``.
    """
    text = value.strip()
    if len(text) > 19 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            422,
            "invalid_timestamp",
            f"{field} must be an ISO 8601 timestamp, e.g. 2026-05-01T00:00:00Z",
            field=field,
        ) from None
    if moment.tzinfo is None:
        raise ApiError(
            422,
            "invalid_timestamp",
            f"{field} must include a time zone offset (Z or +02:00)",
            field=field,
        )
    if not EARLIEST <= moment < LATEST:
        raise ApiError(
            422,
            "invalid_timestamp",
            f"{field} must be between the years 2000 and 2199",
            field=field,
        )
    return as_utc(moment)


def stats_range(
    raw_from: str | None, raw_to: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """``[from, to)`` in whole minutes: the last 24 hours by default, at most 93 days."""
    given_start = parse_timestamp(raw_from, "from") if raw_from is not None else None
    end = parse_timestamp(raw_to, "to") if raw_to is not None else now
    start = given_start if given_start is not None else end - DEFAULT_RANGE
    if start >= end:
        raise ApiError(422, "invalid_range", "from must be before to", field="from")
    if end - start > MAX_RANGE:
        raise ApiError(
            422, "range_too_long", "the range from..to may span at most 93 days", field="from"
        )
    start = bucket_start(start, MINUTE)
    floor = bucket_start(end, MINUTE)
    return start, floor if floor == end else floor + timedelta(seconds=MINUTE)


@router.get("/{stream_id}/stats", response_model=StreamStats, responses=_ERRORS)
def stream_stats(
    stream_id: str,
    request: Request,
    account_id: Account,
    from_: Annotated[
        str | None, Query(alias="from", max_length=40, description=_TIMESTAMP_HELP)
    ] = None,
    to: Annotated[str | None, Query(max_length=40, description=_TIMESTAMP_HELP)] = None,
) -> StreamStats:
    """Counts by status, segments, delivery rate and throughput over ``[from, to)``."""
    runtime = runtime_of(request)
    start, end = stats_range(from_, to, runtime.clock())
    with runtime.session_factory() as session:
        stream = _owned_stream(session, account_id, stream_id)
        totals = read_stats(session, stream.id, start, end)
    counts = {status.value: totals.counts.get(status.value, 0) for status in MessageStatus}
    settled = sum(counts[s.value] for s in SETTLED_STATUSES)
    minutes = totals.series_seconds / MINUTE
    sent = counts[MessageStatus.sent.value]
    return StreamStats(
        stream_id=str(stream.id),
        from_=start,
        to=end,
        accepted=totals.counts.get(ACCEPTED, 0),
        counts=counts,
        segments=Segments(
            accepted=totals.segments.get(ACCEPTED, 0),
            sent=totals.segments.get(MessageStatus.sent.value, 0),
            delivered=totals.segments.get(MessageStatus.delivered.value, 0),
        ),
        delivery_rate=round(counts[MessageStatus.delivered.value] / settled, 4)
        if settled
        else None,
        throughput_per_minute=Throughput(
            bucket_seconds=totals.series_seconds,
            average_sent_per_minute=round(sent / ((end - start).total_seconds() / MINUTE), 3),
            points=[
                ThroughputPoint(
                    at=point.at,
                    accepted=point.accepted,
                    sent=point.sent,
                    delivered=point.delivered,
                    errors=point.errors,
                    sent_per_minute=round(point.sent / minutes, 3),
                )
                for point in totals.series
            ],
        ),
        last_activity_at=as_utc(stream.last_activity_at) if stream.last_activity_at else None,
    )


def _owned_stream(session, account_id: uuid.UUID, stream_id: str):  # type: ignore[no-untyped-def]
    """The account's live stream, or 404 (also for another account's id: invariant 4)."""
    try:
        key = uuid.UUID(stream_id)
    except ValueError:
        raise not_found("stream") from None
    stream = session.execute(
        select(Stream.id, Stream.last_activity_at).where(
            Stream.id == key, Stream.account_id == account_id, Stream.deleted_at.is_(None)
        )
    ).first()
    if stream is None:
        raise not_found("stream")
    return stream
