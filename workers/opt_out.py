"""The worker's opt-out check: a marketing message to a number on the account's suppression
list is ``rejected`` (``opted_out``) instead of sent. Checked at send time, so a STOP that
arrives after a message was accepted (or scheduled) still wins. OTP and transactional
messages are not marketing and still go."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from core.message_states import transition
from schemas.enums import MessageStatus, StreamType

log = structlog.get_logger(__name__)

OPTED_OUT = "opted_out"


def is_marketing(stream_type: str, content: Mapping[str, Any] | None) -> bool:
    """Marketing streams' messages, and WhatsApp templates of the marketing category."""
    if stream_type == StreamType.marketing.value:
        return True
    content = content or {}
    return content.get("kind") == "template" and content.get("category") == "marketing"


def reject_opted_out(session: Session, message_id: uuid.UUID, now: datetime) -> None:
    """Reject a queued message whose recipient opted out of marketing (the caller has
    checked both: ``is_marketing`` and the suppression list)."""
    moved = transition(
        session,
        message_id,
        to=MessageStatus.rejected,
        allowed_from=[MessageStatus.queued],
        at=now,
        detail=OPTED_OUT,
        values={
            "error_code": OPTED_OUT,
            "error_message": "The recipient opted out of marketing messages (STOP).",
        },
    )
    if moved is not None:
        log.info("message_rejected_opted_out", message_id=str(message_id))
