"""Per-second activity counters behind the realtime feed, shared by every process.

Every committed status change is tallied (by a ``StatusFeed`` listener) into a one-second
bucket per account: a Redis hash ``streams:activity:<account>:<unix second>`` whose fields
are ``<stream id>:in``, ``:out`` and ``:err``, kept for three minutes. Any ingress process
reads the buckets of the last minute, so it sees the activity of every worker.

Why counters and not a pub/sub channel: a viewer who connects sees the last minute of errors
at once; nothing has to be unsubscribed when a viewer leaves (reading is a plain request);
a slow viewer cannot lose events; and the cost per change is one ``HINCRBY``, however many
viewers there are. Buckets are keyed by the time of publishing (not of the change), so a
second is complete once it is over, give or take the clock skew between hosts.

Without Redis (``streams dev``, where ingress and workers share one process) the same
counters live in memory.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from threading import Lock
from typing import Protocol

import anyio
import redis
import redis.asyncio
import structlog

from core.status_kinds import is_acceptance, is_departure, is_error
from schemas.events import StatusChange

log = structlog.get_logger(__name__)

KEY_PREFIX = "streams:activity:"
BUCKET_TTL_SECONDS = 180
WINDOW_SECONDS = 60
#: The name the feed's Redis connections carry (``CLIENT LIST`` shows who is reading).
READER_CLIENT_NAME = "streams-realtime"

Buckets = dict[int, dict[str, int]]


def bucket_key(account_id: uuid.UUID | str, second: int) -> str:
    return f"{KEY_PREFIX}{account_id}:{second}"


def tally(changes: Iterable[StatusChange]) -> dict[uuid.UUID, dict[str, int]]:
    """Per account, the field increments for ``changes``. Pure."""
    fields: dict[uuid.UUID, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for change in changes:
        account = fields[change.account_id]
        if is_acceptance(change):
            account[f"{change.stream_id}:in"] += 1
        elif is_departure(change):
            account[f"{change.stream_id}:out"] += 1
        elif is_error(change):
            account[f"{change.stream_id}:err"] += 1
    return {account: dict(values) for account, values in fields.items() if values}


class ActivityReader(Protocol):
    async def buckets(self, account_id: uuid.UUID, seconds: Sequence[int]) -> Buckets:
        """The counters of ``account_id`` in each of ``seconds`` (missing ones are empty)."""
        ...


class ActivityCounters(Protocol):
    def record(self, changes: Sequence[StatusChange]) -> None:
        """Tally committed changes (a ``StatusFeed`` listener)."""
        ...

    def reader(self) -> AbstractAsyncContextManager[ActivityReader]:
        """A reader for one viewer; whatever it opened is closed on exit, even when the
        viewer's task is cancelled."""
        ...

    def close(self) -> None: ...


class RedisActivityCounters:
    """Counters in Redis, written through a client of their own with short timeouts: the feed
    is best effort, and a Redis that hangs must not hold up a commit's other listeners."""

    def __init__(
        self, url: str, *, clock: Callable[[], float] = time.time, timeout_seconds: float = 1.0
    ) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._url = url
        self._clock = clock

    def close(self) -> None:
        self._client.close()

    def record(self, changes: Sequence[StatusChange]) -> None:
        increments = tally(changes)
        if not increments:
            return
        second = int(self._clock())
        pipeline = self._client.pipeline(transaction=False)
        for account_id, fields in increments.items():
            key = bucket_key(account_id, second)
            for name, amount in fields.items():
                pipeline.hincrby(key, name, amount)
            pipeline.expire(key, BUCKET_TTL_SECONDS)
        try:
            pipeline.execute()
        except redis.RedisError as exc:
            # The feed misses a beat; sending must not. Logged without the traceback because
            # an outage would otherwise print one per status change.
            log.warning("realtime_activity_not_recorded", error=type(exc).__name__)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[ActivityReader]:
        client = redis.asyncio.Redis.from_url(
            self._url,
            client_name=READER_CLIENT_NAME,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        try:
            yield _RedisReader(client)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()


class _RedisReader:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def buckets(self, account_id: uuid.UUID, seconds: Sequence[int]) -> Buckets:
        if not seconds:
            return {}
        async with self._client.pipeline(transaction=False) as pipeline:
            for second in seconds:
                pipeline.hgetall(bucket_key(account_id, second))
            results = await pipeline.execute()
        return {
            second: {key.decode(): int(value) for key, value in result.items()}
            for second, result in zip(seconds, results, strict=True)
        }


class MemoryActivityCounters:
    """The same counters in this process only: for ``streams dev``, where the workers run in
    the ingress process."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._buckets: dict[tuple[uuid.UUID, int], dict[str, int]] = {}
        self._lock = Lock()

    def record(self, changes: Sequence[StatusChange]) -> None:
        increments = tally(changes)
        if not increments:
            return
        second = int(self._clock())
        with self._lock:
            for account_id, fields in increments.items():
                bucket = self._buckets.setdefault((account_id, second), {})
                for name, amount in fields.items():
                    bucket[name] = bucket.get(name, 0) + amount
            oldest = second - BUCKET_TTL_SECONDS
            for key in [k for k in self._buckets if k[1] < oldest]:
                del self._buckets[key]

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[ActivityReader]:
        yield self

    def close(self) -> None:
        pass

    async def buckets(self, account_id: uuid.UUID, seconds: Sequence[int]) -> Buckets:
        with self._lock:
            return {s: dict(self._buckets.get((account_id, s), {})) for s in seconds}


@dataclass(frozen=True, slots=True)
class StreamActivity:
    in_per_second: int = 0
    out_per_second: int = 0
    errors_last_minute: int = 0


class ActivityWindow:
    """The last minute of one account's buckets, refreshed a second at a time.

    ``refresh(now)`` fetches the seconds not read yet, and the last two again: a second is
    read once it is over, and a change published a moment late (clock skew, a slow commit)
    still lands in it.
    """

    def __init__(self, reader: ActivityReader, account_id: uuid.UUID) -> None:
        self._reader = reader
        self._account_id = account_id
        self._buckets: Buckets = {}
        self._last_complete = 0

    async def refresh(self, now: float) -> None:
        last_complete = int(now) - 1
        first = last_complete - WINDOW_SECONDS + 1
        wanted = [
            s
            for s in range(first, last_complete + 1)
            if s not in self._buckets or s >= last_complete - 1
        ]
        self._buckets.update(await self._reader.buckets(self._account_id, wanted))
        for second in [s for s in self._buckets if s < first]:
            del self._buckets[second]
        self._last_complete = last_complete

    def of(self, stream_id: uuid.UUID) -> StreamActivity:
        """Messages in and out during the last complete second, errors over the last 60."""
        prefix = f"{stream_id}:"
        latest = self._buckets.get(self._last_complete, {})
        return StreamActivity(
            in_per_second=latest.get(prefix + "in", 0),
            out_per_second=latest.get(prefix + "out", 0),
            errors_last_minute=sum(b.get(prefix + "err", 0) for b in self._buckets.values()),
        )
