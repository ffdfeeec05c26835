"""What follows a committed status change, off the sending path (``callbacks`` queue):

* a ``sent`` message picks up delivery receipts that arrived before its provider id was
  recorded, or while it waited for a retry (``core.receipts.resolve_waiting_receipts``);
* each change becomes a signed customer callback when the message has its own
  ``callback_url`` or its (two-way or WhatsApp) stream has one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.callback_events import STATUS_EVENT, add_callbacks, status_event_id, status_payload
from core.provider_choice import HTTP, WHATSAPP_CLOUD
from core.receipts import resolve_waiting_receipts
from core.runtime import Runtime
from schemas.enums import StreamType
from schemas.tables import Message, Stream
from workers.queueing import enqueue_callback

log = structlog.get_logger(__name__)

#: Stream types whose settings carry a callback set-up.
CALLBACK_STREAM_TYPES = frozenset({StreamType.two_way.value, StreamType.whatsapp.value})
_WEBHOOK_PROVIDERS = frozenset({HTTP, WHATSAPP_CLOUD})


def wants_callbacks(
    stream_type: str, stream_settings: Mapping[str, Any] | None, callback_url: str | None
) -> bool:
    """Whether a message's status changes become customer callbacks: it carries its own
    ``callback_url``, or its (two-way or WhatsApp) stream has one."""
    if callback_url:
        return True
    return stream_type in CALLBACK_STREAM_TYPES and bool(
        (stream_settings or {}).get("callback_url")
    )


def follows_up(
    stream_type: str,
    stream_settings: Mapping[str, Any] | None,
    callback_url: str | None,
    provider: str,
) -> bool:
    """Whether a status change of such a message has anything to follow: a callback, or,
    for a provider that reports receipts by webhook, receipts that may have arrived before
    the provider id was recorded. When False the follow-up job is not even enqueued."""
    return provider in _WEBHOOK_PROVIDERS or wants_callbacks(
        stream_type, stream_settings, callback_url
    )


class StatusFollowUp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def follow(self, changes: Sequence[Sequence[Any]]) -> None:
        """``changes``: ``[message_id, status, at (ISO 8601), detail]`` items."""
        with self.runtime.session_factory() as session:
            created = self.write(session, changes)
            session.commit()
        self.enqueue(created)

    def write(self, session: Session, changes: Sequence[Sequence[Any]]) -> list[uuid.UUID]:
        """What ``follow`` writes, in ``session``'s transaction (the caller commits): early
        receipts applied, and the callbacks not written before. Returns the new callbacks'
        ids, to ``enqueue`` once committed."""
        parsed = [
            (uuid.UUID(str(c[0])), str(c[1]), datetime.fromisoformat(str(c[2])), c[3])
            for c in changes
        ]
        now = self.runtime.clock()
        # Messages are locked in id order, as the claims and the receipt sweep lock them: a
        # late job and the history sweep following up the same changes in another order
        # could otherwise deadlock.
        for message_id in sorted({p[0] for p in parsed if p[1] == "sent"}):
            resolve_waiting_receipts(session, message_id, now)
        rows = session.execute(
            select(Message, Stream)
            .join(Stream, Stream.id == Message.stream_id)
            .where(Message.id.in_({p[0] for p in parsed}))
        ).all()
        found = {message.id: (message, stream) for message, stream in rows}
        callbacks: list[dict[str, Any]] = []
        for message_id, status, at, detail in parsed:
            if message_id not in found:
                continue
            message, stream = found[message_id]
            if stream.deleted_at is not None:
                continue
            if not wants_callbacks(stream.type, stream.settings, message.callback_url):
                continue
            event_id = status_event_id(message_id, status, at)
            callbacks.append(
                {
                    "id": event_id,
                    "account_id": message.account_id,
                    "stream_id": message.stream_id,
                    "event": STATUS_EVENT,
                    "url": message.callback_url,
                    "payload": status_payload(event_id, message, status, at, detail),
                }
            )
        return add_callbacks(session, callbacks, now)

    def enqueue(self, created: Sequence[uuid.UUID]) -> None:
        """Put committed callbacks on the callbacks queue. When the broker refuses one, the
        rest are not tried (each would wait out the same connection error): their rows are
        pending, and the callback sweep enqueues them."""
        for done, event_id in enumerate(created):
            try:
                enqueue_callback(self.runtime.broker, str(event_id))
            except Exception as exc:
                log.warning(
                    "callback_enqueue_failed",
                    error=type(exc).__name__,
                    left_to_sweep=len(created) - done,
                )
                return
