"""Fault 4: providers that time out, fail with 5xx, throttle with 429 and Retry-After,
reset the connection, or answer in a form that cannot be read, against the local fake HTTP
SMS API and the fake WhatsApp Cloud API (each behind a proxy that can reset connections).
Passing errors are retried within policy (at most ``max_send_attempts`` attempts, waiting at
least Retry-After), then the message fails with the provider's reason and is kept as a dead
letter. A message never stays in ``sending``: a claim whose worker died is reclaimed after
the claim lease and sent again under the same reference, which the provider recognises, so
the recipient gets one SMS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import select

from core.settings import HttpProviderSettings, WhatsAppApiSettings
from schemas.tables import DeadLetter, Message, MessageEvent
from tests.conftest import auth, message
from tests.fakes.http_sms import API_KEY, FakeHttpSms
from tests.fakes.server import serve
from tests.fakes.tcp_proxy import ResettingProxy, resetting_proxy
from tests.fakes.whatsapp_cloud import VERSION, FakeWhatsAppCloud
from tests.processes import environment, pipeline, running, stop, wait_until
from tests.two_way import ACCESS_TOKEN, PHONE_NUMBER_ID, whatsapp_stream

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 4
CLIENT_TIMEOUT_SECONDS = 0.5
FINAL = ("sent", "delivered", "failed")


@pytest.fixture
def sms():
    fake = FakeHttpSms()
    with serve(fake.app()) as base, resetting_proxy(base) as (proxied, proxy):
        fake.base_url, fake.proxy = proxied, proxy
        yield fake


@pytest.fixture
def cloud():
    fake = FakeWhatsAppCloud(tokens={PHONE_NUMBER_ID: ACCESS_TOKEN})
    with serve(fake.app()) as base, resetting_proxy(base) as (proxied, proxy):
        fake.base_url, fake.proxy = proxied, proxy
        yield fake


@pytest.fixture
def settings(settings, sms, cloud):
    return settings.model_copy(
        update={
            "default_provider": "http",
            "http_provider": HttpProviderSettings(
                url=f"{sms.base_url}/sms",
                auth_value=f"Bearer {API_KEY}",
                timeout_seconds=CLIENT_TIMEOUT_SECONDS,
                _env_file=None,
            ),
            "whatsapp": WhatsAppApiSettings(
                api_base_url=cloud.base_url,
                api_version=VERSION,
                timeout_seconds=CLIENT_TIMEOUT_SECONDS,
                credentials_cache_seconds=0,
                _env_file=None,
            ),
            "max_send_attempts": MAX_ATTEMPTS,
            "retry_backoff_seconds": 0.05,
            "retry_backoff_max_seconds": 0.2,
        }
    )


def history(runtime, message_id: str) -> list[tuple[str, datetime, str | None]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(MessageEvent.status, MessageEvent.at, MessageEvent.detail)
            .where(MessageEvent.message_id == uuid.UUID(message_id))
            .order_by(MessageEvent.id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def stored(runtime, message_id: str) -> Message:
    with runtime.session_factory() as session:
        found = session.get(Message, uuid.UUID(message_id))
        assert found is not None
        return found


def send_and_settle(runtime, client, token: str, **fields) -> Message:  # type: ignore[no-untyped-def]
    answer = client.post(
        "/v1/messages", json={"messages": [message(**fields)]}, headers=auth(token)
    )
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["results"][0]["message_id"]
    assert wait_until(lambda: stored(runtime, message_id).status in FINAL, timeout=30), history(
        runtime, message_id
    )
    return stored(runtime, message_id)


def retries(runtime, message: Message, code: str) -> list[float]:
    """The back-off announced for each retry of ``message`` after an error ``code``, with
    the time that really passed before the next claim."""
    events = history(runtime, str(message.id))
    waited = []
    for position, (status, at, detail) in enumerate(events):
        if status == "queued" and detail and f"({code}); retry in" in detail:
            next_claim = next(a for s, a, _ in events[position + 1 :] if s == "sending")
            waited.append((next_claim - at).total_seconds())
    return waited


#: (name, what the fake does next, the error code each failure is recorded with, failures)
Scenario = tuple[str, Callable[[], None], str, int]


def run_scenarios(runtime, client, token: str, scenarios: list[Scenario]) -> None:  # type: ignore[no-untyped-def]
    """One message per scenario, one after the other (the fakes' scripts apply to the next
    requests): each is sent after exactly ``failures`` retries of ``code``."""
    for name, script, code, failures in scenarios:
        script()
        sent = send_and_settle(runtime, client, token, internal_id=name)
        events = history(runtime, str(sent.id))
        assert sent.status == "sent", (name, events)
        assert sent.attempts == failures + 1, (name, events)
        assert len(retries(runtime, sent, code)) == failures, (name, events)


def assert_dead_letter(runtime, message: Message, code: str) -> None:
    assert message.status == "failed" and message.error_code == code, message.error_message
    assert message.attempts == MAX_ATTEMPTS, "retried within policy, then failed"
    with runtime.session_factory() as session:
        letter = session.scalar(select(DeadLetter).where(DeadLetter.message_id == message.id))
    assert letter is not None and letter.reason == "retries_exhausted"


def test_http_provider_faults_are_retried_within_policy_then_fail_with_a_reason(
    runtime, client, make_stream, sms
):
    token = make_stream()["token"]
    proxy: ResettingProxy = sms.proxy
    scenarios: list[Scenario] = [
        ("timeout", lambda: sms.fail_next(2, 503, delay_seconds=1.0), "provider_timeout", 2),
        ("5xx", lambda: sms.fail_next(2, 503), "provider_unavailable", 2),
        (
            "429",
            lambda: sms.fail_next(1, 429, headers={"Retry-After": "1"}),
            "provider_throttled",
            1,
        ),
        ("reset", lambda: proxy.reset_next(2), "provider_unreachable", 2),
        (
            "unreadable",  # a body not in its declared encoding: httpx.DecodingError
            lambda: sms.fail_next(1, 502, headers={"Content-Encoding": "gzip"}),
            "provider_unreadable_answer",
            1,
        ),
    ]
    with pipeline(runtime, ["transactional"], threads=4):
        run_scenarios(runtime, client, token, scenarios)
        throttled = stored(runtime, str(_id_of(runtime, "429")))
        assert min(retries(runtime, throttled, "provider_throttled")) >= 1.0, "Retry-After held"
        assert proxy.resets_done == 2

        # A late success: the provider took the message but answered after our timeout.
        # The retry carries the same reference, so the provider answers with the first id.
        sms.fail_next(1, 200, delay_seconds=1.0)
        late = send_and_settle(runtime, client, token, internal_id="late")
        assert late.status == "sent" and late.attempts == 2
        assert late.provider_message_id == sms.by_reference[str(late.id)]
        offered = [r for r in sms.requests if r["body"]["reference"] == str(late.id)]
        assert len(offered) == 2
        assert {r["headers"]["idempotency-key"] for r in offered} == {str(late.id)}

        sms.fail_next(MAX_ATTEMPTS, 503)
        exhausted = send_and_settle(runtime, client, token, internal_id="exhausted")
        assert_dead_letter(runtime, exhausted, "provider_unavailable")
        assert "HTTP 503" in (exhausted.error_message or "")
    with runtime.session_factory() as session:
        assert session.scalar(select(Message.id).where(Message.status == "sending")) is None
    print(
        f"\n[fault 4] http provider: {len(sms.requests)} requests to the fake "
        f"({proxy.resets_done} reset), {len(sms.by_reference)} messages taken; "
        f"retry after 429 waited {min(retries(runtime, throttled, 'provider_throttled')):.2f}s"
    )


def _id_of(runtime, internal_id: str) -> uuid.UUID:
    with runtime.session_factory() as session:
        found = session.scalar(select(Message.id).where(Message.internal_id == internal_id))
        assert found is not None
        return found


def test_whatsapp_faults_are_retried_within_policy_then_fail_with_a_reason(
    runtime, client, make_stream, account_key, cloud
):
    token = whatsapp_stream(make_stream, client, account_key)["token"]
    proxy: ResettingProxy = cloud.proxy
    scenarios: list[Scenario] = [
        (
            "5xx",
            lambda: cloud.fail_next(2, 2, "Service unavailable", status=503),
            "whatsapp_service_unavailable",
            2,
        ),
        (
            "429",
            lambda: cloud.fail_next(
                1, 130429, "(#130429) Rate limit hit", status=429, headers={"Retry-After": "1"}
            ),
            "whatsapp_rate_limited",
            1,
        ),
    ]
    # The request left and no usable answer came back: Meta may have taken the message, and
    # the Cloud API has no idempotency key, so it is never offered again on its own
    # (invariant 2). It fails at once, as a dead letter an operator may replay.
    unknown_outcomes = [
        ("timeout", lambda: cloud.fail_next(1, 131000, status=500, delay_seconds=1.0)),
        ("reset", lambda: proxy.reset_next(1)),
        (
            "unreadable",
            lambda: cloud.fail_next(1, 131000, status=500, headers={"Content-Encoding": "gzip"}),
        ),
    ]
    with pipeline(runtime, ["whatsapp"], threads=4):
        run_scenarios(runtime, client, token, scenarios)
        throttled = stored(runtime, str(_id_of(runtime, "429")))
        assert min(retries(runtime, throttled, "whatsapp_rate_limited")) >= 1.0
        for name, script in unknown_outcomes:
            script()
            failed = send_and_settle(runtime, client, token, internal_id=name)
            assert (failed.status, failed.error_code, failed.attempts) == (
                "failed",
                "whatsapp_outcome_unknown",
                1,
            ), (name, history(runtime, str(failed.id)))
            with runtime.session_factory() as session:
                letter = session.scalar(
                    select(DeadLetter).where(DeadLetter.message_id == failed.id)
                )
            assert letter is not None and letter.reason == "outcome_unknown", name

        cloud.fail_next(MAX_ATTEMPTS, 131000, "Something went wrong", status=500)
        exhausted = send_and_settle(runtime, client, token, internal_id="exhausted")
        assert_dead_letter(runtime, exhausted, "whatsapp_unknown_error")
    with runtime.session_factory() as session:
        assert session.scalar(select(Message.id).where(Message.status == "sending")) is None
    print(
        f"\n[fault 4] whatsapp: {len(cloud.requests)} requests to the fake "
        f"({proxy.resets_done} reset), {len(cloud.accepted())} accepted"
    )


def test_invariant_2_a_claim_of_a_dead_worker_is_reclaimed_and_not_sent_twice(
    settings, runtime, client, make_stream, sms, tmp_path
):
    """The worker is SIGKILLed while the provider is taking the message (it answers late).
    After the claim lease the relay takes the claim back, a new worker offers the message
    again under the same reference, and the provider answers with the first id."""
    token = make_stream()["token"]
    lease = {"claim_lease_seconds": 2}
    env = environment(
        settings,
        default_provider="http",
        http_provider_url=f"{sms.base_url}/sms",
        http_provider_auth_value=f"Bearer {API_KEY}",
        http_provider_timeout_seconds=1.5,
        **lease,
    )
    sms.fail_next(1, 200, delay_seconds=3.0)
    answer = client.post("/v1/messages", json={"messages": [message()]}, headers=auth(token))
    message_id = answer.json()["results"][0]["message_id"]
    pool = ["worker", "--queues", "transactional", "--processes", "1", "--threads", "2"]
    with running(pool, env, tmp_path / "doomed.log") as doomed:
        assert wait_until(lambda: len(sms.requests) == 1, timeout=30)
        assert stored(runtime, message_id).status == "sending"
        stop(doomed, sig=9)  # dies inside the provider call, holding the claim
    assert wait_until(lambda: str(uuid.UUID(message_id)) in sms.by_reference, timeout=10)

    runtime.settings = settings.model_copy(update=lease)
    with pipeline(runtime, ["transactional"], threads=2):
        assert wait_until(lambda: stored(runtime, message_id).status == "sent", timeout=30), (
            history(runtime, message_id)
        )
    events = [status for status, _, _ in history(runtime, message_id)]
    assert events == ["queued", "sending", "queued", "sending", "sent"], events
    assert "reclaimed" in (history(runtime, message_id)[2][2] or "")
    offered = [r for r in sms.requests if r["body"]["reference"] == message_id]
    assert len(offered) == 2, "offered twice, under one reference"
    assert len(sms.by_reference) == 1, "taken once: one SMS"
    assert stored(runtime, message_id).provider_message_id == sms.by_reference[message_id]
