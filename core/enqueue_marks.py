"""Marking messages as enqueued, in batches, off the request path.

After a message reaches the broker it is marked (``enqueued_at``) so the relay leaves it
alone. Doing that in the request costs a second transaction per send, so marks are
collected and written by one UPDATE every ``interval`` seconds. The interval is short next
to the relay's grace (seconds) but long enough to gather several sends: at 50 ms a
process taking single sends (OTP at tens per second) wrote almost one mark transaction per
send, and that thread's interpreter time (a tenth of the ingress', measured with py-spy)
competed with the requests for the GIL. A mark lost in a crash is
harmless: the relay enqueues the message once more after its grace period and the worker's
claim turns the extra copy into a no-op.

A mark never lands on a message a worker has already taken off the broker (held for a rate
limit, quiet hours, a retry back-off or a paused stream): that would hide it from the
relay for good.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable

import structlog
from sqlalchemy import update

from core.clock import Clock
from core.database import SessionFactory
from schemas.enums import MessageStatus
from schemas.tables import Message

log = structlog.get_logger(__name__)


def mark_enqueued(session_factory: SessionFactory, clock: Clock, ids: list[uuid.UUID]) -> None:
    """One UPDATE for ``ids``; skips rows already marked or held."""
    with session_factory() as session:
        session.execute(
            update(Message)
            .where(
                Message.id.in_(ids),
                Message.status == MessageStatus.queued.value,
                Message.enqueued_at.is_(None),
                Message.hold_reason.is_(None),
            )
            .values(enqueued_at=clock())
            .execution_options(synchronize_session=False)
        )
        session.commit()


class EnqueueMarks:
    """Collects enqueued message ids and writes them every ``interval`` seconds from a
    background thread (started on first use, stopped by ``close``, which flushes)."""

    def __init__(
        self, session_factory: SessionFactory, clock: Clock, interval: float = 0.25
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._interval = interval
        self._pending: list[uuid.UUID] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            self._pending.extend(ids)
            if self._thread is None and not self._stop.is_set():
                thread = threading.Thread(target=self._run, name="enqueue-marks", daemon=True)
                thread.start()
                self._thread = thread  # published only once started: close() may join it

    def flush(self) -> None:
        """Write what is pending now (also called by the background thread)."""
        with self._lock:
            ids, self._pending = self._pending, []
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            try:
                mark_enqueued(self._session_factory, self._clock, chunk)
            except Exception as exc:
                log.warning("mark_enqueued_failed", count=len(chunk), error=type(exc).__name__)

    def close(self) -> None:
        """Stop the thread and write what is pending. Marks added later are dropped: the
        relay covers them (one extra enqueue, absorbed by the claim)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
