"""The ASGI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from core.activity import ActivityTouch
from core.broker import NAMESPACE, QUEUES
from core.logs import configure_logging
from core.metrics import exposition_registry
from core.network import parse_network
from core.queue_depth import QueueDepthCollector
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from dispatcher.auth import TokenCache
from dispatcher.body_limit import BodySizeLimit
from dispatcher.console import install_console
from dispatcher.errors import install_error_handlers
from dispatcher.group_commit import GroupCommitter
from dispatcher.ingress_quota import IngressGate, QuotaRule, build_ingress_quota
from dispatcher.openapi_bodies import document_raw_bodies
from dispatcher.otp import OneTimeCodes
from dispatcher.realtime_feed import FeedLimiter
from dispatcher.request_metrics import RequestMetrics
from dispatcher.routes import (
    callbacks,
    dead_letters,
    events,
    messages,
    operations,
    otp,
    realtime,
    stats,
    streams,
    suppressions,
    webhooks,
    whatsapp,
)
from workers.queueing import subscribe_status_followups


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the ingress. Pass a ``runtime`` to share one (``streams dev``, tests); a
    runtime the app built itself is closed when the app shuts down."""
    owns_runtime = runtime is None
    runtime = runtime or build_runtime(settings, role="streams-serve")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Request threads beyond the database pool would only queue for a connection, or
        # open and close overflow connections on every request.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.database_pool_size
        yield
        if owns_runtime:
            runtime.close()  # flushes pending enqueue marks, closes pools

    app = FastAPI(
        lifespan=lifespan,
        title="Streams API",
        version="1",
        description="Send SMS and WhatsApp messages through streams; manage the streams.",
    )
    app.state.runtime = runtime
    app.state.token_cache = TokenCache(settings.auth_cache_seconds)
    app.state.activity_touch = ActivityTouch()
    app.state.trusted_proxies = tuple(parse_network(cidr) for cidr in settings.trusted_proxies)
    app.state.ingress_gate = IngressGate(
        build_ingress_quota(runtime.redis),
        QuotaRule(settings.ingress_quota_per_second, settings.ingress_quota_burst),
    )
    app.state.group_committer = GroupCommitter(
        runtime, app.state.activity_touch, app.state.ingress_gate
    )
    app.state.one_time_codes = OneTimeCodes.from_runtime(
        runtime, app.state.activity_touch, app.state.ingress_gate
    )
    install_error_handlers(app)
    app.include_router(messages.router)
    app.include_router(streams.router)
    app.include_router(dead_letters.router)
    app.include_router(operations.router)
    app.include_router(whatsapp.router)
    app.include_router(callbacks.router)
    app.include_router(suppressions.router)
    app.include_router(webhooks.router)
    subscribe_status_followups(runtime)
    app.include_router(otp.router)
    app.include_router(events.router)
    app.include_router(stats.router)
    app.include_router(realtime.router)
    app.state.feed_limiter = FeedLimiter(realtime.FEEDS_PER_ACCOUNT)
    install_console(app)
    app.state.metrics_registry = exposition_registry(
        *([QueueDepthCollector(runtime.redis, NAMESPACE, QUEUES)] if runtime.redis else [])
    )

    document_raw_bodies(app, webhooks.RAW_BODY_MODELS)
    app.add_middleware(RequestMetrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def create_app_from_environment() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (``streams serve``)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
