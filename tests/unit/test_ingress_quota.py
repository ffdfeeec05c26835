"""The ingress quota's rule (GCRA in messages) and its in-process backend."""

from __future__ import annotations

import uuid

from dispatcher.ingress_quota import (
    MemoryIngressQuota,
    QuotaCharge,
    QuotaRule,
    conform,
    retry_after,
)

STREAM = uuid.uuid4()


def charge(cost: int, per_second: float = 10, burst: int = 5) -> QuotaCharge:
    return QuotaCharge(STREAM, cost, QuotaRule(per_second, burst))


def test_a_burst_fits_at_once_and_the_next_message_waits_one_interval() -> None:
    now = 1_000_000_000
    tat = 0
    for _ in range(5):
        wait, tat = conform(tat, now, charge(1))
        assert wait <= 0
    wait, _ = conform(tat, now, charge(1))
    assert wait == 100_000  # 10 a second: one message's interval


def test_a_batch_counts_each_message_and_does_not_fit_in_part() -> None:
    now = 1_000_000_000
    wait, tat = conform(0, now, charge(3))
    assert wait <= 0
    wait, _ = conform(tat, now, charge(3))
    assert wait == 100_000  # one more message's room is missing: the whole batch waits


def test_a_request_bigger_than_the_burst_goes_only_when_the_quota_is_idle() -> None:
    now = 1_000_000_000
    wait, tat = conform(0, now, charge(20))
    assert wait <= 0 and tat == now + 2_000_000
    wait, _ = conform(tat, now + 1_000_000, charge(20))
    assert wait == 1_000_000


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after(1) == 1
    assert retry_after(1_000_000) == 1
    assert retry_after(1_000_001) == 2


def test_the_memory_quota_refuses_without_counting_and_refills_at_the_rate() -> None:
    clock = [1_000_000_000]
    quota = MemoryIngressQuota(now_us=lambda: clock[0])
    assert quota.take(charge(5)).allowed
    refused = quota.take(charge(2))
    assert not refused.allowed and refused.retry_after_seconds >= 1
    clock[0] += 100_000  # one message's room back at 10 a second
    assert quota.take(charge(1)).allowed  # the refused request took nothing
    assert not quota.take(charge(1)).allowed
