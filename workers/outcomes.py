"""What becomes of a message the pipeline does not send now: it **ends** (``failed``,
``rejected`` or ``expired``, with its error, and kept as a dead letter when asked) or it
**waits** (taken off the broker, for the relay to enqueue again when its time comes). Each
is one transaction of its own, conditional on the status the message is in, so a message
another worker moved meanwhile is left as that worker left it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, update
from sqlalchemy.orm import Session

from core import metrics
from core.dead_letters import record_dead_letter
from core.message_states import MESSAGES, transition
from core.quiet_hours_changes import window_changed
from core.runtime import Runtime
from schemas.enums import MessageStatus
from schemas.tables import QUIET_HOURS_HOLD
from workers.claims import RATE_HOLD
from workers.jobs import Job
from workers.queueing import enqueue_delivery

#: Where a message waits to be sent.
WAITING = (MessageStatus.queued,)
#: Why a message found past its validity expires.
VALIDITY_PASSED = "validity passed before it could be sent"

_REJECTIONS = {
    "max_per_day": "The stream's daily message limit is reached.",
    "max_per_recipient_per_hour": "The stream's hourly limit for this recipient is reached.",
}


class Outcomes:
    """Ends and parkings of messages, each in a transaction of its own."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def end(
        self,
        job: Job,
        status: MessageStatus,
        *,
        code: str,
        reason: str,
        allowed_from: tuple[MessageStatus, ...] = WAITING,
        detail: str | None = None,
        dead_letter: str | None = None,
        claim: int | None = None,
        call_made: bool = True,
    ) -> bool:
        """Move the message to a final ``status`` with its error, in one transaction (and
        keep it as a dead letter when asked). ``claim``: the attempt of the caller's claim,
        for a move out of ``sending`` (``core.message_states.transition``); without
        ``call_made``, that claim's call was never made and it is not counted in
        ``attempts``, which then tell whether any call may have reached the carrier. False
        when it was no longer in ``allowed_from`` (or on that claim), and nothing changed."""
        now = self.runtime.clock()
        values: dict[str, object] = {"error_code": code, "error_message": reason}
        if claim is not None and not call_made:
            values["attempts"] = MESSAGES.c.attempts - 1
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                job.message_id,
                to=status,
                allowed_from=allowed_from,
                at=now,
                detail=detail or code,
                values=values,
                claim=claim,
            )
            if moved and dead_letter:
                record_dead_letter(
                    session, job.message_id, reason=dead_letter, error_message=reason, at=now
                )
            session.commit()
        return moved is not None

    def fail(
        self,
        job: Job,
        code: str,
        reason: str,
        log_: Any,
        *,
        from_status: MessageStatus = MessageStatus.queued,
        dead_letter: str | None = None,
        claim: int | None = None,
    ) -> bool:
        """``failed`` with ``code`` and ``reason`` (a dead letter when ``dead_letter`` gives
        why). False when the message had moved on, and nothing changed."""
        failed = self.end(
            job,
            MessageStatus.failed,
            code=code,
            reason=reason,
            allowed_from=(from_status,),
            dead_letter=dead_letter,
            claim=claim,
        )
        if failed:
            log_.warning("message_failed", error_code=code, dead_letter=bool(dead_letter))
        return failed

    def reject(self, job: Job, reason: str, log_: Any) -> None:
        """``rejected`` by a cap of the stream (``reason`` names it)."""
        self.end(job, MessageStatus.rejected, code=reason, reason=_REJECTIONS.get(reason, reason))
        metrics.MESSAGES_REJECTED.labels(job.stream_type.value, reason).inc()
        log_.info("message_rejected", reason=reason)

    def expire(self, job: Job, why: str, log_: Any) -> None:
        """``expired``: its validity passed, or will before it can be sent."""
        with self.runtime.session_factory() as session:
            expire_in(session, job.message_id, self.runtime.clock(), why)
            session.commit()
        log_.info("message_expired", why=why)

    def wait_until(self, job: Job, until: datetime, reason: str, log_: Any) -> bool:
        """Park the message until ``until``, or expire it if that is too late. Returns
        False: either way it is not sent now."""
        if job.expires_at is not None and until >= job.expires_at:
            self.expire(job, f"cannot be sent before it expires ({reason})", log_)
            return False
        now = self.runtime.clock()
        # Due before the relay would look at it again: on the broker with its delay now, as
        # the relay would, rather than a sweep late. Enqueued first and marked with its hold,
        # so no relay sweep between the two can enqueue it a second time.
        soon = until <= now + timedelta(seconds=self.runtime.settings.relay_lookahead_seconds)
        enqueued = soon and self._enqueue(job, until - now, log_)
        with self.runtime.session_factory() as session:
            if reason == QUIET_HOURS_HOLD and window_changed(session, job.stream_id, job.settings):
                # The account changed the window since this job read it, and released what
                # it held: due now, the relay hands it to the gate again under the new one.
                log_.info("quiet_hours_changed_meanwhile", until=until.isoformat())
                until = now
            hold(
                session,
                job.message_id,
                now,
                until=until,
                reason=reason,
                enqueued_at=now if enqueued else None,
            )
            session.commit()
        metrics.MESSAGES_HELD.labels(job.stream_type.value, reason).inc()
        # A quiet-hours hold happens once a message a night, may last twelve hours, and
        # changes no status: this line is its only trace, kept at the production level. A
        # throttled backlog parks each message many times: its parks stay at DEBUG.
        level = log_.info if reason == QUIET_HOURS_HOLD else log_.debug
        level("message_held", reason=reason, until=until.isoformat())
        return False

    def enqueue_held(self, job: Job, delay: timedelta, reason: str, log_: Any) -> None:
        """Put a message held for ``reason`` (committed) on the broker with ``delay`` and
        mark it enqueued, so it does not wait for a relay sweep. If the broker is down, it
        stays held and the relay releases it when due. Unlike ``wait_until``, it enqueues
        after the hold's commit: a retry's row is ``sending`` until then, and a job that came
        sooner would find it so and be dropped, leaving the row marked and no job."""
        if not self._enqueue(job, delay, log_):
            return
        with self.runtime.session_factory() as session:
            session.execute(
                update(MESSAGES)
                .where(
                    MESSAGES.c.id == job.message_id,
                    MESSAGES.c.status == MessageStatus.queued.value,
                    MESSAGES.c.hold_reason == reason,
                    MESSAGES.c.enqueued_at.is_(None),
                )
                .values(enqueued_at=self.runtime.clock())
            )
            session.commit()

    def _enqueue(self, job: Job, delay: timedelta, log_: Any) -> bool:
        """Put the message on the broker with ``delay``; False when the broker is down."""
        try:
            enqueue_delivery(
                self.runtime.broker,
                job.stream_type.queue_name,
                str(job.message_id),
                delay_ms=max(int(delay.total_seconds() * 1000), 0),
            )
        except Exception as exc:
            log_.warning("held_enqueue_failed_left_to_relay", error=type(exc).__name__)
            return False
        return True


