"""What the send pipeline knows about one waiting message (``Job``), from its load to its
record, and what a step says about it: its status changes and its log lines."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from schemas.enums import MessageStatus, StreamType
from schemas.events import StatusChange
from workers.providers.base import OutboundMessage

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """What the pipeline knows about one waiting message."""

    message_id: uuid.UUID
    stream_id: uuid.UUID
    account_id: uuid.UUID
    stream_type: StreamType
    sender: str | None
    recipient: str
    body: str
    segments: int
    encoding: str
    #: Claims made so far (``messages.attempts``), and where the current round of
    #: ``max_send_attempts`` began (``messages.attempts_base``: a replay moves it).
    attempts: int
    attempts_base: int
    expires_at: datetime | None
    demo: bool
    settings: dict[str, Any]
    #: WhatsApp template or media (``messages.content``); None for text.
    content: dict[str, Any] | None = None
    #: The message's own callback address, if it has one.
    callback_url: str | None = None
    #: What the message's stored body masks of ``body`` (an OTP code): kept out of
    #: whatever the pipeline keeps or logs of a carrier's words.
    hidden: frozenset[str] = frozenset()

    def outbound(self) -> OutboundMessage:
        return OutboundMessage(
            reference=str(self.message_id),
            sender=self.sender,
            recipient=self.recipient,
            body=self.body,
            segments=self.segments,
            encoding=self.encoding,
            stream_id=str(self.stream_id),
            content=self.content,
        )

    def change(
        self,
        status: MessageStatus,
        at: datetime,
        *,
        detail: str | None = None,
        in_rollup: bool = False,
    ) -> StatusChange:
        """This message's change to ``status`` at ``at``, to record with the statement that
        makes it (``core.message_states``)."""
        return StatusChange(
            message_id=self.message_id,
            stream_id=self.stream_id,
            account_id=self.account_id,
            stream_type=self.stream_type.value,
            status=status,
            at=at,
            segments=self.segments,
            detail=detail,
            in_rollup=in_rollup,
        )


def message_log(job: Job) -> Any:
    """The logger bound to one message; made only where something may be logged about it
    (binding on the path every message takes cost more than the logging it served)."""
    return log.bind(message_id=str(job.message_id), stream_id=str(job.stream_id))
