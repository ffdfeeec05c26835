"""Inbound (MO) messages: stored once, opt-out keywords applied to the account's suppression
list, and handed to the stream's callback. The caller commits, then enqueues the callback."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import metrics
from core.callback_events import INBOUND_EVENT, add_callbacks, inbound_payload
from core.clock import as_utc
from core.database import insert_ignoring_duplicates
from core.opt_out import opt_out_keyword
from core.phones import InvalidPhoneNumber, to_e164
from core.suppressions import suppress, unsuppress
from schemas.enums import StreamType
from schemas.tables import InboundMessage, Stream

log = structlog.get_logger(__name__)

_CALLBACK_TYPES = frozenset({StreamType.two_way.value, StreamType.whatsapp.value})


class InboundRejected(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class InboundIn:
    provider: str
    sender: str
    recipient: str | None
    text: str | None
    provider_message_id: str | None = None
    received_at: datetime | None = None
    media: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RecordedInbound:
    inbound_id: uuid.UUID
    duplicate: bool
    opt_out: str | None
    callback_id: uuid.UUID | None


def sender_number(text: str, field: str = "from") -> str:
    """The sender as E.164; WhatsApp sends its numbers without the ``+``."""
    candidate = text.strip()
    if candidate.isascii() and candidate.isdigit():
        candidate = "+" + candidate
    try:
        return to_e164(candidate)
    except InvalidPhoneNumber as exc:
        raise InboundRejected(field, f"{field} {exc}") from None


def _received_at(moment: datetime) -> datetime:
    """The provider's ``received_at`` in UTC, as every stored moment is."""
    try:
        return as_utc(moment)
    except OverflowError:  # an offset that carries it out of the calendar (year 1 or 9999)
        raise InboundRejected("received_at", "received_at is out of range") from None


def record_inbound(
    session: Session, stream: Stream, inbound: InboundIn, now: datetime
) -> RecordedInbound:
    """Store one inbound message. A provider message id seen before on this stream is a
    repeat (providers retry webhooks): nothing more happens."""
    sender = sender_number(inbound.sender)
    received_at = _received_at(inbound.received_at) if inbound.received_at else now
    action = opt_out_keyword(inbound.text)
    new_id = uuid.uuid4()
    statement = insert_ignoring_duplicates(
        session, InboundMessage, ["stream_id", "provider", "provider_message_id"]
    )
    inserted = session.execute(
        statement.returning(InboundMessage.id),
        [
            {
                "id": new_id,
                "account_id": stream.account_id,
                "stream_id": stream.id,
                "provider": inbound.provider,
                "provider_message_id": inbound.provider_message_id,
                "sender": sender,
                "recipient": (inbound.recipient or None) and inbound.recipient[:32],
                "text": inbound.text,
                "media": inbound.media,
                "opt_out": action,
                "received_at": received_at,
                "created_at": now,
            }
        ],
    ).scalar()
    if inserted is None:
        existing = session.scalar(
            select(InboundMessage.id).where(
                InboundMessage.stream_id == stream.id,
                InboundMessage.provider == inbound.provider,
                InboundMessage.provider_message_id == inbound.provider_message_id,
            )
        )
        return RecordedInbound(existing or new_id, True, None, None)
    if action == "stop":
        suppress(session, stream.account_id, sender, keyword="STOP", stream_id=stream.id, now=now)
    elif action == "start":
        unsuppress(session, stream.account_id, sender)
    metrics.INBOUND_MESSAGES.labels(inbound.provider, action or "none").inc()
    callback_id = None
    if stream.type in _CALLBACK_TYPES and (stream.settings or {}).get("callback_url"):
        callback_id = uuid.uuid4()
        row = session.get(InboundMessage, new_id)
        assert row is not None
        add_callbacks(
            session,
            [
                {
                    "id": callback_id,
                    "account_id": stream.account_id,
                    "stream_id": stream.id,
                    "event": INBOUND_EVENT,
                    "url": None,
                    "payload": inbound_payload(callback_id, row),
                }
            ],
            now,
        )
    log.info(
        "inbound_received",
        stream_id=str(stream.id),
        inbound_id=str(new_id),
        provider=inbound.provider,
        opt_out=action,
    )
    return RecordedInbound(new_id, False, action, callback_id)
