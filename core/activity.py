"""Stream activity: ``last_activity_at`` written at most once a second per stream per process,
so a busy stream's row is not rewritten (and locked) on every message."""

from __future__ import annotations

import uuid
from threading import Lock
from time import monotonic


class ActivityTouch:
    def __init__(self, interval_seconds: float = 1.0) -> None:
        self._interval = interval_seconds
        self._last: dict[uuid.UUID, float] = {}
        self._lock = Lock()

    def due(self, stream_id: uuid.UUID) -> bool:
        """True at most once per interval for each stream; the caller then writes the row."""
        now = monotonic()
        with self._lock:
            if now - self._last.get(stream_id, float("-inf")) < self._interval:
                return False
            self._last[stream_id] = now
            return True
