"""Retry back-off (``workers.retries.backoff_seconds``): exponential with equal jitter,
never past its cap, for any attempt number ``max_send_attempts`` allows."""

from __future__ import annotations

import pytest

from workers.retries import backoff_seconds


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
