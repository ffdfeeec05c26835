"""How the relay packs what it puts on the queues (``workers.relay._jobs``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from workers.relay import RELEASE_STEP_MS, _Due, _jobs

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def due(queue: str, after_ms: float | None) -> _Due:
    at = None if after_ms is None else NOW + timedelta(milliseconds=after_ms)
    return _Due(uuid.uuid4(), queue, at)


def packed(queue: str) -> int:
    return 20 if queue == "marketing" else 1


def test_due_messages_of_a_packed_queue_go_in_jobs_of_the_chunk_size_in_order():
    rows = [due("marketing", None) for _ in range(30)] + [due("marketing", -5_000)]
    jobs = list(_jobs(rows, NOW, packed))
    assert [(queue, delay, len(job)) for queue, delay, job in jobs] == [
        ("marketing", 0, 20),
        ("marketing", 0, 11),
    ]
    assert [row for _, _, job in jobs for row in job] == rows


def test_a_packed_queue_rounds_due_times_up_to_the_step_never_down():
    rows = [due("marketing", ms) for ms in (0, 120, 150, 199.9, 200, 200.4, 950)]
    jobs = {(delay, tuple(row.at for row in job)) for _, delay, job in _jobs(rows, NOW, packed)}
    by_delay = {delay: len(ats) for delay, ats in jobs}
    assert by_delay == {0: 1, 200: 4, 300: 1, 1_000: 1}
    for delay, ats in jobs:
        for at in ats:
            assert NOW + timedelta(milliseconds=delay) >= at  # never early
            assert NOW + timedelta(milliseconds=delay - RELEASE_STEP_MS) < at  # within a step


def test_other_queues_keep_a_job_per_message_at_its_own_millisecond_rounded_up():
    rows = [due("otp", 150.7), due("otp", 150.7), due("otp", None), due("otp", 16_100)]
    jobs = [(queue, delay, len(job)) for queue, delay, job in _jobs(rows, NOW, packed)]
    assert jobs == [("otp", 151, 1), ("otp", 151, 1), ("otp", 0, 1), ("otp", 16_100, 1)]


def test_exact_steps_stay_exact_and_a_packed_queue_of_one_keeps_milliseconds():
    rows = [due("marketing", 16_100), due("marketing", 100.001)]
    assert [delay for _, delay, _ in _jobs(rows, NOW, packed)] == [16_100, 200]
    assert [delay for _, delay, _ in _jobs(rows, NOW, lambda _queue: 1)] == [16_100, 101]
