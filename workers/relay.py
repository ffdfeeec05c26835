"""The outbox relay (``streams relay``): whatever was accepted but is not on a queue gets
there, on time.

Each sweep:
* releases scheduled messages whose ``send_at`` falls within the look-ahead;
* releases held messages (rate limit, quiet hours, retry back-off) whose ``not_before``
  falls within the look-ahead;
* takes back messages claimed longer than ``claim_lease_seconds`` ago (their worker died);
  one whose claims have used up ``max_send_attempts``, or whose provider has no idempotency
  key (WhatsApp), fails instead, as a dead letter (the carrier may have taken it: a message
  whose record keeps failing is never offered forever, and a WhatsApp message is never
  offered twice on its own);
* enqueues queued messages that never reached the broker (Redis was down, or the ingress
  died between commit and enqueue), once the ingress' own grace period has passed;
* enqueues the messages a worker parked because their stream accepted no sends (disabled,
  restricted, or back in draft), once it does again; asking which streams have messages
  parked costs one probe per such stream, not a walk of their backlogs (migration 0013);
* expires the parked messages whose validity has ended while their stream was paused, at
  that time rather than once the stream is back (migration 0015);
* fails, with ``stream_deleted``, the messages a deleted stream still has waiting
  (scheduled, queued, held), a page at a time, rather than each at its own time, which may
  be weeks off; the streams still to look at are read off their own index (migration 0017);
* enqueues again queued messages the broker lost when Redis lost its data (it restarted
  empty, failed over to an empty replica, or was flushed): the relay keeps a sentinel in
  the broker's Redis (``workers.broker_epoch``), and once it finds the sentinel gone it
  enqueues again, a page at a time, every queued message marked enqueued before that
  (plus the ingress' grace, for marks written just after their enqueue), whatever else
  waits on the queues by then; a job that did survive is turned into a no-op by the claim;
* enqueues again queued messages marked enqueued over ``relay_lost_after_seconds`` ago
  while their queue holds nothing in Redis (nothing ready, fetched or delayed). This covers
  what the sentinel cannot see: jobs dropped while Redis kept its data (a failover to a
  replica that lagged behind, a key evicted, a job dropped by a bug). As long as anything
  waits on a queue, its messages may still be on it and are left alone.

What is due within the look-ahead is enqueued with a broker delay for the remainder, so it
starts on time rather than one sweep late. Messages of paused or draft streams stay put
until the stream accepts sends again: parked, as a worker parks them. Rows are locked with
``FOR UPDATE SKIP LOCKED`` so several relays can run side by side.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
import structlog
from sqlalchemy import ColumnElement, case, or_, select, text, update
from sqlalchemy.orm import Session

from core import metrics
from core.broker import NAMESPACE, QUEUES
from core.clock import as_utc
from core.dead_letters import dead_letter_log_fields, record_dead_letter
from core.message_states import record_changes, transition
from core.queue_depth import empty_queues
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from schemas.enums import MessageStatus, StreamStatus
from schemas.events import StatusChange
from schemas.tables import (
    DELETED_WAITING_PREDICATE,
    PARKED_PREDICATE,
    STREAM_PAUSED_HOLD,
    DeadLetter,
    Message,
    Stream,
    is_parked,
    status_is,
)
from workers import broker_epoch
from workers.claims import RETRY_HOLD, attempts_used, spent_claim, stale_claim
from workers.outcomes import VALIDITY_PASSED, expire_in, fail_stream_deleted
from workers.queueing import (
    enqueue_deliveries,
    single_send_chunk_size,
    subscribe_status_followups,
)

log = structlog.get_logger(__name__)

_SENDABLE_STREAM = or_(Stream.status == StreamStatus.ready.value, Stream.deleted_at.is_not(None))
#: The streams that accept sends again (or were deleted) among those with parked messages.
#: Those are found by skipping through ``ix_messages_parked_stream`` from one stream to the
#: next (a recursive "loose index scan"): one probe per stream, however many it parked.
_PARKED_STREAMS = text(
    "WITH RECURSIVE parked(stream_id) AS ("
    f" SELECT (SELECT stream_id FROM messages WHERE {PARKED_PREDICATE}"
    " ORDER BY stream_id LIMIT 1)"
    " UNION ALL"
    f" SELECT (SELECT stream_id FROM messages WHERE {PARKED_PREDICATE}"
    " AND stream_id > parked.stream_id ORDER BY stream_id LIMIT 1)"
    " FROM parked WHERE parked.stream_id IS NOT NULL"
    ") "
    "SELECT streams.id FROM parked JOIN streams ON streams.id = parked.stream_id "
    f"WHERE streams.status = '{StreamStatus.ready.value}' OR streams.deleted_at IS NOT NULL"
).columns(Stream.__table__.c.id)


def relay_runtime(settings: Settings) -> Runtime:
    """The runtime of a ``streams relay`` process. The relay changes statuses too (spent
    claims failed, early receipts applied by the callback sweeps), so its changes are
    followed up like a worker's: customer callbacks included."""
    runtime = build_runtime(settings, role="streams-relay")
    subscribe_status_followups(runtime)
    return runtime


