"""Dead letters: messages that kept failing after their retries. They are kept, listed per
account, and can be replayed; nothing disappears."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session, SessionTransaction

from core import metrics
from core.clock import as_utc
from core.message_states import transition
from schemas.enums import MessageStatus
from schemas.tables import DeadLetter, Message, ProviderReceipt, Stream


def record_dead_letter(
    session: Session,
    message_id: uuid.UUID,
    *,
    reason: str,
    error_message: str | None,
    at: datetime,
) -> DeadLetter | None:
    """Keep a failed message as a dead letter (the caller commits). It is counted in
    ``streams_message_dead_letters_total{type,reason}`` when that commit succeeds, never
    before and never if the transaction is rolled back. None if the message is unknown."""
    message = session.get(Message, message_id)
    if message is None:
        return None
    letter = DeadLetter(
        id=uuid.uuid4(),
        message_id=message.id,
        account_id=message.account_id,
        stream_id=message.stream_id,
        queue=message.stream_type,
        reason=reason,
        error_message=error_message,
        attempts=message.attempts - message.attempts_base,  # this round's
        created_at=at,
    )
    session.add(letter)
    _count_on_commit(session, letter)
    return letter


def dead_letter_log_fields(letter: DeadLetter) -> dict[str, object]:
    """What a ``message_dead_lettered`` log event says of ``letter``, wherever the letter
    was written: enough to follow the message and its stream, never its text."""
    return {
        "message_id": str(letter.message_id),
        "stream_id": str(letter.stream_id),
        "reason": letter.reason,
        "attempts": letter.attempts,
    }


#: ``session.info`` key: the letters (with their labels) this session's transaction added,
#: not yet counted.
_UNCOUNTED = "streams.uncounted_dead_letters"


def _count_on_commit(session: Session, letter: DeadLetter) -> None:
    """Count ``letter`` in ``streams_message_dead_letters_total`` when its transaction
    commits, and not at all if it is rolled back (whole or to a savepoint)."""
    uncounted = session.info.get(_UNCOUNTED)
    if uncounted is None:
        uncounted = session.info[_UNCOUNTED] = []
        event.listen(session, "after_commit", _count_committed)
        event.listen(session, "after_transaction_end", _forget_uncommitted)
    uncounted.append((letter, letter.queue, letter.reason))


def _count_committed(session: Session) -> None:
    uncounted = session.info[_UNCOUNTED]
    for letter, queue, reason in uncounted:
        if inspect(letter).persistent:  # a savepoint rollback expunges what it added
            metrics.MESSAGE_DEAD_LETTERS.labels(queue, reason).inc()
    uncounted.clear()


def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own transaction, not a savepoint
        session.info[_UNCOUNTED].clear()


class ReplayRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def replay_dead_letter(session: Session, letter: DeadLetter, at: datetime) -> Message:
    """Put a dead letter's message back to ``queued`` with a fresh retry budget.

    The letter is claimed first with a conditional update of ``replayed_at`` (it row-locks
    the letter until the transaction ends), so of two racing replays, even one acting on a
    stale read, only one goes on (invariant 2). Raises ``ReplayRefused`` when it was
    replayed already, its message moved on, the carrier has reported on the message since
    (it took it: the outcome was only unknown to us), or it could never be sent (its stream
    is deleted, its validity over); the caller then rolls back. Otherwise the caller commits,
    then enqueues the message.
    """
    claimed = session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == letter.id, DeadLetter.replayed_at.is_(None))
        .values(replayed_at=at)
        .returning(DeadLetter.id)
    ).first()
    if claimed is None:
        raise ReplayRefused("already_replayed", "This dead letter was replayed already.")
    reported = session.scalar(
        select(ProviderReceipt.status)
        .where(ProviderReceipt.message_id == letter.message_id)
        .order_by(ProviderReceipt.id.desc())
        .limit(1)
    )
    if reported is not None:
        # The outcome was unknown when it failed (the answer never came back), and the
        # carrier has since reported on it: it took the message, and a replay would send
        # it a second time.
        raise ReplayRefused(
            "carrier_reported",
            f"The carrier has reported this message {reported} since it failed; "
            "a replay would send it twice.",
        )
    _refuse_what_cannot_be_sent(session, letter.message_id, at)
    change = transition(
        session,
        letter.message_id,
        to=MessageStatus.queued,
        allowed_from=[MessageStatus.failed],
        at=at,
        detail="replayed from dead letters",
        values={
            # A new round of attempts. The claims go on numbering from where they were: a
            # worker still holding an old claim (stalled past the lease) finds its number
            # taken and cannot record its outcome on the replay's claim.
            "attempts_base": Message.__table__.c.attempts,
            "error_code": None,
            "error_message": None,
            "enqueued_at": None,
            "not_before": None,
            "hold_reason": None,
            "claimed_at": None,
        },
    )
    if change is None:
        status = session.scalar(select(Message.status).where(Message.id == letter.message_id))
        raise ReplayRefused(
            "not_failed", f"The message is {status} now, no longer failed; nothing to replay."
        )
    message = session.scalars(select(Message).where(Message.id == letter.message_id)).one()
    return message


def _refuse_what_cannot_be_sent(session: Session, message_id: uuid.UUID, at: datetime) -> None:
    """A replay that could only fail again (its stream is deleted) or expire (its validity
    is over) is refused, rather than answered "queued" with its letter used up."""
    deleted_at, expires_at = session.execute(
        select(Stream.deleted_at, Message.expires_at)
        .join(Stream, Stream.id == Message.stream_id)
        .where(Message.id == message_id)
    ).one()
    if deleted_at is not None:
        raise ReplayRefused(
            "stream_deleted", "The message's stream was deleted; it can no longer be sent."
        )
    if expires_at is not None and as_utc(expires_at) <= at:
        raise ReplayRefused(
            "expired",
            f"The message's validity ended at {as_utc(expires_at).isoformat()}; "
            "it can no longer be sent.",
        )
