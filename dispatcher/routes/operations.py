"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from core.metrics import render_metrics
from dispatcher.auth import runtime_of
from dispatcher.errors import error_response

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> dict[str, object] | Response:
    """The database and Redis answer a real query."""
    runtime = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if runtime.redis is not None:
        try:
            runtime.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    else:
        checks["redis"] = "not configured (in-process broker)"
    if any(value.startswith("unavailable") for value in checks.values()):
        failing = ", ".join(k for k, v in checks.items() if v.startswith("unavailable"))
        return error_response(503, "not_ready", f"Not ready: {failing} unreachable.")
    return {"status": "ready", "checks": checks}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format: this process (or all of ``serve --workers N``) and the depth
    of every queue."""
    payload, content_type = render_metrics(request.app.state.metrics_registry)
    return Response(payload, media_type=content_type)
