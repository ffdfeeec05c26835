"""A fake customer endpoint for callbacks: records every request (method, headers, raw body,
query), and can fail the next N with 500 or hang. ``dripping_customer`` answers with one
header line at a time, for ever, each well within a read timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def dripping_customer(every_seconds: float = 0.3) -> Iterator[str]:
    """A raw HTTP endpoint (its base URL) that reads a request, sends a status line, then
    one more header line every ``every_seconds`` until the block ends, never the end of
    its headers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(every_seconds):
                    conn.sendall(b"X-Slow: a\r\n")
            except OSError:  # the client gave up
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join(2)
        server.close()
