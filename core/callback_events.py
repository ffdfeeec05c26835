"""What customer callbacks say, and their outbox (``callback_deliveries``).

A callback is written as a row first (in the transaction that caused it, where there is one)
and then put on the ``callbacks`` queue; the row carries its attempts, its next attempt and,
at the end, ``delivered`` or ``dead``. Every payload has an ``event_id`` so a customer can
drop a repeat: delivery is at least once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from core.clock import as_utc
from schemas.tables import CallbackDelivery, InboundMessage, Message

STATUS_EVENT = "message.status"
INBOUND_EVENT = "message.inbound"
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


def add_callbacks(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """Insert pending callbacks. Each row gives ``id``, ``account_id``, ``stream_id``,
    ``event``, ``payload`` and ``url`` (a message's own URL, or None for the stream's)."""
    if not rows:
        return
    session.execute(
        insert(CallbackDelivery),
        [
            {
                **row,
                "state": PENDING,
                "attempts": 0,
                "window_started_at": now,
                "next_attempt_at": now,
                "created_at": now,
            }
            for row in rows
        ],
    )
