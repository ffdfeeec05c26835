"""Retry back-off (``workers.retries.backoff_seconds``): exponential with equal jitter,
never past its cap, for any attempt number ``max_send_attempts`` allows."""

from __future__ import annotations

import pytest

from workers.retries import RETRY_AFTER_SPREAD, backoff_seconds, retry_delay_seconds


@pytest.mark.parametrize("attempt", [1, 2, 5, 64, 65, 1030, 5000])
def test_the_backoff_stays_within_half_and_all_of_its_ceiling(attempt):
    ceiling = min(600.0, 2.0 * 2 ** min(attempt - 1, 64))
    for _ in range(50):
        assert ceiling / 2 <= backoff_seconds(attempt, 2.0, 600.0) <= ceiling


def test_the_backoff_doubles_until_the_cap():
    assert [min(600.0, 2.0 * 2 ** (n - 1)) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_seconds(1, 2.0, 600.0) <= 2.0
    assert 4.0 <= backoff_seconds(3, 2.0, 600.0) <= 8.0
    assert backoff_seconds(12, 2.0, 600.0) >= 300.0


def test_a_retry_after_is_a_floor_and_a_throttled_burst_comes_back_spread():
    """A carrier answers a burst's messages with one Retry-After (60 s): each waits at
    least that, and they do not all come back in the same instant."""
    delays = [retry_delay_seconds(1, 2.0, 600.0, 60.0) for _ in range(200)]
    assert all(60.0 <= d <= 60.0 * (1 + RETRY_AFTER_SPREAD) for d in delays)
    assert max(delays) - min(delays) > 60.0 * RETRY_AFTER_SPREAD / 2, "spread, not one instant"
    assert retry_delay_seconds(12, 2.0, 600.0, 1.0) >= 300.0, "the back-off when it is longer"
    assert 1.0 <= retry_delay_seconds(1, 2.0, 600.0, None) <= 2.0
