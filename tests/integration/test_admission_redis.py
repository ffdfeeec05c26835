"""The Lua admission in Redis gives the same answers as the rules' in-process version, and
its state is shared by every client (the fleet)."""

import dataclasses
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import redis as redis_lib

from tests.conftest import REDIS_URL
from workers.admission import Limits, LocalAdmission, RedisAdmission, Release, Request


def request(message_id: str, limits: Limits, stream: str = "s", cost: int = 1) -> Request:
    return Request(stream, "sandbox", "+1", message_id, cost, limits, date(2026, 1, 1))


def both_answers(redis_client, asks) -> dict[str, list[tuple[str, float, float]]]:
    """Each ``(request, changes)`` asked in turn of Redis and of the in-process rules, each
    on a provider of its own: (verdict, wait, come back after), to the hundredth of a
    second (the Redis clock moves on between calls)."""
    answers = {}
    for name, admission in (("redis", RedisAdmission(redis_client)), ("local", LocalAdmission())):
        tickets = [
            admission.admit(dataclasses.replace(asked, provider=f"carrier-{name}", **changes))
            for asked, changes in asks
        ]
        answers[name] = [
            (t.verdict, round(t.wait_seconds, 2), round(t.come_back_after, 2)) for t in tickets
        ]
    return answers


def test_two_clients_share_one_limit(redis_client):
    first = RedisAdmission(redis_lib.Redis.from_url(REDIS_URL))
    second = RedisAdmission(redis_lib.Redis.from_url(REDIS_URL))
    limits = Limits(per_second=2)
    assert first.admit(request("a", limits)).verdict == "admit"
    ticket = second.admit(request("b", limits))
    assert ticket.verdict == "wait"
    assert 0.45 < ticket.wait_seconds <= 0.5
    assert ticket.come_back_after >= ticket.wait_seconds


def test_caps_and_rejections(redis_client):
    admission = RedisAdmission(redis_client)
    limits = Limits(per_recipient_per_hour=1, per_day=5)
    assert admission.admit(request("a", limits)).verdict == "admit"
    assert admission.admit(request("a", limits)).verdict == "admit"  # the same message again
    ticket = admission.admit(request("b", limits))
    assert (ticket.verdict, ticket.reason) == ("reject", "max_per_recipient_per_hour")


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_a_released_message_leaves_both_caps(redis_client, backend):
    """A message the carrier refused, or that expired before it could go, is released: the
    day and the recipient have room for another message again."""
    admission = RedisAdmission(redis_client) if backend == "redis" else LocalAdmission()
    day_cap, recipient_cap = Limits(per_day=1), Limits(per_recipient_per_hour=1)
    for limits in (day_cap, recipient_cap):
        stream = f"s-{limits.per_day}"
        assert admission.admit(request("a", limits, stream)).verdict == "admit"
        assert admission.admit(request("b", limits, stream)).verdict == "reject"
        days = (date(2026, 1, 1), date(2025, 12, 31))
        admission.release(Release(stream, "+1", "a", days))
        admission.release(Release(stream, "+1", "a", days))  # twice: no harm
        assert admission.admit(request("b", limits, stream)).verdict == "admit"
        assert admission.admit(request("c", limits, stream)).verdict == "reject"


def test_keys_expire(redis_client):
    admission = RedisAdmission(redis_client)
    admission.admit(request("a", Limits(per_second=5, per_day=3, per_recipient_per_hour=3)))
    keys = redis_client.keys("streams:limits:*")
    assert keys
    assert all(redis_client.ttl(key) > 0 for key in keys), "no limit state lives forever"


def test_the_daily_cap_counts_messages_not_admissions(redis_client):
    """A message admitted again (a retry after a carrier timeout, a claim taken back after
    its lease, a job delivered twice) counts once against ``max_per_day``."""
    admission = RedisAdmission(redis_client)
    limits = Limits(per_day=2)
    assert admission.admit(request("a", limits)).verdict == "admit"
    assert admission.admit(request("a", limits)).verdict == "admit"  # "a" again
    assert admission.admit(request("b", limits)).verdict == "admit"
    assert admission.admit(request("a", limits)).verdict == "admit"  # its retry, at the cap
    ticket = admission.admit(request("c", limits))
    assert (ticket.verdict, ticket.reason) == ("reject", "max_per_day")


def test_the_daily_count_kept_before_ids_still_counts(redis_client):
    """The day's plain counter, as kept before the cap counted ids, still counts on the day
    of an upgrade, so the cap is not granted twice."""
    redis_client.set("streams:limits:stream:s:day:2026-01-01", 2, ex=172_800)
    admission = RedisAdmission(redis_client)
    limits = Limits(per_day=3)
    assert admission.admit(request("a", limits)).verdict == "admit"
    assert admission.admit(request("b", limits)).reason == "max_per_day"


