"""GCRA admission rules, on the in-process implementation with an injected clock. The Redis
implementation runs the same rules in Lua; tests/integration/test_admission_redis.py holds
both to the same answers."""

import dataclasses
import heapq
from datetime import UTC, date, datetime

import pytest

from workers.admission import TOLERANCE_US, Limits, LocalAdmission, Request

EARLY = TOLERANCE_US / 1e6  # a message may go this much before its exact turn


class Clock:
    def __init__(self) -> None:
        self.us = 1_000_000_000

    def __call__(self) -> int:
        return self.us


def request(
    cost: int = 1, limits: Limits | None = None, message_id: str = "m", recipient: str = "+1"
) -> Request:
    return Request(
        "s",
        "sandbox",
        recipient,
        message_id,
        cost,
        limits or Limits(per_second=10),
        date(2026, 1, 1),
    )


def test_conforming_messages_are_spaced_at_the_rate():
    clock = Clock()
    admission = LocalAdmission(clock)
    assert admission.admit(request()).verdict == "admit"
    second = admission.admit(request())
    assert second.verdict == "wait"
    assert second.wait_seconds == pytest.approx(0.1 - EARLY)
    clock.us += 100_000 - TOLERANCE_US
    assert admission.admit(request()).verdict == "admit"


def test_segments_cost_their_count():
    clock = Clock()
    admission = LocalAdmission(clock)
    assert admission.admit(request(cost=3)).verdict == "admit"
    assert admission.admit(request()).wait_seconds == pytest.approx(0.3 - EARLY)


def test_a_message_bigger_than_a_second_goes_when_idle_and_pays_forward():
    clock = Clock()
    admission = LocalAdmission(clock)
    assert admission.admit(request(cost=25)).verdict == "admit"
    assert admission.admit(request()).wait_seconds == pytest.approx(2.5 - EARLY)


def test_waiting_messages_are_given_spaced_return_times():
    clock = Clock()
    admission = LocalAdmission(clock)
    admission.admit(request())
    backs = [admission.admit(request()).come_back_after for _ in range(3)]
    assert backs == pytest.approx([0.1, 0.2, 0.3])


def test_waiting_spends_nothing():
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(per_second=1, per_day=2)
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"
    for _ in range(5):
        assert admission.admit(request(limits=limits, message_id="b")).verdict == "wait"
    clock.us += 1_000_000
    assert admission.admit(request(limits=limits, message_id="b")).verdict == "admit"


def test_provider_limit_applies_across_streams():
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(provider_per_second=2)
    assert (
        admission.admit(Request("s1", "p", "+1", "a", 1, limits, date(2026, 1, 1))).verdict
        == "admit"
    )
    other_stream = admission.admit(Request("s2", "p", "+1", "b", 1, limits, date(2026, 1, 1)))
    assert other_stream.verdict == "wait"
    assert other_stream.wait_seconds == pytest.approx(0.5 - EARLY)


def test_recipient_cap_is_a_rolling_hour_and_idempotent_per_message():
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(per_recipient_per_hour=2)
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"  # a retry
    assert admission.admit(request(limits=limits, message_id="b")).verdict == "admit"
    third = admission.admit(request(limits=limits, message_id="c"))
    assert (third.verdict, third.reason) == ("reject", "max_per_recipient_per_hour")
    assert (
        admission.admit(request(limits=limits, message_id="d", recipient="+2")).verdict == "admit"
    )
    clock.us += 3_600_000_001
    assert admission.admit(request(limits=limits, message_id="c")).verdict == "admit"


def test_daily_cap_counts_per_day():
    admission = LocalAdmission(Clock())
    limits = Limits(per_day=1)
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"
    assert admission.admit(request(limits=limits, message_id="b")).reason == "max_per_day"
    tomorrow = Request("s", "sandbox", "+1", "b", 1, limits, date(2026, 1, 2))
    assert admission.admit(tomorrow).verdict == "admit"


def test_daily_cap_counts_messages_not_admissions():
    admission = LocalAdmission(Clock())
    limits = Limits(per_day=1)
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"
    assert admission.admit(request(limits=limits, message_id="a")).verdict == "admit"  # retry
    assert admission.admit(request(limits=limits, message_id="b")).reason == "max_per_day"


def test_no_limits_always_admit():
    admission = LocalAdmission(Clock())
    assert all(admission.admit(request(limits=Limits())).verdict == "admit" for _ in range(100))