def expire_in(session: Session, key: uuid.UUID, now: datetime, why: str) -> None:
    """``expired`` (``why`` its error), in ``session``'s transaction, if it still waits. It
    waits no more, so its hold (parked, held until a time) is cleared."""
    transition(
        session,
        key,
        to=MessageStatus.expired,
        allowed_from=WAITING,
        at=now,
        detail=why,
        values={
            "error_code": "expired",
            "error_message": why,
            "hold_reason": None,
            "not_before": None,
        },
    )


def fail_stream_deleted(session: Session, key: uuid.UUID, now: datetime) -> bool:
    """``failed`` with ``stream_deleted``, in ``session``'s transaction, if it is still
    scheduled or queued: its stream was deleted, so it can never be sent. Its hold is
    cleared; ``send_at`` stays as the customer set it. False when it had moved on."""
    return (
        transition(
            session,
            key,
            to=MessageStatus.failed,
            allowed_from=(MessageStatus.scheduled, *WAITING),
            at=now,
            detail="stream deleted",
            values={
                "error_code": "stream_deleted",
                "error_message": "The stream was deleted before sending.",
                "hold_reason": None,
                "not_before": None,
            },
        )
        is not None
    )


def hold(
    session: Session,
    key: uuid.UUID,
    now: datetime,
    *,
    until: datetime | None,
    reason: str,
    enqueued_at: datetime | None = None,
) -> None:
    """Take a queued message off the broker, in ``session``'s transaction: the relay
    enqueues it again at ``until`` (or, with no time, when its stream accepts sends
    again). ``enqueued_at``: the caller has put it back on the broker with its delay
    already, and the relay leaves it.

    A message parked for its place under a rate (``RATE_HOLD``) whose place is still ahead
    keeps it, when a later one comes: that is a second job for it (a redelivery), whose
    place goes unused, while its own job comes at the earlier one."""
    not_before: Any = until
    if reason == RATE_HOLD and until is not None:
        not_before = case(
            (
                and_(
                    MESSAGES.c.hold_reason == RATE_HOLD,
                    MESSAGES.c.not_before > now,
                    MESSAGES.c.not_before < until,
                ),
                MESSAGES.c.not_before,
            ),
            else_=until,
        )
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == key, MESSAGES.c.status == MessageStatus.queued.value)
        .values(enqueued_at=enqueued_at, not_before=not_before, hold_reason=reason, updated_at=now)
    )
