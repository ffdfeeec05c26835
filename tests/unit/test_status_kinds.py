"""What counts as a message coming in, going out or going wrong (shared by the stats rollup,
the realtime feed and the metrics)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from core.status_kinds import is_acceptance, is_departure, is_error
from schemas.enums import MessageStatus
from schemas.events import StatusChange


def change(status: MessageStatus, detail: str | None = None) -> StatusChange:
    return StatusChange(
        message_id=uuid.uuid4(),
        stream_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        stream_type="transactional",
        status=status,
        at=datetime(2026, 5, 1, tzinfo=UTC),
        segments=1,
        detail=detail,
    )


def test_a_new_message_is_an_acceptance_whether_queued_or_scheduled():
    assert is_acceptance(change(MessageStatus.queued))
    assert is_acceptance(change(MessageStatus.scheduled))


def test_moving_back_to_queued_is_not_a_second_acceptance():
    # The details the relay and the delivery pipeline write when they requeue.
    for detail in (
        "retry after sandbox_busy",
        "reclaimed: claim lease expired",
        "released at send_at",
    ):
        assert not is_acceptance(change(MessageStatus.queued, detail))


def test_departures_and_errors():
    assert is_departure(change(MessageStatus.sent))
    assert not is_departure(change(MessageStatus.delivered))
    errors = {s for s in MessageStatus if is_error(change(s))}
    assert errors == {
        MessageStatus.failed,
        MessageStatus.undelivered,
        MessageStatus.rejected,
        MessageStatus.expired,
    }
