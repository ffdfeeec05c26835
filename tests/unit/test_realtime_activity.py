"""The activity counters of the realtime feed: what is tallied, and the one-minute window."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio

from core.realtime_activity import ActivityWindow, MemoryActivityCounters, tally
from schemas.enums import MessageStatus
from schemas.events import StatusChange

ACCOUNT = uuid.uuid4()
OTHER_ACCOUNT = uuid.uuid4()
STREAM = uuid.uuid4()


def change(status, *, account=ACCOUNT, stream=STREAM, detail=None) -> StatusChange:
    return StatusChange(
        message_id=uuid.uuid4(),
        stream_id=stream,
        account_id=account,
        stream_type="otp",
        status=status,
        at=datetime(2026, 5, 1, tzinfo=UTC),
        segments=1,
        detail=detail,
    )


def test_tally_counts_in_out_and_errors_per_account():
    counted = tally(
        [
            change(MessageStatus.queued),
            change(MessageStatus.queued, detail="retry after x"),
            change(MessageStatus.sending),
            change(MessageStatus.sent),
            change(MessageStatus.failed),
            change(MessageStatus.undelivered),
            change(MessageStatus.queued, account=OTHER_ACCOUNT),
        ]
    )
    assert counted[ACCOUNT] == {f"{STREAM}:in": 1, f"{STREAM}:out": 1, f"{STREAM}:err": 2}
    assert set(counted) == {ACCOUNT, OTHER_ACCOUNT}


def test_window_reports_the_last_complete_second_and_the_last_minute_of_errors():
    clock = {"now": 1_000.5}
    counters = MemoryActivityCounters(clock=lambda: clock["now"])
    counters.record([change(MessageStatus.failed)])  # second 1000
    clock["now"] = 1_030.2
    counters.record([change(MessageStatus.queued)] * 3 + [change(MessageStatus.sent)] * 2)
    counters.record(
        [change(MessageStatus.failed), change(MessageStatus.queued, account=OTHER_ACCOUNT)]
    )

    async def read(now: float):
        async with counters.reader() as reader:
            window = ActivityWindow(reader, ACCOUNT)
            await window.refresh(now)
            return window.of(STREAM)

    during = anyio.run(read, 1_030.9)  # second 1030 is not over yet
    assert (during.in_per_second, during.out_per_second) == (0, 0)
    assert during.errors_last_minute == 1
    after = anyio.run(read, 1_031.1)
    assert (after.in_per_second, after.out_per_second, after.errors_last_minute) == (3, 2, 2)
    a_minute_later = anyio.run(read, 1_061.0)  # second 1000 has left the window
    assert (a_minute_later.in_per_second, a_minute_later.errors_last_minute) == (0, 1)


def test_memory_counters_forget_old_seconds():
    clock = {"now": 0.0}
    counters = MemoryActivityCounters(clock=lambda: clock["now"])
    counters.record([change(MessageStatus.sent)])
    clock["now"] = 10_000.0
    counters.record([change(MessageStatus.sent)])

    async def read():
        return await counters.buckets(ACCOUNT, [0, 10_000])

    assert anyio.run(read) == {0: {}, 10_000: {f"{STREAM}:out": 1}}
