"""The ingress quota (API.md: "429 with Retry-After at the ingress quota"): per stream,
counted in messages, shared by every ingress process through Redis; fails open."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.runtime import build_runtime
from dispatcher.app import create_app
from dispatcher.group_commit import GroupCommitter
from dispatcher.ingress_quota import (
    IngressGate,
    MemoryIngressQuota,
    QuotaCharge,
    QuotaRule,
    RedisIngressQuota,
)
from dispatcher.recipient_caps import MemoryRecipientCap, RedisRecipientCap
from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import free_port
from tests.scrape import parse, value

IP = ("203.0.113.10", 40000)


def stored(runtime) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def open_stream(client: TestClient, account_key: str, **fields) -> dict:
    body = {"name": "Flood", "type": "transactional", "default_sender": "Acme", **fields}
    stream = client.post("/api/v1/streams", json=body, headers=auth(account_key)).json()
    token = client.get(f"/api/v1/streams/{stream['id']}/token", headers=auth(account_key))
    stream["token"] = token.json()["token"]
    return stream


def send(client: TestClient, token: str, items: list[dict]):
    return client.post("/v1/messages", json={"messages": items}, headers=auth(token))


def refusals(client: TestClient, stream_type: str) -> float:
    samples = parse(client.get("/metrics").text)
    return value(samples, "streams_ingress_quota_refusals_total", type=stream_type)


def test_redis_and_memory_quotas_give_the_same_answers(redis_client) -> None:
    rule = QuotaRule(per_second=1, burst=3)
    stream = uuid.uuid4()
    costs = [1, 1, 2, 1, 1, 5]
    answers = []
    for quota in (RedisIngressQuota(redis_client), MemoryIngressQuota()):
        answers.append([quota.take(QuotaCharge(stream, cost, rule)) for cost in costs])
    assert answers[0] == answers[1]
    assert [a.allowed for a in answers[0]] == [True, True, False, True, False, False]
    assert all(a.retry_after_seconds >= 1 for a in answers[0] if not a.allowed)
    assert redis_client.pttl(f"streams:ingress:quota:{stream}") > 0  # the key expires


def test_a_group_is_asked_in_one_step_in_turn_as_one_request_after_another(
    redis_client,
) -> None:
    """The group committer asks for its gathered single sends at once: each in turn, a
    later one of a stream seeing the earlier's payment, a refused one counting nothing;
    the same answers as one request after another, from both backends."""
    rule = QuotaRule(per_second=1, burst=2)
    a, b = uuid.uuid4(), uuid.uuid4()
    group = [QuotaCharge(s, cost, rule) for s, cost in ((a, 1), (b, 1), (a, 1), (a, 1), (b, 2))]
    answers = [
        [d.allowed for d in quota.take_many(group)]
        for quota in (RedisIngressQuota(redis_client), MemoryIngressQuota())
    ]
    assert answers == [[True, True, True, False, False]] * 2
    assert RedisIngressQuota(redis_client).take(QuotaCharge(b, 1, rule)).allowed


def test_concurrent_single_sends_past_the_quota_get_429_and_the_rest_are_stored(
    settings, runtime, account_key
) -> None:
    """Single sends gathered into one group commit: the quota is asked for the group, the
    sends over it answer 429 and store nothing, the others are stored."""
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 3})
    with TestClient(create_app(tight, runtime=runtime), client=IP) as client:
        stream = open_stream(client, account_key)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: send(client, stream["token"], [message()]), range(8)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [202] * 3 + [429] * 5
        assert stored(runtime) == 3
        assert all(
            a.json()["error"]["code"] == "rate_limited" for a in answers if a.status_code == 429
        )


def test_redis_and_memory_caps_charge_the_quota_alike_in_one_step(redis_client) -> None:
    rule = QuotaRule(per_second=1, burst=2)
    stream, now = uuid.uuid4(), datetime.now(UTC)
    answers = []
    for cap in (RedisRecipientCap(redis_client), MemoryRecipientCap(MemoryIngressQuota())):
        steps = [
            cap.reserve("a", 1, now, QuotaCharge(stream, 1, rule)),
            cap.reserve("a", 1, now, QuotaCharge(stream, 1, rule)),  # the cap refuses
            cap.reserve("b", 1, now, QuotaCharge(stream, 1, rule)),  # the quota had room
            cap.reserve("c", 1, now, QuotaCharge(stream, 1, rule)),  # the quota refuses
            cap.reserve("c", 1, now),  # and counted nothing of "c"
        ]
        answers.append([(d.allowed, d.by_quota, d.retry_after_seconds > 0) for d in steps])
    assert answers[0] == answers[1]
    assert answers[0] == [
        (True, False, False),
        (False, False, True),
        (True, False, False),
        (False, True, True),
        (True, False, False),
    ]


def test_over_the_quota_answers_429_rate_limited_with_retry_after_and_stores_nothing(
    settings, runtime, account_key
) -> None:
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 2})
    with TestClient(create_app(tight, runtime=runtime), client=IP) as client:
        stream = open_stream(client, account_key)
        before = refusals(client, "transactional")
        answers = [send(client, stream["token"], [message()]) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        refused = answers[2]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert set(refused.json()) == {"error"}
        assert int(refused.headers["Retry-After"]) >= 1
        assert stored(runtime) == 2
        assert refusals(client, "transactional") == before + 1
        # Reads are not counted.
        message_id = answers[0].json()["results"][0]["message_id"]
        read = client.get(f"/v1/messages/{message_id}", headers=auth(stream["token"]))
        assert read.status_code == 200


def test_a_batch_that_does_not_fit_whole_is_refused_whole(settings, runtime, account_key) -> None:
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 5})
    with TestClient(create_app(tight, runtime=runtime), client=IP) as client:
        stream = open_stream(client, account_key)
        first = send(client, stream["token"], [message(internal_id=f"a{i}") for i in range(3)])
        assert first.status_code == 202 and first.json()["accepted"] == 3
        second = send(client, stream["token"], [message(internal_id=f"b{i}") for i in range(3)])
        assert second.status_code == 429, second.text
        assert "whole" in second.json()["error"]["message"]
        assert stored(runtime) == 3
        # What is left (2 messages' room) still fits: the refusal counted nothing.
        third = send(client, stream["token"], [message(internal_id=f"c{i}") for i in range(2)])
        assert third.status_code == 202 and third.json()["accepted"] == 2


def test_two_ingress_processes_share_one_quota(settings, runtime, account_key) -> None:
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 2})
    other_runtime = build_runtime(tight)
    try:
        with (
            TestClient(create_app(tight, runtime=runtime), client=IP) as one,
            TestClient(create_app(tight, runtime=other_runtime), client=IP) as two,
        ):
            stream = open_stream(one, account_key)
            codes = [
                send(client, stream["token"], [message()]).status_code
                for client in (one, two, one, two)
            ]
        assert codes == [202, 202, 429, 429]
        assert stored(runtime) == 2
    finally:
        other_runtime.close()


def test_a_redis_that_cannot_be_asked_lets_sends_through(
    settings, runtime, account_key, capsys
) -> None:
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 1})
    app = create_app(tight, runtime=runtime)
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    gate = IngressGate(RedisIngressQuota(nowhere), QuotaRule(1, 1))
    app.state.ingress_gate = gate
    app.state.group_committer = GroupCommitter(runtime, app.state.activity_touch, gate)
    with TestClient(app, client=IP) as client:
        stream = open_stream(client, account_key)
        before = value(
            parse(client.get("/metrics").text), "streams_ingress_quota_unavailable_total"
        )
        answers = [send(client, stream["token"], [message()]) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert stored(runtime) == 3
        after = value(parse(client.get("/metrics").text), "streams_ingress_quota_unavailable_total")
    assert after >= before + 1
    # Warned once, not on every send: the quota is not asked again for a second.
    assert capsys.readouterr().out.count("ingress_quota_unavailable") == 1


def test_an_otp_send_is_counted_in_the_caps_one_redis_call(
    settings, runtime, account_key, monkeypatch
) -> None:
    tight = settings.model_copy(update={"ingress_quota_per_second": 1, "ingress_quota_burst": 1})
    app = create_app(tight, runtime=runtime)

    def no_second_round_trip(_charge):
        raise AssertionError("the OTP send asked the quota separately")

    monkeypatch.setattr(app.state.ingress_gate.quota, "take", no_second_round_trip)
    with TestClient(app, client=IP) as client:
        stream = open_stream(client, account_key, type="otp", demo=True)
        send_code = lambda phone: client.post(  # noqa: E731
            "/v1/otp/send", json={"recipient_phone": phone}, headers=auth(stream["token"])
        )
        before = refusals(client, "otp")
        assert send_code("+972524265292").status_code == 202
        refused = send_code("+972524265293")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert stored(runtime) == 1
        assert refusals(client, "otp") == before + 1
        # Verifying is not counted.
        verify = client.post(
            "/v1/otp/verify",
            json={"recipient_phone": "+972524265292", "code": "00000"},
            headers=auth(stream["token"]),
        )
        assert verify.status_code == 200


def test_without_redis_otp_sends_and_the_send_api_share_the_processes_quota(settings) -> None:
    embedded = settings.model_copy(update={"redis_url": None})
    runtime = build_runtime(embedded)
    try:
        app = create_app(embedded, runtime=runtime)
        assert isinstance(app.state.ingress_gate.quota, MemoryIngressQuota)
        assert app.state.one_time_codes.cap._quota is app.state.ingress_gate.quota
    finally:
        runtime.close()
