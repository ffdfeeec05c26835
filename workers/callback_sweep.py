"""The callbacks' outbox sweep (run by ``streams relay``): a pending callback whose attempt
is long overdue lost its queue message (Redis was down at enqueue time, or the message was
dropped), so it is enqueued again. Rows are locked with ``SKIP LOCKED`` so several relays
share the work; a repeat enqueue is harmless (the attempt checks the row first). Status
changes whose follow-up job could not be enqueued after their commit
(``waiting_followups``) are enqueued the same way, and their rows deleted; the job is
idempotent, so one enqueued twice (a relay dying between the enqueue and the delete)
writes no second callback. The work of a job lost after its enqueue is made up for from
the tables: early receipts (``workers.waiting_receipts``) and callbacks from the status
history (``workers.missed_callbacks``)."""

from __future__ import annotations

import threading
from datetime import timedelta

import structlog
from sqlalchemy import delete, select, update

from core.callback_events import PENDING
from core.runtime import Runtime
from schemas.tables import CallbackDelivery, WaitingFollowUp
from workers.missed_callbacks import MissedCallbacks
from workers.queueing import enqueue_callback, enqueue_status_followup
from workers.waiting_receipts import WaitingReceipts

log = structlog.get_logger(__name__)


class CallbackSweep:
    def __init__(self, runtime: Runtime, batch: int = 500) -> None:
        self.runtime = runtime
        self.batch = batch
        self.history = MissedCallbacks(runtime)
        self.receipts = WaitingReceipts(runtime)

    def sweep(self) -> int:
        """Enqueue overdue pending callbacks and waiting follow-ups, and do the work of
        follow-up jobs that were lost (``workers.waiting_receipts``,
        ``workers.missed_callbacks``); returns how many overdue callbacks were enqueued."""
        self._sweep_followups()
        # What a lost follow-up job would have done: early receipts applied (their changes
        # are followed up in turn), then callbacks written.
        for name, lost_job_sweep in (
            ("waiting_receipts", self.receipts),
            ("history", self.history),
        ):
            try:
                lost_job_sweep.sweep()
            except Exception as exc:  # the overdue callbacks below must not wait on it
                log.warning("lost_job_sweep_failed", sweep=name, error=type(exc).__name__)
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

    def _sweep_followups(self) -> int:
        """Enqueue the follow-up jobs that could not be enqueued after their commit."""
        with self.runtime.session_factory() as session:
            waiting = session.scalars(
                select(WaitingFollowUp)
                .order_by(WaitingFollowUp.id)
                .limit(self.batch)
                .with_for_update(skip_locked=True)
            ).all()
            done = []
            try:
                for row in waiting:
                    enqueue_status_followup(self.runtime.broker, row.changes)
                    done.append(row.id)
            except Exception as exc:
                log.warning("followup_sweep_enqueue_failed", error=type(exc).__name__)
            if done:
                session.execute(delete(WaitingFollowUp).where(WaitingFollowUp.id.in_(done)))
            session.commit()
        if done:
            log.info("followup_sweep", enqueued=len(done))
        return len(done)

    def run(self, stop: threading.Event, interval_seconds: float = 10.0) -> None:
        while not stop.is_set():
            try:
                self.sweep()
            except Exception as exc:
                log.warning("callback_sweep_failed", error=type(exc).__name__)
            stop.wait(interval_seconds)