@dataclass(frozen=True, slots=True)
class SweepReport:
    released: int = 0
    held_released: int = 0
    reclaimed: int = 0
    relayed: int = 0
    lost_requeued: int = 0
    claims_spent: int = 0
    unparked: int = 0
    parked_expired: int = 0
    deleted_ended: int = 0

    @property
    def total(self) -> int:
        return (
            self.released
            + self.held_released
            + self.reclaimed
            + self.relayed
            + self.lost_requeued
            + self.claims_spent
            + self.unparked
            + self.parked_expired
            + self.deleted_ended
        )


@dataclass(frozen=True, slots=True)
class _Due:
    message_id: uuid.UUID
    queue: str
    at: datetime | None


#: ``streams_relay_sweeps_total``'s outcomes.
SWEEP_OK = "ok"
SWEEP_FAILED = "failed"

#: On a packed queue, messages go as one job when their due times fall in one step of this
#: many milliseconds; the job is delayed to the end of the step, so a message may go up to
#: this much after its time, never before it (a retry that came early would be held again).
#: The scheduled release promises its time to within a second.
RELEASE_STEP_MS = 100
_MICROSECOND = timedelta(microseconds=1)
#: How long after its deletion a stream may still gain messages: a send authenticated just
#: before the delete (or on an ingress whose token cache has not caught up, at most a
#: second) stores its rows when its request ends. A deleted stream is not marked done
#: before this has passed, so such rows are still found.
DELETED_STREAM_SETTLE = timedelta(minutes=5)


def _due_at(not_before: datetime | None, send_at: datetime | None) -> datetime | None:
    """When a waiting message may go: the later of its hold and its ``send_at``."""
    times = [as_utc(moment) for moment in (not_before, send_at) if moment is not None]
    return max(times) if times else None


