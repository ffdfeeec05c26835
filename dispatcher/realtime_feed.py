"""The realtime feed: one snapshot per stream each second, as Server-Sent Events.

Rates and errors come from the activity counters every process writes (``core
.realtime_activity``); names, statuses and in-flight counts from PostgreSQL, once a second.
The feed runs as its own ASGI response: one task produces the events and one waits for the
client to leave; whichever ends first cancels the other, and the Redis connection, the
account's feed slot and the open-feeds gauge are released on the way out, whatever happened.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from threading import Lock

import anyio
import structlog
from sqlalchemy import and_, exists, func, literal, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core import metrics
from core.clock import as_utc
from core.realtime_activity import ActivityWindow
from core.runtime import Runtime
from core.stream_rules import shown_status
from schemas.enums import IN_FLIGHT_MESSAGE_STATUSES, StreamStatus, StreamType
from schemas.stats import RealtimeSnapshot
from schemas.tables import Message, Stream, StreamTag, status_is

log = structlog.get_logger(__name__)

#: In-flight messages are counted up to this many per stream (a huge backlog is not scanned).
IN_FLIGHT_CAP = 10_000
#: At most this many streams in one feed (the account's newest).
MAX_STREAMS = 500
#: A feed ends after this long; the browser's EventSource reconnects by itself (to any
#: replica, which spreads feeds again after a deploy).
MAX_FEED_SECONDS = 15 * 60
#: The browser waits this long before reconnecting.
RECONNECT_MS = 2000
FEED_TASK_NAME = "realtime-feed"


@dataclass(frozen=True, slots=True)
class FeedFilters:
    name: str | None = None
    status: StreamStatus | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FeedStream:
    id: uuid.UUID
    name: str
    type: StreamType
    status: StreamStatus
    in_flight: int


class FeedLimiter:
    """At most ``per_account`` open feeds per account in this process."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._open: dict[uuid.UUID, int] = {}
        self._lock = Lock()

    def acquire(self, account_id: uuid.UUID) -> bool:
        with self._lock:
            if self._open.get(account_id, 0) >= self._per_account:
                return False
            self._open[account_id] = self._open.get(account_id, 0) + 1
            return True

    def release(self, account_id: uuid.UUID) -> None:
        with self._lock:
            left = self._open.get(account_id, 0) - 1
            if left > 0:
                self._open[account_id] = left
            else:
                self._open.pop(account_id, None)

    def open_feeds(self) -> int:
        with self._lock:
            return sum(self._open.values())


def load_feed_streams(
    runtime: Runtime, account_id: uuid.UUID, filters: FeedFilters, now: datetime
) -> list[FeedStream]:
    """The account's live streams matching ``filters``, newest first, with their shown status
    and in-flight count (capped at ``IN_FLIGHT_CAP``)."""
    capped = (
        select(literal(1))
        .where(
            Message.stream_id == Stream.id,
            status_is(*IN_FLIGHT_MESSAGE_STATUSES),
        )
        .correlate(Stream)
        # In the in-flight index's order: a walk of the index is then the only plan that
        # needs no sort. Without it, with most messages in flight, the planner expects the
        # cap within a few rows and reads the table, all of it for an idle stream.
        .order_by(Message.created_at)
        .limit(IN_FLIGHT_CAP)
        .subquery()
    )
    in_flight = select(func.count()).select_from(capped).scalar_subquery()
    conditions = [Stream.account_id == account_id, Stream.deleted_at.is_(None)]
    if filters.name:
        escaped = filters.name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(Stream.name).like(f"%{escaped}%", escape="\\"))
    for tag in filters.tags:
        conditions.append(
            exists().where(and_(StreamTag.stream_id == Stream.id, StreamTag.tag == tag.strip()))
        )
    with runtime.session_factory() as session:
        rows = session.execute(
            select(
                Stream.id,
                Stream.name,
                Stream.type,
                Stream.status,
                Stream.last_activity_at,
                in_flight,
            )
            .where(*conditions)
            .order_by(Stream.created_at.desc(), Stream.id.desc())
            .limit(MAX_STREAMS)
        ).all()
    streams = []
    for row in rows:
        status = shown_status(
            StreamStatus(row.status),
            last_activity_at=as_utc(row.last_activity_at) if row.last_activity_at else None,
            in_flight=row[5] > 0,
            now=now,
        )
        if filters.status is None or status is filters.status:
            streams.append(FeedStream(row.id, row.name, StreamType(row.type), status, int(row[5])))
    return streams


def sse_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class RealtimeFeed(Response):
    """The ASGI response of ``GET /api/v1/realtime`` for one viewer.

    Takes ownership of an acquired ``FeedLimiter`` slot and gives it back when it ends.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        runtime: Runtime,
        account_id: uuid.UUID,
        filters: FeedFilters,
        limiter: FeedLimiter,
        *,
        max_seconds: float = MAX_FEED_SECONDS,
    ) -> None:
        super().__init__(media_type=self.media_type)
        self._runtime = runtime
        self._account_id = account_id
        self._filters = filters
        self._limiter = limiter
        self._max_seconds = max_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REALTIME_FEEDS.inc()
        log_ = log.bind(account_id=str(self._account_id))
        log_.info("realtime_feed_opened")
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )

            async def body(chunk: bytes) -> None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

            async with anyio.create_task_group() as group:

                async def produce() -> None:
                    await self._produce(body)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await _until_disconnected(receive)
                    group.cancel_scope.cancel()

                group.start_soon(produce, name=FEED_TASK_NAME)
                group.start_soon(watch, name=FEED_TASK_NAME)
            with anyio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we were writing
        finally:
            self._limiter.release(self._account_id)
            metrics.REALTIME_FEEDS.dec()
            log_.info("realtime_feed_closed")

    async def _produce(self, body: Callable[[bytes], Awaitable[None]]) -> None:
        runtime = self._runtime
        deadline = time.monotonic() + self._max_seconds
        await body(f"retry: {RECONNECT_MS}\n\n".encode())
        async with runtime.activity.reader() as reader:
            window = ActivityWindow(reader, self._account_id)
            while time.monotonic() < deadline:
                now = runtime.clock()
                streams = await run_in_threadpool(
                    load_feed_streams, runtime, self._account_id, self._filters, now
                )
                await window.refresh(time.time())
                for stream in streams:
                    activity = window.of(stream.id)
                    snapshot = RealtimeSnapshot(
                        stream_id=str(stream.id),
                        name=stream.name,
                        type=stream.type,
                        status=stream.status,
                        in_per_second=activity.in_per_second,
                        out_per_second=activity.out_per_second,
                        in_flight=stream.in_flight,
                        errors_last_minute=activity.errors_last_minute,
                        at=now,
                    )
                    await body(sse_event("snapshot", snapshot.model_dump_json()))
                if not streams:
                    await body(b": no matching streams\n\n")  # keeps proxies from timing out
                await anyio.sleep(1.0 - (time.time() % 1.0))
        await body(sse_event("end", json.dumps({"reason": "feed lifetime reached; reconnect"})))


async def _until_disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
