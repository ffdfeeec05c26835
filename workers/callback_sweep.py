"""The callbacks' outbox sweep (run by ``streams relay``): a pending callback whose attempt
is long overdue lost its queue message (Redis was down at enqueue time, or the message was
dropped), so it is enqueued again. Rows are locked with ``SKIP LOCKED`` so several relays
share the work; a repeat enqueue is harmless (the attempt checks the row first)."""

from __future__ import annotations

import threading
from datetime import timedelta

import structlog
from sqlalchemy import select, update

from core.callback_events import PENDING
from core.runtime import Runtime
from schemas.tables import CallbackDelivery
from workers.queueing import enqueue_callback

log = structlog.get_logger(__name__)


class CallbackSweep:
    def __init__(self, runtime: Runtime, batch: int = 500) -> None:
        self.runtime = runtime
        self.batch = batch

    def sweep(self) -> int:
        """Enqueue overdue pending callbacks; returns how many."""
        now = self.runtime.clock()
        grace = timedelta(seconds=self.runtime.settings.callbacks.sweep_grace_seconds)
        with self.runtime.session_factory() as session:
            ids = (
                session.execute(
                    select(CallbackDelivery.id)
                    .where(
                        CallbackDelivery.state == PENDING,
                        CallbackDelivery.next_attempt_at < now - grace,
                    )
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            done = []
            try:
                for delivery_id in ids:
                    enqueue_callback(self.runtime.broker, str(delivery_id))
                    done.append(delivery_id)
            except Exception as exc:
                log.warning("callback_sweep_enqueue_failed", error=type(exc).__name__)
            if done:
                # Due now: the next sweep leaves them alone for another grace period.
                session.execute(
                    update(CallbackDelivery)
                    .where(CallbackDelivery.id.in_(done))
                    .values(next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
            session.commit()
        if done:
            log.info("callback_sweep", enqueued=len(done))
        return len(done)

    def run(self, stop: threading.Event, interval_seconds: float = 10.0) -> None:
        while not stop.is_set():
            try:
                self.sweep()
            except Exception as exc:
                log.warning("callback_sweep_failed", error=type(exc).__name__)
            stop.wait(interval_seconds)
