"""The outbox relay (``streams relay``): what was accepted but is not on a queue gets there.

Each sweep:
* releases scheduled messages whose ``send_at`` has come;
* takes back messages claimed longer than ``claim_lease_seconds`` ago (their worker died);
* enqueues queued messages that never reached the broker (Redis was down, or the ingress
  died between commit and enqueue), once the ingress' own grace period has passed.

Messages of paused or draft streams stay put until the stream accepts sends again. Rows are locked
with ``FOR UPDATE SKIP LOCKED`` so several relays can run side by side.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import or_, select, update

from core import metrics
from core.message_states import record_changes
from core.runtime import Runtime
from schemas.enums import MessageStatus, StreamStatus
from schemas.events import StatusChange
from schemas.tables import Message, Stream
from workers.queueing import enqueue_delivery

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    released: int = 0
    reclaimed: int = 0
    relayed: int = 0

    @property
    def total(self) -> int:
        return self.released + self.reclaimed + self.relayed


class Relay:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def sweep(self) -> SweepReport:
        """One pass. Safe to run concurrently with ingress, workers and other relays."""
        released = self._requeue(
            MessageStatus.scheduled,
            "released at send_at",
            "scheduled",
            lambda now: (Message.status == MessageStatus.scheduled.value, Message.send_at <= now),
        )
        lease = timedelta(seconds=self.runtime.settings.claim_lease_seconds)
        reclaimed = self._requeue(
            MessageStatus.sending,
            "reclaimed: claim lease expired",
            "reclaimed",
            lambda now: (
                Message.status == MessageStatus.sending.value,
                Message.claimed_at < now - lease,
            ),
        )
        relayed = self._enqueue_missed()
        report = SweepReport(released=released, reclaimed=reclaimed, relayed=relayed)
        if report.total:
            log.info("relay_sweep", released=released, reclaimed=reclaimed, relayed=relayed)
        return report

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``relay_interval_seconds`` until ``stop`` is set."""
        log.info("relay_started", interval_s=self.runtime.settings.relay_interval_seconds)
        while not stop.is_set():
            try:
                while self.sweep().total >= self.runtime.settings.relay_batch and not stop.is_set():
                    pass
            except Exception as exc:
                log.warning("relay_sweep_failed", error=type(exc).__name__, detail=str(exc)[:200])
            stop.wait(self.runtime.settings.relay_interval_seconds)
        log.info("relay_stopped")

    def _requeue(self, current: MessageStatus, detail: str, reason: str, where) -> int:  # type: ignore[no-untyped-def]
        """Move due rows in ``current`` back to ``queued`` and enqueue them."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            rows = session.execute(
                select(
                    Message.id,
                    Message.stream_type,
                    Message.stream_id,
                    Message.account_id,
                    Message.segments,
                )
                .where(*where(now))
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            ids = [row.id for row in rows]
            session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.status == current.value)
                .values(status=MessageStatus.queued.value, enqueued_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            record_changes(
                session,
                [
                    StatusChange(
                        message_id=row.id,
                        stream_id=row.stream_id,
                        account_id=row.account_id,
                        stream_type=row.stream_type,
                        status=MessageStatus.queued,
                        at=now,
                        segments=row.segments,
                        detail=detail,
                    )
                    for row in rows
                ],
            )
            enqueued = self._enqueue(session, [(row.id, row.stream_type) for row in rows], now)
            session.commit()
        metrics.RELAYED.labels(reason).inc(len(enqueued))
        return len(ids)

    def _enqueue_missed(self) -> int:
        now = self.runtime.clock()
        cutoff = now - timedelta(seconds=self.runtime.settings.relay_grace_seconds)
        with self.runtime.session_factory() as session:
            rows = session.execute(
                select(Message.id, Message.stream_type)
                .join(Stream, Stream.id == Message.stream_id)
                .where(
                    Message.status == MessageStatus.queued.value,
                    Message.enqueued_at.is_(None),
                    Message.updated_at < cutoff,
                    # Deleted streams' messages go too: the worker fails them with a reason.
                    or_(Stream.status == StreamStatus.ready.value, Stream.deleted_at.is_not(None)),
                )
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(of=Message, skip_locked=True)
            ).all()
            enqueued = self._enqueue(session, [(row.id, row.stream_type) for row in rows], now)
            session.commit()
        metrics.RELAYED.labels("missed").inc(len(enqueued))
        return len(enqueued)

    def _enqueue(self, session, rows: list[tuple[uuid.UUID, str]], now) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
        """Enqueue and mark; stops at the first broker failure (the rest wait for next time)."""
        done: list[uuid.UUID] = []
        try:
            for message_id, queue in rows:
                enqueue_delivery(self.runtime.broker, queue, str(message_id))
                done.append(message_id)
        except Exception as exc:
            log.warning(
                "relay_enqueue_failed", error=type(exc).__name__, pending=len(rows) - len(done)
            )
        if done:
            session.execute(
                update(Message)
                .where(Message.id.in_(done))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
        return done
