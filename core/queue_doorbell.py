"""A doorbell for queues whose first job must be picked up at once (OTP).

dramatiq's Redis consumer polls: when a fetch finds its queue empty it sleeps for up to the
worker's poll interval, so a job put on a quiet queue waits on average half of that before a
worker sees it, and every idle consumer spends a fetch (a Lua call) per interval. The OTP
pool was run with a 5 ms poll for that reason, which cost an idle pool about 0.14 of a core
on the 2-core benchmark machine and still added 2-5 ms to every code.

For the queues given as ``doorbell_queues`` the broker pushes a token on
``<namespace>:<queue>.doorbell`` with each job it enqueues, and an idle consumer of such a
queue waits for a token with ``BLPOP`` instead of sleeping: the job is fetched as soon as
it is on the queue, and an idle pool makes one call per poll interval instead of spinning.

A token is a hint, never the job. A job that reaches the queue without one (requeued at
shutdown or by dramatiq's maintenance) is fetched at the latest one poll interval later
(Redis rounds short blocking timeouts up to about 100 ms). The token list is trimmed, so
tokens that no consumer takes cannot pile up; a stale token costs one empty fetch. A token
that cannot be pushed is logged and dropped: the job itself is already on the queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed

log = structlog.get_logger(__name__)

#: Tokens kept per queue: enough to wake every idle consumer of a burst, small enough that
#: the stale ones left after it cost nothing worth counting.
MAX_TOKENS = 64


def doorbell_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:{queue_name}.doorbell"


class DoorbellRedisBroker(RedisBroker):
    """A ``RedisBroker`` whose ``doorbell_queues`` wake their idle consumers on enqueue."""

    def __init__(self, *args: Any, doorbell_queues: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doorbell_queues = frozenset(doorbell_queues)

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        """dramatiq's enqueue, then a token for a job that is due now on a doorbell queue."""
        enqueued = super().enqueue(message, delay=delay)
        if enqueued.queue_name in self.doorbell_queues:
            self.ring(enqueued.queue_name)
        return enqueued

    def ring(self, queue_name: str) -> None:
        """Push one token for ``queue_name`` (best effort: never raises)."""
        key = doorbell_key(self.namespace, queue_name)
        try:
            with self.client.pipeline(transaction=False) as pipeline:
                pipeline.lpush(key, 1)
                pipeline.ltrim(key, 0, MAX_TOKENS - 1)
                pipeline.execute()
        except redis.RedisError as exc:
            log.warning("doorbell_not_rung", queue=queue_name, error=type(exc).__name__)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if queue_name in self.doorbell_queues:
            return _DoorbellConsumer(self, queue_name, prefetch, timeout)
        return super().consume(queue_name, prefetch, timeout)


class _DoorbellConsumer(_RedisConsumer):  # type: ignore[misc]
    """dramatiq's Redis consumer, except that an empty fetch waits for a token (up to the
    poll interval) where dramatiq would sleep."""

    def __init__(
        self, broker: DoorbellRedisBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._key = doorbell_key(broker.namespace, queue_name)
        # A blocking call must end before the client's socket timeout would cut it off.
        socket_timeout = broker.client.connection_pool.connection_kwargs.get("socket_timeout")
        wait = timeout / 1000
        self._wait_seconds = min(wait, socket_timeout / 2) if socket_timeout else wait

    def __next__(self) -> MessageProxy | None:
        if not self.message_cache and self.outstanding_message_count < self.prefetch:
            try:
                fetched = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
                if not fetched:
                    self.broker.client.blpop([self._key], timeout=self._wait_seconds)
                    return None
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
            self.message_cache = fetched
        # A job in the cache (or a full prefetch): dramatiq's own path.
        return super().__next__()  # type: ignore[no-any-return]
