"""The per-number OTP send cap (SMS-pumping protection): N codes per rolling hour, shared by
the account's OTP streams unless a stream keeps its own count; refusals answer 429 with
``Retry-After`` and are counted in ``streams_otp_sends_rejected_total``. The counts live in
Redis, so they hold across ingress processes, on Redis's clock rather than each host's: the
tests that need time to pass age the stored send times instead of moving a host clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import redis
from prometheus_client import REGISTRY

from dispatcher.recipient_caps import KEY_PREFIX, RedisRecipientCap
from tests.otp_codes import OTHER_PHONE, send_code


def refused() -> float:
    return (
        REGISTRY.get_sample_value("streams_otp_sends_rejected_total", {"reason": "recipient_limit"})
        or 0.0
    )


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def age_windows(client: redis.Redis, seconds: float) -> None:
    """Make every counted send ``seconds`` older, as if that much time had passed."""
    for key in client.scan_iter(KEY_PREFIX + "*"):
        for member, score in client.zrange(key, 0, -1, withscores=True):
            client.zadd(key, {member: score - seconds})


def place_sends(client: redis.Redis, ages: list[float]) -> None:
    """Set the counted sends (one key, oldest first) to be ``ages`` seconds old by Redis TIME."""
    (key,) = client.scan_iter(KEY_PREFIX + "*")
    members = client.zrange(key, 0, -1)
    assert len(members) == len(ages)
    now = redis_now(client)
    client.zadd(key, {member: now - age for member, age in zip(members, ages, strict=True)})


def test_the_cap_is_shared_by_the_accounts_otp_streams(client, runtime, otp_stream, clock):
    rules = {"resend_cooldown_seconds": 0, "codes_per_recipient_per_hour": 5}
    one, two = otp_stream(name="Web", **rules), otp_stream(name="App", **rules)
    for stream in (one, one, one, two, two):
        assert send_code(client, stream).status_code == 202
    before = refused()

    for stream in (one, two):
        response = send_code(client, stream)
        assert response.status_code == 429
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("recipient_limit", "recipient_phone")
    assert refused() == before + 2
    assert send_code(client, one, phone=OTHER_PHONE).status_code == 202, "per number"


def test_retry_after_is_when_the_oldest_send_leaves_the_hour(client, runtime, otp_stream, clock):
    stream = otp_stream(resend_cooldown_seconds=0, codes_per_recipient_per_hour=2)
    assert [send_code(client, stream).status_code for _ in range(2)] == [202, 202]
    place_sends(runtime.redis, [700.5, 100.5])

    response = send_code(client, stream)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2900"  # 3600 - 700.5, rounded up
    age_windows(runtime.redis, 2899.5)
    assert send_code(client, stream).status_code == 202, "the window slides"
    assert send_code(client, stream).status_code == 429, "and holds again at the cap"


def test_a_stream_scope_counts_alone(client, runtime, otp_stream, clock):
    shared = otp_stream(name="Shared", resend_cooldown_seconds=0, codes_per_recipient_per_hour=2)
    alone = otp_stream(
        name="Alone",
        resend_cooldown_seconds=0,
        codes_per_recipient_per_hour=2,
        codes_per_recipient_scope="stream",
    )
    assert [send_code(client, shared).status_code for _ in range(3)] == [202, 202, 429]
    assert [send_code(client, alone).status_code for _ in range(3)] == [202, 202, 429]


def test_other_accounts_have_their_own_counts(
    client, runtime, otp_stream, other_account_key, clock
):
    mine = otp_stream(resend_cooldown_seconds=0, codes_per_recipient_per_hour=1)
    theirs = otp_stream(key=other_account_key, resend_cooldown_seconds=0)
    assert send_code(client, mine).status_code == 202
    assert send_code(client, mine).status_code == 429
    assert send_code(client, theirs).status_code == 202


def test_refused_resends_do_not_use_up_the_cap(client, runtime, otp_stream, clock):
    stream = otp_stream(resend_cooldown_seconds=30, codes_per_recipient_per_hour=2)
    assert send_code(client, stream).status_code == 202
    for _ in range(5):
        assert send_code(client, stream).json()["error"]["code"] == "resend_cooldown"
    clock.advance(30)
    assert send_code(client, stream).status_code == 202


def test_the_redis_cap_holds_under_concurrent_reservations(runtime):
    """Twenty threads (as if twenty ingress processes) reserve for one key at once: exactly
    the limit get through, because the check and the add are one Lua script."""
    cap = RedisRecipientCap(runtime.redis)
    now = datetime.now(UTC)
    barrier = threading.Barrier(20)
    decisions = []
    lock = threading.Lock()

    def reserve() -> None:
        barrier.wait()
        decision = cap.reserve("stream:s:+15550000000", 5, now)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=reserve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 5
    assert {d.retry_after_seconds for d in decisions if not d.allowed} == {3600}
    assert runtime.redis.zcard(KEY_PREFIX + "stream:s:+15550000000") == 5
    assert 0 < runtime.redis.pttl(KEY_PREFIX + "stream:s:+15550000000") <= 3_600_000
    cap.release("stream:s:+15550000000", allowed[0].member)
    assert cap.reserve("stream:s:+15550000000", 5, now).allowed


def test_the_redis_cap_keeps_one_clock_for_every_host(runtime):
    """Ingress hosts' clocks differ; the window is stamped and trimmed on Redis's clock, so a
    host running 59 minutes ahead does not trim an on-time host's send out of the hour (limit
    1: no second code a minute later), and one running behind does not stretch the wait."""
    cap = RedisRecipientCap(runtime.redis)
    key = "account:a:+15550000001"
    real = datetime.now(UTC)
    assert cap.reserve(key, 1, real).allowed
    (stamped,) = runtime.redis.zrange(KEY_PREFIX + key, 0, -1, withscores=True)
    assert abs(stamped[1] - redis_now(runtime.redis)) < 5, "a send time in epoch seconds"

    for host in (real + timedelta(minutes=60), real - timedelta(hours=3)):
        decision = cap.reserve(key, 1, host)
        assert not decision.allowed
        assert 3595 <= decision.retry_after_seconds <= 3600, "counted from Redis TIME"
    assert 0 < runtime.redis.pttl(KEY_PREFIX + key) <= 3_600_000

    age_windows(runtime.redis, 3600)
    assert cap.reserve(key, 1, real - timedelta(hours=3)).allowed, "the hour is Redis's hour"


def test_an_unreachable_cap_store_lets_codes_through_and_says_so(
    app, runtime, otp_stream, clock, capsys
):
    """Codes are how people log in: if Redis cannot count, the send goes ahead and the
    failure is logged (the cooldown, kept in PostgreSQL, still holds)."""
    from core.activity import ActivityTouch
    from dispatcher.auth import find_stream_access
    from dispatcher.otp import OneTimeCodes
    from dispatcher.recipient_caps import RedisRecipientCap
    from schemas.otp import OtpSendRequest
    from tests.processes import free_port

    stream = otp_stream(codes_per_recipient_per_hour=1)
    access = find_stream_access(runtime, stream["token"], clock())
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    codes = OneTimeCodes(
        runtime, RedisRecipientCap(nowhere), app.state.one_time_codes.hasher, ActivityTouch()
    )

    sent = codes.send(access, OtpSendRequest(recipient_phone=OTHER_PHONE))

    assert sent.message_id
    assert "otp_cap_unavailable" in capsys.readouterr().out
