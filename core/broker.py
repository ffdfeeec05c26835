"""The dramatiq broker: Redis in production, the in-process stub for ``streams dev``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from core.queue_doorbell import DoorbellRedisBroker
from core.redis_clients import redis_client
from core.settings import Settings
from schemas.enums import StreamType

#: One queue per stream type (invariant 6).
QUEUES: tuple[str, ...] = tuple(t.queue_name for t in StreamType)
#: Customer callbacks have a queue and pool of their own, so a slow customer endpoint never
#: holds up sending.
CALLBACK_QUEUE = "callbacks"
#: Every queue a worker pool may consume.
ALL_QUEUES: tuple[str, ...] = (*QUEUES, CALLBACK_QUEUE)
NAMESPACE = "dramatiq"


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A broker with every queue declared and our middleware set.

    dramatiq's own Prometheus middleware is left out: it starts an HTTP server per process,
    and our metrics are exported by ``core.metrics`` instead.
    """
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=10 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=20, min_backoff=1000, max_backoff=10 * 60 * 1000),
        CurrentMessage(),
    ]
    broker: dramatiq.Broker
    if settings.redis_url:
        broker = DoorbellRedisBroker(
            client=redis_client(settings.redis_url, settings),
            namespace=NAMESPACE,
            middleware=middleware,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
            doorbell_queues=settings.doorbell_queues,
        )
    else:
        broker = StubBroker(middleware=middleware)
    for queue in ALL_QUEUES:
        broker.declare_queue(queue)
    return broker
