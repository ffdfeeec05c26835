"""Events the system publishes about messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from schemas.enums import MessageStatus


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A message reached ``status`` at ``at``. Published once the change is committed."""

    message_id: uuid.UUID
    stream_id: uuid.UUID
    account_id: uuid.UUID
    stream_type: str
    status: MessageStatus
    at: datetime
    segments: int
    detail: str | None = None
    #: False when whoever made the change knows that nothing follows it (no customer
    #: callback is configured, no receipt can be waiting): the status follow-up job is then
    #: skipped. True, the safe default, when it does not know.
    follow_up: bool = True
    #: True when the statement that made the change also added it to the stats rollup
    #: (``core.stats_rollup.rollup_upsert_sql``): the commit hook then leaves it out.
    in_rollup: bool = False
