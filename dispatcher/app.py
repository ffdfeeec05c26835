"""The ASGI application factory."""

from __future__ import annotations

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
from dispatcher.errors import install_error_handlers
from dispatcher.realtime_feed import FeedLimiter
from dispatcher.request_metrics import RequestMetrics
from dispatcher.routes import messages, operations, realtime, stats, streams


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the ingress. Pass a ``runtime`` to share one (``streams dev``, tests)."""
    runtime = runtime or build_runtime(settings)
    app = FastAPI(
        title="Streams API",
        version="1",
        description="Send SMS and WhatsApp messages through streams; manage the streams.",
    )
    app.state.runtime = runtime
    app.state.token_cache = TokenCache(settings.auth_cache_seconds)
    app.state.activity_touch = ActivityTouch()
    app.state.trusted_proxies = tuple(parse_network(cidr) for cidr in settings.trusted_proxies)
    install_error_handlers(app)
    app.include_router(messages.router)
    app.include_router(streams.router)
    app.include_router(operations.router)
    app.include_router(stats.router)
    app.include_router(realtime.router)
    app.state.feed_limiter = FeedLimiter(realtime.FEEDS_PER_ACCOUNT)
    app.state.metrics_registry = exposition_registry(
        *([QueueDepthCollector(runtime.redis, NAMESPACE, QUEUES)] if runtime.redis else [])
    )

    app.add_middleware(RequestMetrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def create_app_from_environment() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (``streams serve``)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