def _jobs(
    rows: Sequence[_Due], now: datetime, size: Callable[[str], int]
) -> Iterator[tuple[str, int, list[_Due]]]:
    """``rows`` as jobs of up to ``size(queue)`` messages of one queue and one due time,
    each with its delay in milliseconds (0: at once), in the order of their first row. Due
    times are rounded up, never down: to a ``RELEASE_STEP_MS`` on packed queues (``size``
    above 1), to the millisecond on the others. Within a millisecond of now is now."""
    steps: dict[tuple[str, int], list[_Due]] = {}
    for row in rows:
        micros = (as_utc(row.at) - now) // _MICROSECOND if row.at is not None else 0
        step_ms = RELEASE_STEP_MS if size(row.queue) > 1 else 1
        delay_ms = 0 if micros <= 1_000 else -(-micros // (step_ms * 1_000)) * step_ms
        steps.setdefault((row.queue, delay_ms), []).append(row)
    for (queue, delay_ms), due in steps.items():
        step_size = size(queue)
        for start in range(0, len(due), step_size):
            yield queue, delay_ms, due[start : start + step_size]


class Relay:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        #: When ``_requeue_lost`` last looked (``time.monotonic``); None before it first did.
        self._lost_looked_at: float | None = None
        #: The broker epoch this relay last saw (``workers.broker_epoch``); for the logs.
        self._epoch: str | None = None

    def sweep(self) -> SweepReport:
        """One pass. Safe to run concurrently with ingress, workers and other relays."""
        now = self.runtime.clock()
        settings = self.runtime.settings
        horizon = now + timedelta(seconds=settings.relay_lookahead_seconds)
        lease_cutoff = now - timedelta(seconds=settings.claim_lease_seconds)
        claims_spent = self._fail_spent_claims(lease_cutoff)
        deleted_ended = self._end_deleted_waiting(now)
        report = SweepReport(
            claims_spent=claims_spent,
            deleted_ended=deleted_ended,
            released=self._back_to_queued(
                MessageStatus.scheduled,
                (status_is(MessageStatus.scheduled), Message.send_at <= horizon),
                due=Message.send_at,
                detail="released at send_at",
                reason="scheduled",
            ),
            reclaimed=self._back_to_queued(
                MessageStatus.sending,
                (stale_claim(lease_cutoff, settings.max_send_attempts),),
                due=None,
                detail="reclaimed: claim lease expired",
                reason="reclaimed",
            ),
            held_released=self._enqueue_waiting(
                (
                    Message.enqueued_at.is_(None),
                    is_parked(False),
                    Message.not_before.is_not(None),
                    Message.not_before <= horizon,
                ),
                reason="held",
            ),
            relayed=self._enqueue_waiting(
                (
                    Message.enqueued_at.is_(None),
                    is_parked(False),
                    Message.not_before.is_(None),
                    Message.updated_at < now - timedelta(seconds=settings.relay_grace_seconds),
                ),
                reason="missed",
            ),
            parked_expired=self._expire_parked(now),
            unparked=self._release_parked(),
            # The data-loss recovery first: what it enqueues makes a queue non-empty.
            lost_requeued=self._requeue_after_data_loss(now)
            + self._requeue_lost(now - timedelta(seconds=settings.relay_lost_after_seconds)),
        )
        if report.total:
            log.info(
                "relay_sweep",
                released=report.released,
                held_released=report.held_released,
                reclaimed=report.reclaimed,
                claims_spent=report.claims_spent,
                relayed=report.relayed,
                unparked=report.unparked,
                parked_expired=report.parked_expired,
                deleted_ended=report.deleted_ended,
                lost_requeued=report.lost_requeued,
            )
        return report

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``relay_interval_seconds`` until ``stop`` is set."""
        log.info("relay_started", interval_s=self.runtime.settings.relay_interval_seconds)
        while not stop.is_set():
            self._catch_up(stop)
            stop.wait(self.runtime.settings.relay_interval_seconds)
        log.info("relay_stopped")

    def _catch_up(self, stop: threading.Event) -> None:
        """Sweep until a sweep finds less than a batch (or ``stop`` is set, or a sweep
        raises: the next interval tries again). Each sweep is counted by outcome in
        ``streams_relay_sweeps_total`` and each success stamps
        ``streams_relay_last_success_timestamp_seconds``: a relay whose sweeps fail looks
        the same as one with nothing due in ``streams_relay_enqueued_total``, while
        everything invariant 1 leans on it for has stopped."""
        while not stop.is_set():
            try:
                report = self.sweep()
            except Exception as exc:
                metrics.RELAY_SWEEPS.labels(SWEEP_FAILED).inc()
                log.warning("relay_sweep_failed", error=type(exc).__name__, detail=str(exc)[:200])
                return
            metrics.RELAY_SWEEPS.labels(SWEEP_OK).inc()
            metrics.RELAY_LAST_SUCCESS.set_to_current_time()
            if report.total < self.runtime.settings.relay_batch:
                return

    def _fail_spent_claims(self, lease_cutoff: datetime) -> int:
        """Fail, as dead letters, the messages whose claim outlived the lease and is never
        taken again (``workers.claims.spent_claim``): their claims used up
        ``max_send_attempts``, or their provider has no idempotency key (WhatsApp). Each
        claim was an attempt whose outcome was never recorded (the worker died in it, or its
        record failed), so the carrier may have taken the message. A replay is the
        operator's decision."""
        now = self.runtime.clock()
        budget = self.runtime.settings.max_send_attempts
        letters: list[DeadLetter] = []
        with self.runtime.session_factory() as session:
            rows = session.execute(
                select(Message.id, attempts_used().label("used"))
                .where(spent_claim(lease_cutoff, budget))
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if row.used >= budget:
                    reason = (
                        f"Claimed {row.used} times and never recorded (the worker died or "
                        "its record failed each time); the carrier may have taken it."
                    )
                    detail = "claim lease expired, attempts used up"
                else:
                    reason = (
                        "Claimed and never recorded (the worker died or its record failed); "
                        "the carrier may have taken it, and it would not recognise the "
                        "message if it were offered again."
                    )
                    detail = "claim lease expired, not offered again"
                moved = transition(
                    session,
                    row.id,
                    to=MessageStatus.failed,
                    allowed_from=[MessageStatus.sending],
                    at=now,
                    detail=detail,
                    values={"error_code": "claim_lease_expired", "error_message": reason},
                )
                letter = None
                if moved is not None:
                    letter = record_dead_letter(
                        session, row.id, reason="outcome_unknown", error_message=reason, at=now
                    )
                if letter is not None:
                    letters.append(letter)
            session.commit()
        # Each by its id: the one dead letter an operator must check with the carrier
        # before replaying it.
        for letter in letters:
            log.warning("message_dead_lettered", **dead_letter_log_fields(letter))
        if rows:
            log.warning("relay_failed_spent_claims", count=len(rows))
        return len(rows)

    def _back_to_queued(
        self,
        current: MessageStatus,
        where: Sequence[ColumnElement[bool]],
        *,
        due: Any,
        detail: str,
        reason: str,
    ) -> int:
        """Move due rows in ``current`` back to ``queued`` and enqueue them; returns how many
        were enqueued.

        Two transactions, in the ingress' order: the move is committed before any job exists,
        so a worker that takes a job at once reads ``queued``. (Enqueued from inside the
        move's transaction, a job due now could be fetched while the row still read
        ``scheduled``: the worker dropped it, and the relay then marked the row enqueued,
        with no job anywhere.) The moved rows are left unmarked with ``not_before`` at their
        due time, so if the relay dies between the two, the held-message sweep enqueues them
        (or parks them, as the second step does for a stream that accepts no sends now).
        """
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
                .where(*where)
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            ids = [row.id for row in rows]
            session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.status == current.value)
                .values(
                    status=MessageStatus.queued.value,
                    enqueued_at=None,
                    not_before=due,
                    hold_reason=None,
                    updated_at=now,
                )
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
            session.commit()
        return self._enqueue_waiting(
            (Message.id.in_(ids), Message.enqueued_at.is_(None)), reason=reason
        )

    def _expire_parked(self, now: datetime) -> int:
        """Expire the parked messages whose validity has ended: their stream accepts no
        sends, and by the time it does they could only go out late. Read off their own
        index (``ix_messages_parked_expires``), so a sweep with none due costs one probe.
        Returns how many."""
        with self.runtime.session_factory() as session:
            due = session.scalars(
                select(Message.id)
                .where(
                    status_is(MessageStatus.queued),
                    is_parked(),
                    Message.expires_at.is_not(None),
                    Message.expires_at <= now,
                )
                .order_by(Message.expires_at)
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(skip_locked=True)
            ).all()
            for message_id in due:
                expire_in(session, message_id, now, VALIDITY_PASSED)
            session.commit()
        if due:
            log.info("relay_expired_parked", count=len(due))
        return len(due)

    def _end_deleted_waiting(self, now: datetime) -> int:
        """Fail, with ``stream_deleted``, what deleted streams still have waiting: their
        scheduled messages and their queued ones (held, parked or on the broker), up to
        ``relay_batch`` a sweep; returns how many. Nothing can send them any more, and their
        own time may be weeks away. A stream with nothing scheduled, queued or being sent
        left, ``DELETED_STREAM_SETTLE`` after its deletion, is marked (``waiting_ended_at``)
        and never looked at again, so a sweep costs one probe of
        ``ix_streams_deleted_waiting`` once every deleted stream is done, and each stream's
        messages are read off the indexes of waiting ones, never its history."""
        budget = self.runtime.settings.relay_batch
        settled = now - DELETED_STREAM_SETTLE
        ended = 0
        finished: list[uuid.UUID] = []
        with self.runtime.session_factory() as session:
            streams = session.execute(
                select(Stream.id, Stream.deleted_at)
                .where(text(DELETED_WAITING_PREDICATE))
                .order_by(Stream.deleted_at)
                .limit(budget)
            ).all()
            for stream_id, deleted_at in streams:
                if ended >= budget:
                    break
                found = 0
                for status in (MessageStatus.scheduled, MessageStatus.queued):
                    waiting = session.scalars(
                        select(Message.id)
                        .where(status_is(status), Message.stream_id == stream_id)
                        .limit(budget - ended)
                        .with_for_update(skip_locked=True)
                    ).all()
                    found += len(waiting)
                    ended += sum(fail_stream_deleted(session, key, now) for key in waiting)
                if (
                    not found
                    and as_utc(deleted_at) <= settled
                    and not self._has_waiting(session, stream_id)
                ):
                    finished.append(stream_id)
            if finished:
                session.execute(
                    update(Stream)
                    .where(Stream.id.in_(finished), Stream.waiting_ended_at.is_(None))
                    .values(waiting_ended_at=now)
                    .execution_options(synchronize_session=False)
                )
            session.commit()
        if ended or finished:
            log.info(
                "relay_ended_deleted_streams_waiting",
                failed=ended,
                streams=len(streams),
                streams_done=len(finished),
            )
        return ended

    @staticmethod
    def _has_waiting(session: Session, stream_id: uuid.UUID) -> bool:
        """The stream has a message scheduled, queued or being sent (whose outcome may be a
        retry, queued again), locked by another transaction or not."""
        return any(
            session.scalar(
                select(Message.id)
                .where(status_is(*statuses), Message.stream_id == stream_id)
                .limit(1)
            )
            is not None
            for statuses in (
                (MessageStatus.scheduled,),
                (MessageStatus.queued, MessageStatus.sending),
            )
        )

    def _release_parked(self) -> int:
        """Enqueue the parked messages of the streams that accept sends again (or were
        deleted: the worker fails those); returns how many. Which streams have messages
        parked is read off their index, one probe per such stream (``_PARKED_STREAMS``),
        never by walking the messages themselves."""
        with self.runtime.session_factory() as session:
            streams = list(session.scalars(_PARKED_STREAMS))
        if not streams:
            return 0
        return self._enqueue_waiting(
            (is_parked(), Message.stream_id.in_(streams), Message.enqueued_at.is_(None)),
            reason="unparked",
            order=(),  # any order: a sort would read every parked message of the streams
        )

    def _enqueue_waiting(
        self,
        where: Sequence[ColumnElement[bool]],
        *,
        reason: str,
        order: Sequence[ColumnElement[Any]] = (Message.not_before,),
    ) -> int:
        """Enqueue the queued messages that ``where`` picks (off the broker, or lost by
        it), a batch at a time in ``order``, each delayed until its ``not_before`` and never
        before its ``send_at`` (a scheduled message the broker lost has no ``not_before``
        left: its release put it on the broker with its delay); returns how many. Those of
        a stream that accepts no sends now are parked instead, as a worker would park them:
        read once here, then left out of every sweep until their stream is back
        (``_release_parked``), rather than read and passed over again each second."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Planned with this run's values every time. psycopg prepares a statement
                # after five runs, and PostgreSQL may then settle on a generic plan, blind
                # to the cut-off, the type and status = 'queued': such a plan cannot use
                # the lost sweep's partial index and walks the queued backlog instead.
                session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            rows = session.execute(
                select(
                    Message.id,
                    Message.stream_type,
                    Message.not_before,
                    Message.send_at,
                    Message.hold_reason,
                    _SENDABLE_STREAM.label("sendable"),
                )
                .join(Stream, Stream.id == Message.stream_id)
                .where(status_is(MessageStatus.queued), *where)
                .order_by(*order)
                .limit(self.runtime.settings.relay_batch)
                .with_for_update(of=Message, skip_locked=True)
            ).all()
            if paused := [r.id for r in rows if not r.sendable]:
                session.execute(
                    update(Message)
                    .where(Message.id.in_(paused))
                    .values(enqueued_at=None, hold_reason=STREAM_PAUSED_HOLD, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                log.info("relay_parked", count=len(paused), reason=reason)
            done = self._enqueue(
                session,
                [
                    _Due(r.id, r.stream_type, _due_at(r.not_before, r.send_at))
                    for r in rows
                    if r.sendable
                ],
                now,
            )
            session.commit()
        metrics.RELAYED.labels(reason).inc(len(done))
        # Which holds ended (the night's quiet hours, a carrier's throttling, back-offs).
        enqueued = set(done)
        ended = Counter(
            r.hold_reason for r in rows if r.id in enqueued and r.hold_reason and r.not_before
        )
        for hold_reason, count in ended.items():
            metrics.HOLDS_RELEASED.labels(hold_reason).inc(count)
        return len(done)

    def _requeue_after_data_loss(self, now: datetime) -> int:
        """Once Redis has lost its data (its sentinel is gone: ``workers.broker_epoch``),
        enqueue again every queued message marked enqueued before the loss was found, plus
        the ingress' grace (``relay_grace_seconds``: a mark is written shortly after its
        enqueue, so a job enqueued before the loss may be marked a little after it was
        found). Returns how many this sweep enqueued.

        The work starts once that moment has passed, so each message enqueued again is
        marked after it and never picked a second time; several relays share it (``SKIP
        LOCKED``), a page of ``relay_batch`` per type and sweep, over the lost sweep's index.
        The loss stays recorded in the sentinel until none of those messages is left."""
        client = self.runtime.redis
        if client is None:
            return 0  # the in-process broker of ``streams dev`` lives and dies with us
        grace = timedelta(seconds=self.runtime.settings.relay_grace_seconds)
        try:
            epoch = broker_epoch.read_or_start(client, now, lost_before=now + grace)
        except redis.RedisError:
            return 0  # Redis is down: the next sweep looks again
        if epoch.started:
            log.warning(
                "broker_data_loss_detected",
                epoch=epoch.id,
                previous_epoch=self._epoch,
                marked_before=epoch.lost_before.isoformat() if epoch.lost_before else None,
            )
        self._epoch = epoch.id
        if epoch.lost_before is None or now < epoch.lost_before:
            return 0
        marked_before = epoch.lost_before
        counts = {
            queue: self._enqueue_marked(queue, marked_before, "data_loss") for queue in QUEUES
        }
        done = sum(counts.values())
        if done:
            log.warning(
                "broker_data_loss_requeued",
                count=done,
                queues={queue: count for queue, count in counts.items() if count},
                epoch=epoch.id,
            )
        if not self._marked_before(marked_before):
            try:
                if broker_epoch.settle(client, epoch):
                    log.info("broker_data_loss_settled", epoch=epoch.id)
            except redis.RedisError:
                pass  # the next sweep finds nothing left and settles it
        return done

    def _enqueue_marked(self, queue: str, marked_before: datetime, reason: str) -> int:
        """Enqueue again a batch of ``queue``'s queued messages marked enqueued before
        ``marked_before`` (their job may be lost); returns how many. The oldest marks first:
        the partial index on queued, marked messages (status, stream_type, enqueued_at)
        yields exactly those rows in that order, so the query reads them and stops, however
        many the planner expects (held and delivered rows of the type mislead its
        estimate)."""
        return self._enqueue_waiting(
            (Message.stream_type == queue, Message.enqueued_at < marked_before),
            reason=reason,
            order=(Message.enqueued_at,),
        )

    def _marked_before(self, moment: datetime) -> bool:
        """Some queued message is marked enqueued before ``moment``, locked by another
        relay or not (one probe of the lost sweep's index per type)."""
        with self.runtime.session_factory() as session:
            return any(
                session.scalar(
                    select(Message.id)
                    .where(
                        status_is(MessageStatus.queued),
                        Message.stream_type == queue,
                        Message.enqueued_at < moment,
                    )
                    .limit(1)
                )
                is not None
                for queue in QUEUES
            )

    def _requeue_lost(self, marked_before: datetime) -> int:
        """Enqueue again the waiting messages of queues that Redis holds nothing for,
        retries waiting for their back-off included (with what is left of their delay): jobs
        lost while Redis kept its sentinel (``_requeue_after_data_loss`` handles the rest).

        A lost job is only recognised after ``relay_lost_after_seconds``, so this looks a
        few times in that span rather than on every sweep. While it keeps finding full
        batches, it looks again on the next sweep."""
        if self.runtime.redis is None:
            return 0  # the in-process broker of ``streams dev`` lives and dies with us
        period = self.runtime.settings.relay_lost_after_seconds / 4
        looked_at = time.monotonic()
        if self._lost_looked_at is not None and looked_at - self._lost_looked_at < period:
            return 0
        self._lost_looked_at = looked_at
        try:
            empty = empty_queues(self.runtime.redis, NAMESPACE, QUEUES)
        except redis.RedisError:
            return 0  # Redis is down: the next sweep looks again
        if not empty:
            return 0
        done = 0
        for queue in sorted(empty):
            found = self._enqueue_marked(queue, marked_before, "lost")
            if found == self.runtime.settings.relay_batch:
                self._lost_looked_at = None  # more may wait: look again on the next sweep
            done += found
        if done:
            log.warning("relay_requeued_lost_messages", count=done, queues=sorted(empty))
        return done

    def _enqueue(self, session: Session, rows: list[_Due], now: datetime) -> list[uuid.UUID]:
        """Enqueue, delayed until each row's time, in the jobs the ingress makes for single
        sends (``single_send_chunk_size``: batch jobs on the packed queues, a job per message
        on the others). One job per message cost the workers a claim and a record each: a
        scheduled campaign drained at 0.14 × the no-op actor's rate, against 1.14 packed
        (``bench/throughput.py --preload relay``). Then mark; stops at the first broker
        failure, leaving the rest for the next sweep."""
        size = functools.partial(single_send_chunk_size, self.runtime.settings)
        done: list[uuid.UUID] = []
        try:
            for queue, delay_ms, job in _jobs(rows, now, size):
                enqueue_deliveries(
                    self.runtime.broker,
                    queue,
                    [str(row.message_id) for row in job],
                    delay_ms=delay_ms,
                )
                done.extend(row.message_id for row in job)
        except Exception as exc:
            log.warning(
                "relay_enqueue_failed", error=type(exc).__name__, pending=len(rows) - len(done)
            )
        if done:
            # A retry keeps its back-off on the row: the claim then refuses any other job
            # for it that comes early (``workers.claims``). Other holds are checked again
            # by their gates and need nothing kept.
            retry = Message.hold_reason == RETRY_HOLD
            session.execute(
                update(Message)
                .where(Message.id.in_(done))
                .values(
                    enqueued_at=now,
                    not_before=case((retry, Message.not_before), else_=None),
                    hold_reason=case((retry, Message.hold_reason), else_=None),
                )
                .execution_options(synchronize_session=False)
            )
        return done