def test_hosts_whose_clocks_disagree_at_midnight_count_one_day(redis_client):
    """The daily cap's day is Redis's: a worker whose clock is still on yesterday, and one
    already on tomorrow, count in the day every other host counts in, not in a day of their
    own with the cap unused. A release from such a host finds the message too."""
    seconds, _ = redis_client.time()
    if seconds % 86_400 > 86_400 - 5:  # Redis's midnight is seconds away: wait it out
        time.sleep(6)
        seconds, _ = redis_client.time()
    today = datetime.fromtimestamp(seconds, UTC).date()
    admission = RedisAdmission(redis_client)
    limits = Limits(per_day=1)

    def on(day: date, message_id: str) -> Request:
        return dataclasses.replace(request(message_id, limits), day=day)

    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    assert admission.admit(on(today, "a")).verdict == "admit"
    assert admission.admit(on(yesterday, "b")).reason == "max_per_day"
    assert admission.admit(on(tomorrow, "c")).reason == "max_per_day"
    behind = (yesterday - timedelta(days=1), yesterday, today)  # as Gates.give_back names them
    admission.release(Release("s", "+1", "a", behind))
    assert admission.admit(on(yesterday, "b")).verdict == "admit"
    assert redis_client.sismember(f"streams:limits:stream:s:day:{today.isoformat()}:ids", "b")


@pytest.mark.parametrize("backend", ["redis", "local"])
def test_a_ticket_says_whose_rate_held_the_message_back(redis_client, backend):
    """A stream's own limit and a saturated carrier (which slows every stream on it) call
    for different answers; the ticket says which held a message back, inline or parked,
    and both admissions say the same."""
    admission = RedisAdmission(redis_client) if backend == "redis" else LocalAdmission()

    def scopes(limits: Limits, name: str) -> list[tuple[str, str]]:
        asks = [
            dataclasses.replace(request(m, limits, name), provider=name, inline_budget=0.3)
            for m in "abc"
        ]
        return [(t.verdict, t.scope) for t in map(admission.admit, asks)]

    own = Limits(per_second=5, provider_per_second=1000)
    carrier = Limits(per_second=1000, provider_per_second=5)
    assert scopes(own, "own") == [("admit", "stream"), ("admit", "stream"), ("wait", "stream")]
    shared = scopes(carrier, "busy-carrier")
    assert shared == [("admit", "stream"), ("admit", "provider"), ("wait", "provider")]


def test_a_high_rate_is_never_exceeded_by_rounding(redis_client):
    """50,001 a second is 19.99 µs per segment: rounded down to 19 µs it would allow 52,631
    a second. After one message worth a second's allowance, the bucket is busy for a
    second, not 0.95 s."""
    admission = RedisAdmission(redis_client)
    limits = Limits(per_second=50_001)
    assert admission.admit(request("a", limits, cost=50_001)).verdict == "admit"
    ticket = admission.admit(request("b", limits))
    assert ticket.verdict == "wait" and ticket.wait_seconds >= 1.0 - 0.021


def test_an_idle_bucket_gives_back_the_slots_of_messages_that_never_came(redis_client):
    """Parked messages that expire, are cancelled, rejected or deleted never come back; once
    the bucket stands idle at their turn, later messages are not parked behind them."""
    admission = RedisAdmission(redis_client)
    limits = Limits(per_second=10)
    assert admission.admit(request("first", limits)).verdict == "admit"
    for n in range(50):
        assert admission.admit(request(f"gone-{n}", limits)).verdict == "wait"
    time.sleep(0.15)
    assert admission.admit(request("fresh-1", limits)).verdict == "admit"
    ticket = admission.admit(request("fresh-2", limits))
    assert ticket.verdict == "wait"
    assert ticket.come_back_after <= 0.1


def test_no_slot_is_reserved_past_the_messages_expiry(redis_client):
    admission = RedisAdmission(redis_client)
    limits = Limits(per_second=10)
    assert admission.admit(request("first", limits)).verdict == "admit"
    soon = datetime.now(UTC) + timedelta(seconds=0.05)
    for n in range(20):
        doomed = dataclasses.replace(request(f"doomed-{n}", limits), expires_at=soon)
        assert admission.admit(doomed).come_back_after <= 0.1
    assert admission.admit(request("next", limits)).come_back_after <= 0.1


def test_a_new_limit_rescales_the_schedule(redis_client):
    admission = RedisAdmission(redis_client)
    slow, fast = Limits(per_second=1), Limits(per_second=1000)
    assert admission.admit(request("first", slow)).verdict == "admit"
    for n in range(30):
        assert admission.admit(request(f"slow-{n}", slow)).verdict == "wait"
    ticket = admission.admit(request("after-raise", fast))
    assert ticket.verdict == "wait"
    assert 1.0 < ticket.come_back_after <= 1.031  # the bucket's second, then 30 ms


