"""The yardstick for the ingress: the smallest FastAPI app that does what any send endpoint
must at least do (read a small JSON body into a pydantic model, answer 202 with JSON).

It is served the way ``streams serve`` serves the ingress (``uvicorn.run`` with a factory, one
worker, the default loop and HTTP implementation, ``log_config=None``), so the two differ only
in what the application does per request. Run it as ``python -m bench.baseline_app``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class TrivialSend(BaseModel):
    """The same envelope as the real send body; the items are not looked at."""

    messages: list[dict[str, Any]] = Field(min_length=1)


def create_app() -> FastAPI:
    """One ``POST /v1/messages`` answering 202 ``{"ok": true}``, and ``GET /healthz``. The
    route is a coroutine, the cheapest way FastAPI can answer."""
    app = FastAPI(title="trivial baseline")

    @app.post("/v1/messages", status_code=202)
    async def accept(body: TrivialSend) -> dict[str, bool]:
        return {"ok": True}

    return _with_health(app)


def create_sync_app() -> FastAPI:
    """The same with a plain ``def`` route, which FastAPI runs in its thread pool as it runs
    the ingress' send route: shows what the thread hop alone costs."""
    app = FastAPI(title="trivial baseline (sync route)")

    @app.post("/v1/messages", status_code=202)
    def accept(body: TrivialSend) -> dict[str, bool]:
        return {"ok": True}

    return _with_health(app)


def _with_health(app: FastAPI) -> FastAPI:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the trivial app until SIGTERM or SIGINT."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sync", action="store_true", help="serve the plain-def route")
    args = parser.parse_args(argv)
    # The ingress runs with STREAMS_LOG_LEVEL=WARNING: no access lines there either.
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        "bench.baseline_app:create_sync_app" if args.sync else "bench.baseline_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
