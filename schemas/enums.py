from __future__ import annotations

from enum import StrEnum


class StreamType(StrEnum):
    marketing = "marketing"
    transactional = "transactional"
    otp = "otp"
    two_way = "two_way"
    whatsapp = "whatsapp"

    @property
    def queue_name(self) -> str:
        """Each type has its own dramatiq queue and worker pool (invariant 6)."""
        return self.value


class StreamStatus(StrEnum):
    draft = "draft"
    ready = "ready"
    sending = "sending"  # reported, never stored: ready with activity in the last minute
    disabled = "disabled"
    restricted = "restricted"


class MessageStatus(StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    undelivered = "undelivered"
    failed = "failed"
    rejected = "rejected"
    expired = "expired"
    canceled = "canceled"


#: Statuses after which nothing more happens to a message.
FINAL_MESSAGE_STATUSES = frozenset(
    {
        MessageStatus.delivered,
        MessageStatus.undelivered,
        MessageStatus.failed,
        MessageStatus.rejected,
        MessageStatus.expired,
        MessageStatus.canceled,
    }
)

#: Statuses of messages the platform still has to act on.
IN_FLIGHT_MESSAGE_STATUSES = frozenset({MessageStatus.queued, MessageStatus.sending})
