"""The worker's opt-out check: a marketing message to a number on the account's suppression
list is ``rejected`` (``opted_out``) instead of sent. Checked at send time, so a STOP that
arrives after a message was accepted (or scheduled) still wins. OTP and transactional
messages are not marketing and still go."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy.orm import Session

from core.message_states import transition
from core.suppressions import is_suppressed
from schemas.enums import MessageStatus, StreamType
from schemas.tables import Message

log = structlog.get_logger(__name__)

OPTED_OUT = "opted_out"


def is_marketing(message: Message) -> bool:
    """Marketing streams' messages, and WhatsApp templates of the marketing category."""
    if message.stream_type == StreamType.marketing.value:
        return True
    content = message.content or {}
    return content.get("kind") == "template" and content.get("category") == "marketing"


def reject_if_opted_out(session: Session, message: Message, now: datetime) -> bool:
    """Reject a queued marketing message whose recipient opted out; True when it did."""
    if not is_marketing(message):
        return False
    if not is_suppressed(session, message.account_id, message.recipient):
        return False
    moved = transition(
        session,
        message.id,
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
        log.info("message_rejected_opted_out", message_id=str(message.id))
    return True
