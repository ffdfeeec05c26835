"""What a status change counts as: a message coming in, going out, or going wrong. Pure.

The stats rollup, the realtime feed and the metrics share these definitions, so the Info tab,
the Realtime page and Prometheus never disagree about what "accepted" or "error" means. (What
they count can differ once: a failure (or expiry) the carrier later contradicts is taken out of
the rollup, ``core.receipts``, while the feed and the counters keep it as it happened.)
"""

from __future__ import annotations

from schemas.enums import MessageStatus
from schemas.events import StatusChange

#: The statuses a message is created in.
ENTRY_STATUSES = frozenset({MessageStatus.queued, MessageStatus.scheduled})
#: Outcomes the customer reads as errors.
ERROR_STATUSES = frozenset(
    {
        MessageStatus.failed,
        MessageStatus.undelivered,
        MessageStatus.rejected,
        MessageStatus.expired,
    }
)
#: Outcomes that settle a handed-over message (the denominator of the delivery rate).
SETTLED_STATUSES = frozenset(
    {MessageStatus.delivered, MessageStatus.undelivered, MessageStatus.failed}
)


def is_acceptance(change: StatusChange) -> bool:
    """The message entered the system (its first status, recorded without a detail).

    Every later move back to ``queued`` (a retry, a reclaimed claim, a scheduled message
    released at its time) carries a ``detail`` saying why, so it is not counted again.
    """
    return change.status in ENTRY_STATUSES and change.detail is None


def is_departure(change: StatusChange) -> bool:
    """A provider took the message."""
    return change.status is MessageStatus.sent


def is_error(change: StatusChange) -> bool:
    return change.status in ERROR_STATUSES
