"""Scripted failures for fake servers: "answer the next N requests like this"."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from threading import Lock
from typing import Any


@dataclass
class Failure:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Sleep this long before answering (longer than the client's timeout = a timeout).
    delay_seconds: float = 0.0


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