def test_a_turn_within_the_inline_budget_is_admitted_and_paid_for():
    """A message whose turn comes within the caller's budget is admitted for that turn:
    its thread sleeps ``wait_seconds``, then sends, with no second call. The next message's
    turn comes after it, and a message parked meanwhile comes back after both."""
    clock = Clock()
    admission = LocalAdmission(clock)
    admission.admit(request())
    inline = [
        admission.admit(dataclasses.replace(request(message_id=m), inline_budget=1.0))
        for m in ("a", "b")
    ]
    assert [t.verdict for t in inline] == ["admit", "admit"]
    assert [t.wait_seconds for t in inline] == pytest.approx([0.1 - EARLY, 0.2 - EARLY])
    parked = admission.admit(request(message_id="c"))
    assert parked.verdict == "wait" and parked.come_back_after == pytest.approx(0.3)


def test_a_turn_past_the_budget_or_the_expiry_is_not_admitted():
    clock = Clock()
    admission = LocalAdmission(clock)
    admission.admit(request())
    late = admission.admit(dataclasses.replace(request(message_id="a"), inline_budget=0.05))
    assert late.verdict == "wait", "its turn, 0.08 s away, is past a budget of 0.05 s"
    doomed = dataclasses.replace(
        request(message_id="b"), inline_budget=1.0, expires_at=at(clock, 0.05)
    )
    assert admission.admit(doomed).verdict == "wait", "its turn comes after it expires"
    # Neither paid for a turn: the next message's is the one they would have taken.
    next_one = admission.admit(dataclasses.replace(request(message_id="c"), inline_budget=1.0))
    assert next_one.verdict == "admit"


def test_the_long_run_rate_is_exact_despite_late_admissions():
    clock = Clock()
    admission = LocalAdmission(clock)
    sent = 0
    for _ in range(10_000):  # every 1 ms, ask; each admission arrives a little late
        if admission.admit(request()).verdict == "admit":
            sent += 1
        clock.us += 1_000
    assert sent == pytest.approx(100, abs=3)  # 10 s at 10/s


# ------------------------------------------------------------------ the parking schedule


def at(clock: Clock, seconds: float) -> datetime:
    """The wall-clock time ``seconds`` after the injected clock's now."""
    return datetime.fromtimestamp(clock.us / 1e6 + seconds, UTC)


def test_an_idle_bucket_gives_back_the_slots_of_messages_that_never_came():
    """Regression: a parked message that then expired, was cancelled, rejected or deleted
    kept its slot, and later messages were parked behind the empty slots."""
    clock = Clock()
    admission = LocalAdmission(clock)
    assert admission.admit(request(message_id="first")).verdict == "admit"
    for n in range(100):  # parked, and never come back
        assert admission.admit(request(message_id=f"gone-{n}")).verdict == "wait"
    clock.us += 150_000  # the bucket has stood idle past its first promised slot
    assert admission.admit(request(message_id="fresh-1")).verdict == "admit"
    parked = admission.admit(request(message_id="fresh-2"))
    assert parked.verdict == "wait"
    assert parked.come_back_after == pytest.approx(0.1)


def test_a_backlog_that_comes_back_keeps_its_schedule():
    """The schedule is dropped only on evidence: a bucket used at its turn keeps it."""
    clock = Clock()
    admission = LocalAdmission(clock)
    admission.admit(request())
    backs = [admission.admit(request()).come_back_after for _ in range(3)]
    assert backs == pytest.approx([0.1, 0.2, 0.3])
    clock.us += 100_000  # the first parked message, back at its slot
    assert admission.admit(request()).verdict == "admit"
    assert admission.admit(request()).come_back_after == pytest.approx(0.3)


def test_a_bucket_held_by_the_provider_is_not_idle():
    """The stream's own bucket standing idle is no evidence while the provider's limit
    kept the messages back."""
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(per_second=10, provider_per_second=2)
    assert admission.admit(request(limits=limits)).verdict == "admit"
    backs = [admission.admit(request(limits=limits)).come_back_after for _ in range(10)]
    # Parked at the provider's rate, the binding one: its schedule spaces them.
    assert backs == pytest.approx([0.5 * n for n in range(1, 11)])
    clock.us += 500_000  # the provider's turn; the stream's TAT passed 0.4 s ago
    assert admission.admit(request(limits=limits)).verdict == "admit"
    assert admission.admit(request(limits=limits)).come_back_after == pytest.approx(5.0)


def test_a_backlog_held_by_the_provider_alone_comes_back_at_its_rate():
    """With no rate of the stream's own, parked messages take places on the provider's
    schedule: they come back a turn apart, not all when the first turn comes (each to be
    parked again)."""
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(provider_per_second=10)
    assert admission.admit(request(limits=limits)).verdict == "admit"
    backs = [admission.admit(request(limits=limits)).come_back_after for _ in range(3)]
    assert backs == pytest.approx([0.1, 0.2, 0.3])
    other_stream = dataclasses.replace(request(limits=limits), stream_id="other")
    assert admission.admit(other_stream).come_back_after == pytest.approx(0.4)