def test_the_parking_schedule_expires(redis_client):
    admission = RedisAdmission(redis_client)
    limits = Limits(per_second=5)
    admission.admit(request("a", limits))
    assert admission.admit(request("b", limits)).verdict == "wait"
    keys = redis_client.keys("streams:limits:stream:s:waiting*")
    assert len(keys) == 2, keys  # the schedule and the interval it is counted in
    assert all(redis_client.ttl(key) > 0 for key in keys)


def test_turns_and_places_answer_as_in_process(redis_client):
    """A turn within the budget is admitted for later and paid for; past it, a place on the
    schedule of the binding bucket (here the provider's, which the stream has no rate to
    share): the same answers from Redis as in-process, to the hundredth of a second (the
    Redis clock moves on between calls)."""
    limits = Limits(provider_per_second=10)
    asks = [("first", 0), ("a", 0.25), ("b", 0.25), ("c", 0.25), ("d", 0)]
    answers = both_answers(
        redis_client,
        [(request(message_id, limits), {"inline_budget": budget}) for message_id, budget in asks],
    )
    assert (
        answers["redis"]
        == answers["local"]
        == [
            ("admit", 0.0, 0.0),
            ("admit", 0.08, 0.0),  # its turn, 0.1 s on, less the tolerance: paid for
            ("admit", 0.18, 0.0),
            ("wait", 0.28, 0.3),  # past the budget: parked for its place, and nothing paid
            ("wait", 0.28, 0.4),  # the next place on the provider's schedule
        ]
    )


def test_a_stream_held_back_by_its_own_rate_leaves_the_providers_schedule_alone(redis_client):
    """The review's regression, on Redis: another stream's backlog, parked by its own rate,
    does not push back this stream's parked messages on their shared provider."""
    admission = RedisAdmission(redis_client)
    slow = Limits(per_second=1, provider_per_second=1000)
    fast = Limits(per_second=100, provider_per_second=1000)
    budget = {"inline_budget": 0.25}
    assert admission.admit(dataclasses.replace(request("a0", slow, "A"), **budget)).verdict == (
        "admit"
    )
    for n in range(1, 50):
        admission.admit(dataclasses.replace(request(f"a{n}", slow, "A"), **budget))
    tickets = [
        admission.admit(dataclasses.replace(request(f"b{n}", fast, "B"), **budget))
        for n in range(30)
    ]
    parked = [t for t in tickets if t.verdict == "wait"]
    assert parked and parked[0].come_back_after < 1.0, parked[0]


def test_a_priority_message_parks_ahead_of_the_providers_plain_schedule(redis_client):
    """Marketing parked on the provider's schedule; an OTP code (``priority``) then takes a
    place counted from the provider's TAT, behind other codes only, and pushes the plain
    schedule back by its turn. The same answers from Redis as in-process."""
    limits = Limits(provider_per_second=10)
    asks = [("m0", False), ("m1", False), ("m2", False), ("m3", False)]
    asks += [("otp1", True), ("otp2", True), ("m4", False)]
    answers = {
        name: [(verdict, back) for verdict, _, back in tickets]
        for name, tickets in both_answers(
            redis_client,
            [(request(message_id, limits), {"priority": first}) for message_id, first in asks],
        ).items()
    }
    assert (
        answers["redis"]
        == answers["local"]
        == [
            ("admit", 0.0),
            ("wait", 0.1),  # the plain schedule: 0.1, 0.2, 0.3
            ("wait", 0.2),
            ("wait", 0.3),
            ("wait", 0.1),  # codes: from the provider's TAT, behind codes only
            ("wait", 0.2),
            ("wait", 0.6),  # after the plain schedule, pushed back by the codes' two turns
        ]
    )


def test_while_a_code_waits_for_its_place_nothing_else_books_a_turn_ahead(redis_client):
    """A code is parked for the provider's next turn; a campaign message that could book a
    turn within its inline budget parks instead, after the code, on Redis as in-process:
    booked, it would take the turn the code comes back for."""
    limits = Limits(provider_per_second=10)
    budget = {"inline_budget": 0.25}
    asks = [
        (request("m0", limits), budget),
        (request("otp", limits), {"priority": True}),
        (request("m1", limits), budget),
    ]
    answers = both_answers(redis_client, asks)
    assert (
        answers["redis"]
        == answers["local"]
        == [("admit", 0.0, 0.0), ("wait", 0.08, 0.1), ("wait", 0.08, 0.2)]
    )
