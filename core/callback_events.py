"""What customer callbacks say, and their outbox (``callback_deliveries``).

A callback is written as a row first (in the transaction that caused it, where there is one)
and then put on the ``callbacks`` queue; the row carries its attempts, its next attempt and,
at the end, ``delivered`` or ``dead``. Every payload has an ``event_id`` so a customer can
drop a repeat: delivery is at least once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from core.clock import as_utc
from core.database import insert_ignoring_duplicates
from schemas.tables import CallbackDelivery, InboundMessage, Message

STATUS_EVENT = "message.status"
INBOUND_EVENT = "message.inbound"
#: The namespace of ``status_event_id``'s name-based UUIDs (fixed: changing it would give
#: changes already called back new ids).
_STATUS_EVENTS = uuid.UUID("5f0c3a52-7d55-4f1e-9a43-2b6f1c0e8d17")
PENDING, DELIVERED, DEAD, CANCELED = "pending", "delivered", "dead", "canceled"


def status_payload(
    event_id: uuid.UUID, message: Message, status: str, at: datetime, detail: str | None
) -> dict[str, Any]:
    error = (
        {"code": message.error_code, "message": message.error_message or message.error_code}
        if message.error_code and status in ("failed", "rejected", "undelivered", "expired")
        else None
    )
    return {
        "event": STATUS_EVENT,
        "event_id": str(event_id),
        "message_id": str(message.id),
        "internal_id": message.internal_id,
        "stream_id": str(message.stream_id),
        "recipient_phone": message.recipient,
        "status": status,
        "at": as_utc(at).isoformat(),
        "detail": detail,
        "segments": message.segments,
        "error": error,
    }


def inbound_payload(event_id: uuid.UUID, inbound: InboundMessage) -> dict[str, Any]:
    return {
        "event": INBOUND_EVENT,
        "event_id": str(event_id),
        "inbound_id": str(inbound.id),
        "stream_id": str(inbound.stream_id),
        "from": inbound.sender,
        "to": inbound.recipient,
        "text": inbound.text,
        "media": inbound.media,
        "received_at": as_utc(inbound.received_at).isoformat(),
        "provider": inbound.provider,
        "opt_out": inbound.opt_out,
    }


def status_event_id(message_id: uuid.UUID, status: str, at: datetime) -> uuid.UUID:
    """The ``event_id`` (and callback row id) of a status change: the same change always
    gets the same one, so a follow-up job delivered twice (queues deliver at least once)
    writes its callbacks once, and a customer can drop a repeat by ``event_id``."""
    moment = as_utc(at).astimezone(UTC).isoformat()
    return uuid.uuid5(_STATUS_EVENTS, f"{message_id}/{status}/{moment}")


def add_callbacks(session: Session, rows: list[dict[str, Any]], now: datetime) -> list[uuid.UUID]:
    """Insert pending callbacks; returns the ids inserted, in the order of ``rows`` (the
    order they are enqueued in: a message's ``sent`` before its ``delivered``). Each row
    gives ``id``, ``account_id``, ``stream_id``, ``event``, ``payload`` and ``url`` (a
    message's own URL, or None for the stream's). A row whose ``id`` is already there is
    left as it is."""
    if not rows:
        return []
    # Inserted in id order: two transactions inserting the same ids (a late follow-up job
    # and the history sweep) then meet at the first one they share, instead of each holding
    # one the other waits for (a deadlock).
    inserted = set(
        session.scalars(
            insert_ignoring_duplicates(session, CallbackDelivery, ["id"]).returning(
                CallbackDelivery.id
            ),
            [
                {
                    **row,
                    "state": PENDING,
                    "attempts": 0,
                    "window_started_at": now,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for row in sorted(rows, key=lambda row: row["id"])
            ],
        )
    )
    return [row["id"] for row in rows if row["id"] in inserted]