def test_a_stream_held_back_by_its_own_rate_leaves_the_providers_schedule_alone():
    """Review regression: stream A, at 1/s, parked 100 messages up to 100 s ahead, and its
    places went on the provider's schedule though the provider (1000/s) stood idle. Stream
    B's next parked message then came back 100 s on, behind A's backlog (or expired)."""
    clock = Clock()
    admission = LocalAdmission(clock)
    slow = Limits(per_second=1, provider_per_second=1000)
    fast = Limits(per_second=100, provider_per_second=1000)

    def ask(stream: str, message_id: str, limits: Limits):  # type: ignore[no-untyped-def]
        own = dataclasses.replace(request(limits=limits, message_id=message_id), stream_id=stream)
        return admission.admit(dataclasses.replace(own, inline_budget=0.25))

    assert ask("A", "a0", slow).verdict == "admit"
    assert ask("A", "a100", slow).verdict == "wait" and ask("A", "a101", slow).verdict == "wait"
    tickets = [ask("B", f"b{n}", fast) for n in range(30)]
    parked = [t for t in tickets if t.verdict == "wait"]
    assert parked and parked[0].come_back_after < 1.0, parked[0]


def test_no_slot_is_reserved_past_the_messages_expiry():
    """A message that would come back after it expires is expired by the caller and never
    comes back: it takes no slot."""
    clock = Clock()
    admission = LocalAdmission(clock)
    admission.admit(request())
    doomed = dataclasses.replace(request(message_id="doomed"), expires_at=at(clock, 0.05))
    assert admission.admit(doomed).come_back_after == pytest.approx(0.1)
    assert admission.admit(request(message_id="next")).come_back_after == pytest.approx(0.1)
    in_time = dataclasses.replace(request(message_id="in-time"), expires_at=at(clock, 5))
    assert admission.admit(in_time).come_back_after == pytest.approx(0.2)


def test_a_new_limit_rescales_the_schedule():
    """Regression: parked at 1/s, the schedule ran 30 s ahead, and after the limit was
    raised to 1000/s a throttled message was still parked behind it."""
    clock = Clock()
    admission = LocalAdmission(clock)
    slow, fast = Limits(per_second=1), Limits(per_second=1000)
    admission.admit(request(limits=slow))
    for _ in range(30):
        assert admission.admit(request(limits=slow)).verdict == "wait"
    # The bucket still holds the 1/s message's second; the 30 parked take 30 ms at 1000/s.
    backs = [admission.admit(request(limits=fast)).come_back_after for _ in range(2)]
    assert backs == pytest.approx([1.030, 1.031])
    # Lowered again, what is parked takes longer, and the schedule says so.
    assert admission.admit(request(limits=slow)).come_back_after == pytest.approx(33.0)


def test_codes_parked_ahead_of_a_backlog_keep_the_providers_rate():
    """Invariant 5 with priority places: a campaign of 50 and 10 codes (arriving every
    0.35 s) share a carrier's 10 a second, every message coming back at its place and
    booking its turn as the workers do. Every message goes, no ten consecutive sends fit in
    less than a second (less the tolerance), and each code goes within the inline budget
    and two intervals of its arrival, not behind the campaign. (Before codes held back the
    campaign's booked turns, the campaign's returning messages took the turn each code came
    back for, again and again: a code went 4.2 s after its arrival.)"""
    clock = Clock()
    admission = LocalAdmission(clock)
    limits = Limits(provider_per_second=10)
    start = clock.us
    asks = [(start, f"m{n}", False) for n in range(50)]
    asks += [(start + 350_000 * (n + 1), f"otp{n}", True) for n in range(10)]
    heapq.heapify(asks)
    sent: dict[str, int] = {}
    while asks:
        clock.us, message_id, priority = heapq.heappop(asks)
        ticket = admission.admit(
            Request(
                "otp" if priority else "campaign",
                "carrier",
                "+1",
                message_id,
                1,
                limits,
                date(2026, 1, 1),
                inline_budget=0.25,
                priority=priority,
            )
        )
        assert ticket.verdict != "reject"
        if ticket.verdict == "admit":
            sent[message_id] = clock.us + int(ticket.wait_seconds * 1e6)
        else:
            heapq.heappush(
                asks, (clock.us + int(ticket.come_back_after * 1e6), message_id, priority)
            )
    assert len(sent) == 60
    times = sorted(sent.values())
    gaps = [later - earlier for earlier, later in zip(times, times[10:], strict=False)]
    assert min(gaps) >= 1_000_000 - TOLERANCE_US
    for n in range(10):
        waited = sent[f"otp{n}"] - (start + 350_000 * (n + 1))
        assert waited <= 250_000 + 2 * 100_000, (n, waited)
