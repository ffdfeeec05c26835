"""What becomes of a message the pipeline does not send now: it **ends** (``failed``,
``rejected`` or ``expired``, with its error, and kept as a dead letter when asked) or it
**waits** (taken off the broker, for the relay to enqueue again when its time comes). Each
is one transaction of its own, conditional on the status the message is in, so a message
another worker moved meanwhile is left as that worker left it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core import metrics
from core.dead_letters import record_dead_letter
from core.message_states import MESSAGES, transition
from core.runtime import Runtime
from schemas.enums import MessageStatus
from workers.jobs import Job

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
    ) -> bool:
        """Move the message to a final ``status`` with its error, in one transaction (and
        keep it as a dead letter when asked). ``claim``: the attempt of the caller's claim,
        for a move out of ``sending`` (``core.message_states.transition``). False when it was
        no longer in ``allowed_from`` (or on that claim), and nothing changed."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                job.message_id,
                to=status,
                allowed_from=allowed_from,
                at=now,
                detail=detail or code,
                values={"error_code": code, "error_message": reason},
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
        with self.runtime.session_factory() as session:
            hold(session, job.message_id, self.runtime.clock(), until=until, reason=reason)
            session.commit()
        metrics.MESSAGES_HELD.labels(job.stream_type.value, reason).inc()
        log_.debug("message_held", reason=reason, until=until.isoformat())
        return False


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


def hold(
    session: Session, key: uuid.UUID, now: datetime, *, until: datetime | None, reason: str
) -> None:
    """Take a queued message off the broker, in ``session``'s transaction: the relay
    enqueues it again at ``until`` (or, with no time, when its stream accepts sends
    again)."""
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == key, MESSAGES.c.status == MessageStatus.queued.value)
        .values(enqueued_at=None, not_before=until, hold_reason=reason, updated_at=now)
    )
