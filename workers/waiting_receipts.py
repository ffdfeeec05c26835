"""Receipts that came before their message's provider id was recorded, applied when the
follow-up job that should have applied them was lost.

A receipt naming a provider id no message carries yet waits in ``provider_receipts``
(``core.receipts``); the follow-up job of the message's ``sent`` applies it. When that job
was lost (Redis lost it, or the process died between the commit and the enqueue), the
message stayed ``sent`` though the carrier had reported on it. This sweep (run by ``streams
relay``, with the callback sweep) reads the receipts once, in id order, behind a cursor
(``workers.sweep_cursor``), each a grace after it came (the callbacks' sweep grace): by
then its message has recorded the provider id, if it ever will, and the receipt is applied
as the job would have. A receipt no message claims by then (one for a message another
system sent through the same provider account, say) is left waiting, and read no more.
"""

from __future__ import annotations

import structlog
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from core import metrics
from core.receipts import resolve_waiting_receipts
from core.runtime import Runtime
from schemas.tables import Message, ProviderReceipt
from workers.sweep_cursor import read_behind_cursor

log = structlog.get_logger(__name__)

CURSOR = "waiting_receipts"
_IDS = ProviderReceipt.__table__.c.id
_RECEIVED_AT = ProviderReceipt.__table__.c.received_at


class WaitingReceipts:
    def __init__(self, runtime: Runtime, max_span: int = 50_000) -> None:
        """``max_span``: receipt ids one run reads at most."""
        self.runtime = runtime
        self.max_span = max_span

    def sweep(self) -> int:
        """Apply the waiting receipts read this run whose message is now known; returns
        how many messages moved. The cursor moves past them in the same transaction."""
        moved = read_behind_cursor(
            self.runtime, CURSOR, _IDS, _RECEIVED_AT, self.max_span, self._apply
        )
        if moved:
            metrics.RECEIPTS_RECOVERED.inc(moved)
            log.warning("waiting_receipts_applied", messages=moved)
        return moved or 0

    def _apply(self, session: Session, after: int, upto: int) -> int:
        """Apply the receipts in ``(after, upto]`` still waiting whose message is known;
        returns how many messages moved."""
        now = self.runtime.clock()
        known = session.scalars(
            select(Message.id)
            .join(
                ProviderReceipt,
                and_(
                    ProviderReceipt.provider == Message.provider,
                    ProviderReceipt.provider_message_id == Message.provider_message_id,
                ),
            )
            .where(
                ProviderReceipt.id > after,
                ProviderReceipt.id <= upto,
                ProviderReceipt.message_id.is_(None),
            )
            .distinct()
            .order_by(Message.id)  # locked in one order: no deadlock between runs
        ).all()
        return sum(
            resolve_waiting_receipts(session, message_id, now) is not None for message_id in known
        )
