"""The per-recipient cap's arithmetic and its in-process backend (``streams dev``). The Redis
backend is tested against Redis in ``tests/integration/test_otp_abuse_limits.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.recipient_caps import MemoryRecipientCap, seconds_until_free

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


@pytest.mark.parametrize(
    ("times", "limit", "now", "expected"),
    [
        ([], 5, 0.0, 0),
        ([0.0, 10.0], 5, 20.0, 0),
        ([0.0, 10.0], 2, 20.0, 3580),
        ([0.0, 10.0, 20.0], 2, 30.0, 3580),  # must lose two: the second leaves at 3610
        ([0.0], 1, 3599.5, 1),
        ([0.0], 1, 3599.99, 1),  # never less than a second
        ([0.0], 1, 100.25, 3500),  # 3499.75 rounded up
    ],
)
def test_seconds_until_free(times, limit, now, expected) -> None:
    assert seconds_until_free(times, limit, now, HOUR) == expected


def test_the_memory_cap_slides_over_an_hour() -> None:
    cap = MemoryRecipientCap()
    assert [cap.reserve("k", 2, START).allowed for _ in range(2)] == [True, True]
    refused = cap.reserve("k", 2, START + timedelta(minutes=10))
    assert (refused.allowed, refused.retry_after_seconds) == (False, 3000)
    assert cap.reserve("other", 2, START).allowed, "keys are counted apart"
    assert cap.reserve("k", 2, START + timedelta(hours=1)).allowed


def test_a_released_reservation_frees_its_place() -> None:
    cap = MemoryRecipientCap()
    first = cap.reserve("k", 1, START)
    assert not cap.reserve("k", 1, START).allowed
    cap.release("k", first.member or "")
    assert cap.reserve("k", 1, START).allowed


def test_a_lower_limit_applies_at_once() -> None:
    cap = MemoryRecipientCap()
    for minute in range(5):
        assert cap.reserve("k", 5, START + timedelta(minutes=minute)).allowed
    refused = cap.reserve("k", 2, START + timedelta(minutes=5))
    # Four of the five must leave; the fourth (minute 3) leaves at minute 63.
    assert (refused.allowed, refused.retry_after_seconds) == (False, 58 * 60)
