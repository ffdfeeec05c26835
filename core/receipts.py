"""Delivery receipts from providers (HTTP DLRs, WhatsApp statuses) applied to messages.

Receipts arrive in any order and more than once, sometimes before the worker has recorded
``sent``. So a receipt only ever moves a message forward: ``sent`` only from ``sending``;
``delivered`` / ``undelivered`` only from ``sending`` or ``sent``. A ``delivered`` message never
goes back to ``sent``, and a repeated receipt changes nothing.

The one way back: a ``failed`` message the carrier reports on. We fail a message whose outcome
we could not learn (the provider's answer never came back, or the worker lost its claim after
the call), and a receipt proves the carrier took it after all. The receipt is the truth, so
the message moves on to ``sent``, ``delivered`` or ``undelivered`` as it would have, its
error is cleared, and the stats take it out of the failures of the minute it failed in.
The same holds for an ``expired`` message that was claimed at least once: one whose attempt
timed out may have been taken, and expires when its retry would come too late, or when it
waits past its validity for a retry. So does a ``canceled`` one claimed at least once: it was
canceled while it waited for a retry, after an attempt the carrier may have taken. One that
expired or was canceled before any claim was never sent, so a receipt naming it changes
nothing.

A message of several parts (segments) gets one final status: ``delivered`` once every part is
reported delivered, ``undelivered`` (naming how many parts arrived) once every part is
reported and one of them was not. A receipt naming a provider id that no message carries yet
is kept and applied when the worker records the id (``resolve_waiting_receipts``).

So is one that names a message waiting for its retry (``queued`` after a call that timed
out, which the carrier may have taken): it is kept against the message, and applied when
the retry's ``sent`` is recorded. One naming a message no call has been made for yet is
not kept: the carrier cannot have it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.database import insert_ignoring_duplicates
from core.message_states import transition
from core.stats_rollup import Retraction, retract_from_rollup
from schemas.enums import MessageStatus
from schemas.events import StatusChange
from schemas.tables import Message, ProviderReceipt

ReceiptStatus = Literal["sent", "delivered", "undelivered"]
RECEIPT_STATUSES: frozenset[str] = frozenset({"sent", "delivered", "undelivered"})
#: What a receipt moves a message on from (``failed`` and ``expired`` apart: ``_move``).
_FINAL_FROM = (MessageStatus.sending, MessageStatus.sent)
_SENT_FROM = (MessageStatus.sending,)
#: What a receipt for a failed message clears, on top of what it sets.
_NO_ERROR = {"error_code": None, "error_message": None}
#: An ended message a receipt can contradict (``_contradictable``): the carrier may have it.
_ENDED_UNSURE = (MessageStatus.failed, MessageStatus.expired, MessageStatus.canceled)
#: What a message waits in until a worker sends it, for the first time or again.
_WAITING = (MessageStatus.scheduled, MessageStatus.queued)


@dataclass(frozen=True, slots=True)
class ReceiptIn:
    """A receipt as a provider reported it, already in our words."""

    provider: str
    status: ReceiptStatus
    provider_message_id: str | None
    #: Our message id, when the provider echoes it (WhatsApp ``biz_opaque_callback_data``).
    reference: str | None = None
    #: 1-based part number and part count for multipart messages; None for the whole message.
    part: int | None = None
    parts: int | None = None
    error_code: str | None = None


def multipart_outcome(
    expected_parts: int, part_statuses: Mapping[int, str]
) -> tuple[MessageStatus, str] | None:
    """The final status once every part has reported, else None. Pure."""
    reported = {part: status for part, status in part_statuses.items() if part >= 1}
    if len(reported) < max(expected_parts, 1):
        return None
    delivered = sum(1 for status in reported.values() if status == "delivered")
    detail = f"{delivered} of {len(reported)} parts delivered"
    if delivered == len(reported):
        return MessageStatus.delivered, detail
    return MessageStatus.undelivered, detail


def record_receipt(
    session: Session, receipt: ReceiptIn, now: datetime, *, stream_id: uuid.UUID | None = None
) -> StatusChange | None:
    """Apply one receipt (the caller commits). ``stream_id`` confines the look-up to a stream
    (WhatsApp webhooks are per stream). Returns the status change made, if any."""
    message = _find_message(session, receipt, stream_id)
    if message is None:
        if receipt.status != "sent" and receipt.provider_message_id:
            _store(session, receipt, None, receipt.provider_message_id, now)
        return None
    if _never_called(message):
        return None
    known_ids = (
        {}
        if message.provider_message_id or not receipt.provider_message_id
        else {"provider": receipt.provider, "provider_message_id": receipt.provider_message_id}
    )
    if receipt.status == "sent":
        # Never stored: a stored "sent" would stand in for the whole-message receipt.
        return _move(session, message, MessageStatus.sent, now, "provider receipt", known_ids)
    provider_id = receipt.provider_message_id or message.provider_message_id or str(message.id)
    _store(session, receipt, message.id, provider_id, now)
    return _evaluate(session, message, now, known_ids)


def resolve_waiting_receipts(
    session: Session, message_id: uuid.UUID, now: datetime
) -> StatusChange | None:
    """Apply the receipts a message with a recorded provider id could not take when they
    came: those that named that id before it was recorded (attached to the message now),
    and those that named the message itself while it waited for a retry. Applied as on
    arrival, so one applied before changes nothing. The caller commits."""
    message = _locked_message(session, Message.id == message_id)
    if message is None or not message.provider or not message.provider_message_id:
        return None
    session.execute(
        update(ProviderReceipt)
        .where(
            ProviderReceipt.provider == message.provider,
            ProviderReceipt.provider_message_id == message.provider_message_id,
            ProviderReceipt.message_id.is_(None),
        )
        .values(message_id=message.id)
        .execution_options(synchronize_session=False)
    )
    return _evaluate(session, message, now, {})


def move_failed_on(
    session: Session,
    message_id: uuid.UUID,
    to: MessageStatus,
    now: datetime,
    values: Mapping[str, object],
) -> StatusChange | None:
    """A receipt naming our own message id (the sandbox's, which needs no storing) for a
    message that is ``failed``, or ``expired`` or ``canceled`` after a claim: moved on as
    ``record_receipt`` moves one (see the module's docstring). None for any other message.
    The caller commits."""
    message = _locked_message(
        session,
        Message.id == message_id,
        Message.status.in_([status.value for status in _ENDED_UNSURE]),
    )
    if message is None or not _contradictable(message):
        return None
    return _move(session, message, to, now, "provider receipt", values)


def _find_message(
    session: Session, receipt: ReceiptIn, stream_id: uuid.UUID | None
) -> Message | None:
    conditions = []
    if receipt.reference:
        with contextlib.suppress(ValueError):
            conditions.append(Message.id == uuid.UUID(receipt.reference))
    if not conditions and receipt.provider_message_id:
        conditions += [
            Message.provider == receipt.provider,
            Message.provider_message_id == receipt.provider_message_id,
        ]
    if not conditions:
        return None
    if stream_id is not None:
        conditions.append(Message.stream_id == stream_id)
    # Locked, so parts reported at the same moment are counted one after the other.
    return _locked_message(session, *conditions)


def _locked_message(session: Session, *conditions: Any) -> Message | None:
    """The message matching ``conditions``, row-locked and read afresh: one webhook's
    receipts are applied in one session, and a locking SELECT does not refresh an object
    the session already holds."""
    return session.scalars(
        select(Message)
        .where(*conditions)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def _store(
    session: Session,
    receipt: ReceiptIn,
    message_id: uuid.UUID | None,
    provider_id: str,
    now: datetime,
) -> None:
    statement = insert_ignoring_duplicates(
        session, ProviderReceipt, ["provider", "provider_message_id", "part"]
    )
    session.execute(
        statement,
        [
            {
                "provider": receipt.provider,
                "provider_message_id": provider_id,
                "message_id": message_id,
                "part": receipt.part or 0,
                "parts": receipt.parts,
                "status": receipt.status,
                "error_code": receipt.error_code,
                "received_at": now,
            }
        ],
    )


def _evaluate(
    session: Session, message: Message, now: datetime, known_ids: dict[str, str]
) -> StatusChange | None:
    rows = session.execute(
        select(
            ProviderReceipt.part,
            ProviderReceipt.parts,
            ProviderReceipt.status,
            ProviderReceipt.error_code,
        )
        .where(ProviderReceipt.message_id == message.id)
        .order_by(ProviderReceipt.id)
    ).all()
    whole = [row for row in rows if row.part == 0]
    if whole:
        status = MessageStatus(whole[0].status)
        detail = "provider receipt"
        error_code = whole[0].error_code
    else:
        expected = max([row.parts for row in rows if row.parts] or [message.segments])
        outcome = multipart_outcome(expected, {row.part: row.status for row in rows})
        if outcome is None:
            return None
        status, detail = outcome
        error_code = next((row.error_code for row in rows if row.error_code), None)
    values: dict[str, object] = dict(known_ids)
    if status is MessageStatus.undelivered:
        values["error_code"] = "undelivered"
        values["error_message"] = (
            f"The carrier could not deliver it ({detail})."
            if not whole
            else "The carrier could not deliver it."
        ) + (f" Provider code: {error_code}." if error_code else "")
    return _move(session, message, status, now, detail, values)


def _move(
    session: Session,
    message: Message,
    to: MessageStatus,
    now: datetime,
    detail: str,
    values: Mapping[str, object],
) -> StatusChange | None:
    """Move ``message`` (as loaded, locked) to ``to`` on a receipt. From ``failed``, or
    ``expired`` after a claim (see the module's docstring), the error is cleared unless
    ``values`` sets one, the history says why it moved on, and the failure (or expiry) is
    taken out of the stats, only if this very update took it out of that status: where the
    row lock is not taken (SQLite), a receipt beside this one may have moved it since it
    was read."""
    if _contradictable(message):
        # Read now: the move below is a Core UPDATE, which does not touch ``message``.
        ended = MessageStatus(message.status)
        ended_at, error_code = message.updated_at, message.error_code
        change = transition(
            session,
            message.id,
            to=to,
            allowed_from=[ended],
            at=now,
            detail=(
                f"{detail}: the carrier took it after all (it had {ended.value}: {error_code})"
            ),
            values={**_NO_ERROR, **values},
        )
        if change is not None:
            # Counted in the minute it ended: its ``updated_at`` then, since nothing moves
            # a failed or expired message but a replay or a receipt.
            retract_from_rollup(
                session, Retraction(message.stream_id, ended, ended_at, message.segments)
            )
            return change
    return transition(
        session,
        message.id,
        to=to,
        allowed_from=_SENT_FROM if to is MessageStatus.sent else _FINAL_FROM,
        at=now,
        detail=detail,
        values=dict(values) or None,
    )


def _never_called(message: Message) -> bool:
    """``message`` (as loaded) waits for its first call: a receipt naming it is no
    carrier's, and kept it would be applied when the message is sent."""
    return message.status in {status.value for status in _WAITING} and message.attempts == 0


def _contradictable(message: Message) -> bool:
    """A receipt for ``message`` (as loaded) moves it on although it has ended: it failed,
    or it expired or was canceled after a claim, whose call the carrier may have taken."""
    if message.status == MessageStatus.failed.value:
        return True
    after_a_claim = (MessageStatus.expired.value, MessageStatus.canceled.value)
    return message.status in after_a_claim and message.attempts > 0
