"""Redis clients with bounded waits, for everything that talks to Redis on the send path
(the broker's enqueues, rate limits, OTP caps, the sandbox ledger).

A Redis that refuses connections fails fast by itself; one that hangs (a stalled server, a
network partition that drops packets) would otherwise hold the caller for as long as the
client library's default allows, which is forever in older redis-py releases. The ingress
must answer within a bound whatever Redis does: a message it cannot enqueue is left to the
outbox relay (invariant 1), so waiting longer buys nothing.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.settings import Settings


def redis_client(url: str, settings: Settings) -> redis.Redis:
    """A client for ``url`` whose connects and commands give up after the configured
    timeouts (``redis.TimeoutError``).

    A broken connection (Redis restarted, a pooled socket closed under us) is retried once on
    a fresh connection; a timeout is not retried, so one command never waits longer than
    ``redis_connect_timeout_seconds + redis_socket_timeout_seconds``.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
