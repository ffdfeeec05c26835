"""Scripted failures for fake servers: "answer the next N requests like this"."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse


@dataclass
class Failure:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Sleep this long before answering (longer than the client's timeout = a timeout).
    delay_seconds: float = 0.0
    #: Send the answer's body a byte at a time, this long apart: each byte comes within the
    #: client's read timeout, the whole body long past it (a carrier behind a slow proxy).
    drip_seconds: float = 0.0


def scripted_answer(failure: Failure, body: Any, status_code: int) -> Response:
    """``body`` as JSON with ``status_code`` and ``failure``'s headers, dripped if it says so."""
    if not failure.drip_seconds:
        return JSONResponse(body, status_code=status_code, headers=failure.headers)
    content = json.dumps(body).encode()

    async def drip():
        for byte in content:
            await asyncio.sleep(failure.drip_seconds)
            yield bytes([byte])

    return StreamingResponse(
        drip(), status_code=status_code, headers=failure.headers, media_type="application/json"
    )


class FailurePlan:
    def __init__(self) -> None:
        self._queue: deque[Failure] = deque()
        self._lock = Lock()

    def fail_next(self, times: int, failure: Failure) -> None:
        with self._lock:
            self._queue.extend([failure] * times)

    def take(self) -> Failure | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
