"""The long-lived parts one process needs, built once from settings at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
import redis
from sqlalchemy import Engine

from core.broker import build_broker
from core.clock import Clock, utcnow
from core.credentials import SecretBox
from core.database import SessionFactory, build_engine, build_session_factory
from core.enqueue_marks import EnqueueMarks
from core.message_metrics import count_acceptances
from core.realtime_activity import (
    ActivityCounters,
    MemoryActivityCounters,
    RedisActivityCounters,
)
from core.redis_clients import redis_client
from core.sealed_bodies import forget_sealed_bodies
from core.settings import Settings
from core.stats_rollup import install_stats_rollup
from core.status_feed import StatusFeed


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    broker: dramatiq.Broker
    secret_box: SecretBox
    redis: redis.Redis | None
    status_feed: StatusFeed
    clock: Clock = field(default=utcnow)
    #: Per-second activity for the realtime feed (Redis, or in memory without Redis).
    activity: ActivityCounters = field(default_factory=MemoryActivityCounters)
    enqueue_marks: EnqueueMarks = field(init=False)

    def __post_init__(self) -> None:
        # Reads the clock through the runtime, so a test that moves the clock moves it here.
        self.enqueue_marks = EnqueueMarks(self.session_factory, lambda: self.clock())

    def close(self) -> None:
        self.enqueue_marks.close()
        self.broker.close()
        self.engine.dispose()
        if self.redis is not None:
            self.redis.close()
        self.activity.close()


def build_runtime(
    settings: Settings,
    *,
    broker: dramatiq.Broker | None = None,
    clock: Clock = utcnow,
    role: str = "streams",
) -> Runtime:
    """Connect nothing yet: engines and clients connect lazily on first use. ``role`` names
    the process to PostgreSQL (``application_name``: ``streams-worker otp``, ...)."""
    engine = build_engine(
        settings.database_url, pool_size=settings.database_pool_size, application_name=role
    )
    session_factory = build_session_factory(engine)
    status_feed = StatusFeed()
    status_feed.install(session_factory)
    forget_sealed_bodies(session_factory)
    shared_redis = redis_client(settings.redis_url, settings) if settings.redis_url else None
    runtime = Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        status_feed=status_feed,
        broker=broker if broker is not None else build_broker(settings),
        secret_box=SecretBox(settings.require_secret_key()),
        redis=shared_redis,
        clock=clock,
    )
    install_observers(runtime)
    return runtime


def install_observers(runtime: Runtime) -> None:
    """What watches status changes: the stats rollup (inside each transaction), and after
    commit the accepted-messages metric and the realtime activity counters."""
    install_stats_rollup(runtime.session_factory)
    if runtime.settings.redis_url:
        # Never waits longer than the send path's own Redis calls (at most 1 s).
        runtime.activity = RedisActivityCounters(
            runtime.settings.redis_url,
            timeout_seconds=min(1.0, runtime.settings.redis_socket_timeout_seconds),
        )
    runtime.status_feed.subscribe(count_acceptances)
    runtime.status_feed.subscribe(runtime.activity.record)
