"""A fake customer endpoint for callbacks: records every request (method, headers, raw body,
query), and can fail the next N with 500 or hang."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.failures import Failure, FailurePlan


@dataclass
class FakeCustomer:
    failures: FailurePlan = field(default_factory=FailurePlan)
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    _lock: Lock = field(default_factory=Lock)

    def fail_next(self, times: int, status: int = 500, delay_seconds: float = 0.0) -> None:
        self.failures.fail_next(times, Failure(status=status, delay_seconds=delay_seconds))

    async def hook(self, request: Request) -> JSONResponse:
        raw = await request.body()
        with self._lock:
            self.attempts += 1
        failure = self.failures.take()
        if failure is not None:
            if failure.delay_seconds:
                await asyncio.sleep(failure.delay_seconds)
            return JSONResponse({"ok": False}, status_code=failure.status)
        with self._lock:
            self.received.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": raw,
                }
            )
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.hook, methods=["GET", "POST"])])
