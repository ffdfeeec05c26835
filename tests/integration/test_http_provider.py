"""The generic HTTP provider: the adapter against a local fake SMS API (success and every
kind of error), its delivery receipts on /webhooks/dlr/http (signed; multipart), and its
inbound messages."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import text

from core.settings import HttpProviderSettings
from core.signatures import body_hmac
from tests.conftest import auth, message
from tests.deliveries import delivery_with
from tests.fakes.http_sms import API_KEY, WEBHOOK_SECRET, provider_settings
from tests.processes import MovableClock, wait_until
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.pool import start_worker
from workers.providers.base import OutboundMessage, ProviderError
from workers.providers.http import HttpProvider
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider
from workers.status_followup import StatusFollowUp
from workers.waiting_receipts import WaitingReceipts


@pytest.fixture
def settings(settings, sms):
    return settings.model_copy(
        update={
            "http_provider": provider_settings(sms.base_url),
            "default_provider": "http",
            "retry_backoff_seconds": 0.05,
        }
    )


def outbound(recipient: str = "+972524265292") -> OutboundMessage:
    return OutboundMessage(
        reference=str(uuid.uuid4()),
        sender="Acme",
        recipient=recipient,
        body="Your parcel is on its way",
        segments=1,
        encoding="GSM-7",
    )


# ---------------------------------------------------------------- the adapter


def test_adapter_maps_fields_authenticates_and_reads_the_id(sms):
    provider = HttpProvider(provider_settings(sms.base_url, extra_fields={"type": "sms"}))
    sent = outbound()
    accepted = provider.send(sent)
    request = sms.requests[-1]
    assert request["body"] == {
        "type": "sms",
        "from": "Acme",
        "to": "+972524265292",
        "text": "Your parcel is on its way",
        "reference": sent.reference,
    }
    assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["idempotency-key"] == sent.reference
    assert accepted.provider_message_id.startswith("sms-")
    assert provider.send(sent).provider_message_id == accepted.provider_message_id
    provider.close()


@pytest.mark.parametrize(
    ("status", "kwargs", "code", "transient", "retry_after"),
    [
        (500, {}, "provider_unavailable", True, None),
        (503, {"headers": {"Retry-After": "7"}}, "provider_unavailable", True, 7.0),
        (429, {"headers": {"Retry-After": "3"}}, "provider_throttled", True, 3.0),
        (408, {}, "provider_unavailable", True, None),
        (409, {"headers": {"Retry-After": "2"}}, "provider_request_in_progress", True, 2.0),
        (200, {"delay_seconds": 1.5}, "provider_timeout", True, None),
        (
            422,
            {"body": {"error": {"message": "sender not allowed"}}},
            "provider_rejected",
            False,
            None,
        ),
    ],
)
def test_adapter_maps_errors(sms, status, kwargs, code, transient, retry_after):
    provider = HttpProvider(provider_settings(sms.base_url))
    sms.fail_next(1, status, **kwargs)
    with pytest.raises(ProviderError) as raised:
        provider.send(outbound())
    assert (raised.value.code, raised.value.transient, raised.value.retry_after) == (
        code,
        transient,
        retry_after,
    )
    provider.close()


def test_a_carrier_that_drips_its_answer_times_out_within_the_deadline(sms):
    """httpx's timeout bounds each read, not the call: a carrier that answers at once and then
    sends its body a byte every 0.3 s would hold a 1 s call for 15 s, past the claim lease.
    The call ends as ``provider_timeout`` (the carrier may have taken it) near its 1 s."""
    provider = HttpProvider(provider_settings(sms.base_url, timeout_seconds=1.0))
    late = {"message_id": "sms-slow-1", "status": "accepted"}
    sms.fail_next(1, 200, body=late, drip_seconds=0.3)
    began = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        provider.send(outbound())
    took = time.monotonic() - began
    provider.close()
    assert (raised.value.code, raised.value.transient) == ("provider_timeout", True)
    assert took < 2.0, f"a call with a 1 s timeout took {took:.1f}s"


def test_adapter_refusals_are_permanent(sms):
    provider = HttpProvider(provider_settings(sms.base_url))
    with pytest.raises(ProviderError) as invalid:
        provider.send(outbound("+99912345678"))
    assert invalid.value.code == "provider_rejected" and not invalid.value.transient
    assert not invalid.value.configuration, "the number is refused, not our set-up"
    assert "cannot route" in invalid.value.message
    wrong_key = HttpProvider(
        HttpProviderSettings(url=f"{sms.base_url}/sms", auth_value="Bearer nope", _env_file=None)
    )
    with pytest.raises(ProviderError) as refused:
        wrong_key.send(outbound())
    assert refused.value.code == "provider_auth_failed" and not refused.value.transient
    assert refused.value.configuration, "our credentials are refused, not the message"
    assert "nope" not in refused.value.message
    unreachable = HttpProvider(HttpProviderSettings(url="http://127.0.0.1:9/sms", _env_file=None))
    with pytest.raises(ProviderError) as down:
        unreachable.send(outbound())
    assert down.value.code == "provider_unreachable" and down.value.transient


def test_a_refusal_whose_words_hold_a_nul_fails_the_message_at_once(
    runtime, client, make_stream, account_key, sms
):
    """A 400 refuses the message for good, whatever its error text holds: the carrier's
    words are stored without their control characters (PostgreSQL refuses a NUL, and a
    refused outcome would leave the message ``sending``, offered again at each lease's end
    until it ends as an ``outcome_unknown`` dead letter). One request, no dead letter."""
    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    refusal = {"error": {"code": "invalid_number", "message": "cannot route \u0000+97252"}}
    sms.fail_next(1, 400, body=refusal)
    provider = HttpProvider(provider_settings(sms.base_url))
    Delivery(
        runtime, ProviderRegistry({"http": provider}, "http"), RedisAdmission(runtime.redis)
    ).deliver(message_id, "transactional")
    found = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert (found["status"], found["error"]["code"]) == ("failed", "provider_rejected")
    assert "cannot route \ufffd+97252" in found["error"]["message"]
    assert len(sms.requests) == 1
    assert client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"] == []


def test_a_2xx_without_an_id_is_not_retried(sms):
    provider = HttpProvider(provider_settings(sms.base_url, response_id_field="data.id"))
    with pytest.raises(ProviderError) as raised:
        provider.send(outbound())
    assert raised.value.code == "provider_bad_response" and not raised.value.transient
    assert raised.value.outcome_unknown, "it answered 2xx: it may have taken the message"


@pytest.mark.parametrize("cap", ["max_per_day", "max_per_recipient_per_hour"])
def test_a_message_taken_without_an_id_keeps_its_place_in_the_cap(
    runtime, client, make_stream, account_key, sms, cap
):
    """The carrier answers 200 without the id: it took the request. The message fails as a
    dead letter to check before a replay, and under a cap of 1 the next message to the same
    number is rejected, not sent as a second one."""
    stream = make_stream(settings={cap: 1})
    no_id = HttpProvider(provider_settings(sms.base_url, response_id_field="data.id"))
    accepted = client.post(
        "/v1/messages", json={"messages": [message(), message()]}, headers=auth(stream["token"])
    )
    assert accepted.status_code == 202, accepted.text
    first, second = (result["message_id"] for result in accepted.json()["results"])
    registry = ProviderRegistry({"http": no_id}, "http")
    Delivery(runtime, registry, RedisAdmission(runtime.redis)).deliver(first, "transactional")
    found = client.get(f"/api/v1/messages/{first}", headers=auth(account_key)).json()
    assert (found["status"], found["error"]["code"]) == ("failed", "provider_bad_response")
    assert len(sms.accepted()) == 1
    letters = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert [(letter["message_id"], letter["reason"]) for letter in letters] == [
        (first, "outcome_unknown")
    ]
    delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis)).deliver(
        second, "transactional"
    )
    found = client.get(f"/api/v1/messages/{second}", headers=auth(account_key)).json()
    assert (found["status"], found["error"]["code"]) == ("rejected", cap)


def test_a_message_refused_for_our_credentials_is_a_dead_letter_to_replay_once_mended(
    runtime, client, make_stream, account_key, sms
):
    """The operator rotates the carrier's key wrongly: the carrier answers 401 to every
    message. The message fails, but not for itself: it is kept as a dead letter (reason
    ``configuration``), and it gives its place in the day's cap back. Once the key is right,
    a replay delivers it."""
    stream = make_stream(settings={"max_per_day": 1})
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    wrong_key = HttpProvider(
        provider_settings(sms.base_url).model_copy(
            update={"auth_value": SecretStr("Bearer rotated")}
        )
    )
    refused_before = REGISTRY.get_sample_value(
        "streams_provider_errors_total", {"provider": "http", "kind": "configuration"}
    )
    Delivery(
        runtime, ProviderRegistry({"http": wrong_key}, "http"), RedisAdmission(runtime.redis)
    ).deliver(message_id, "transactional")
    found = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert (found["status"], found["error"]["code"]) == ("failed", "provider_auth_failed")
    assert sms.accepted() == []
    assert (refused_before or 0) + 1 == REGISTRY.get_sample_value(
        "streams_provider_errors_total", {"provider": "http", "kind": "configuration"}
    )
    letters = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert [(letter["message_id"], letter["reason"]) for letter in letters] == [
        (message_id, "configuration")
    ]

    replayed = client.post(
        f"/api/v1/dead-letters/{letters[0]['id']}/replay", headers=auth(account_key)
    )
    assert replayed.status_code == 202, replayed.text
    right_key = HttpProvider(provider_settings(sms.base_url))
    Delivery(
        runtime, ProviderRegistry({"http": right_key}, "http"), RedisAdmission(runtime.redis)
    ).deliver(message_id, "transactional")
    found = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    # Under a cap of one a day: the refused call did not use the day up.
    assert (found["status"], found["error"]) == ("sent", None)
    assert [r["body"]["reference"] for r in sms.accepted()] == [message_id]


# ---------------------------------------------------------------- through the worker, and back


def dlr(client, document, secret=WEBHOOK_SECRET):
    raw = json.dumps(document).encode()
    return client.post(
        "/webhooks/dlr/http",
        content=raw,
        headers={"X-Signature": body_hmac(secret, raw), "Content-Type": "application/json"},
    )


def _send_until(client, runtime, stream, account_key, settled, timeout: float = 15):
    """Send one message to ``stream`` and run a worker until ``settled(message)`` holds for
    the message as the API shows it; returns a function that shows it."""
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]

    def shown():
        return client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()

    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(lambda: settled(shown()), timeout), shown()
    finally:
        worker.stop(timeout=5_000)
    return shown


def test_sends_retry_transient_errors_then_receipts_deliver(
    client, runtime, make_stream, account_key, sms
):
    stream = make_stream()
    sms.fail_next(2, 503)
    shown = _send_until(client, runtime, stream, account_key, lambda m: m["status"] == "sent")
    provider_id = shown()["provider_message_id"]
    assert shown()["provider"] == "http" and provider_id.startswith("sms-")
    assert len(sms.accepted()) == 1

    assert (
        dlr(client, {"message_id": provider_id, "status": "DELIVRD"}, secret="wrong").status_code
        == 401
    )
    assert shown()["status"] == "sent"
    assert dlr(client, {"message_id": provider_id, "status": "DELIVRD"}).json()["applied"] == 1
    assert dlr(client, {"message_id": provider_id, "status": "ACCEPTD"}).json()["applied"] == 0
    assert dlr(client, {"message_id": provider_id, "status": "UNDELIV"}).json()["applied"] == 0
    assert shown()["status"] == "delivered"
    bad = dlr(client, {"message_id": provider_id, "status": "MAYBE"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
    assert client.post("/webhooks/dlr/smpp", content=b"{}").status_code == 404


def _sent_message(client, runtime, stream, content, provider_id):
    message_id = client.post(
        "/v1/messages",
        json={"messages": [message(message_content=content)]},
        headers=auth(stream["token"]),
    ).json()["results"][0]["message_id"]
    with runtime.session_factory() as session:
        session.execute(
            text(
                "UPDATE messages SET status='sent', provider='http', provider_message_id=:p "
                "WHERE id=:id"
            ),
            {"p": provider_id, "id": uuid.UUID(message_id)},
        )
        session.commit()
    return message_id


def test_a_retry_the_provider_is_still_processing_is_retried_until_it_answers(
    client, runtime, settings, make_stream, account_key, sms
):
    """Our first request times out on our side while the provider is still taking the
    message; our retry, with the same Idempotency-Key, then gets 409 (the Idempotency-Key
    draft: the earlier request is outstanding, "no correction is required"). A 409 is not a
    refusal: the retry is retried, and once the first request is done the provider answers
    with its id. The message is sent, taken once. (Treated as a refusal, it failed, though
    the provider had it.)"""
    runtime.settings = settings.model_copy(update={"retry_backoff_seconds": 0.5})
    sms.conflict_while_in_progress = True
    stream = make_stream()
    sms.fail_next(1, 200, delay_seconds=3.0)  # taken, but answered after our 1 s timeout
    shown = _send_until(
        client, runtime, stream, account_key, lambda m: m["status"] in ("sent", "failed"), 20
    )
    answers = [request["answered"] for request in sms.requests]
    assert 409 in answers, answers
    assert shown()["status"] == "sent", shown()
    assert len(sms.by_reference) == 1, "the provider took it once"
    assert shown()["provider_message_id"] == next(iter(sms.by_reference.values()))


def test_multipart_is_delivered_only_when_every_part_is(client, runtime, make_stream, account_key):
    stream = make_stream()
    long_text = "x" * 400  # three GSM-7 segments
    ok = _sent_message(client, runtime, stream, long_text, "mp-ok")
    partial = _sent_message(client, runtime, stream, long_text, "mp-partial")

    def shown(message_id):
        return client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()

    assert shown(ok)["segments"] == 3
    dlr(client, {"message_id": "mp-ok", "status": "DELIVRD", "part": 1, "parts": 3})
    dlr(client, {"message_id": "mp-ok", "status": "DELIVRD", "part": 3, "parts": 3})
    dlr(client, {"message_id": "mp-ok", "status": "DELIVRD", "part": 3, "parts": 3})  # repeat
    assert shown(ok)["status"] == "sent", "two of three parts: not final yet"
    dlr(client, {"message_id": "mp-ok", "status": "DELIVRD", "part": 2, "parts": 3})
    assert shown(ok)["status"] == "delivered"
    assert shown(ok)["history"][-1]["detail"] == "3 of 3 parts delivered"

    dlr(
        client,
        [
            {"message_id": "mp-partial", "status": "DELIVRD", "part": 1, "parts": 3},
            {"message_id": "mp-partial", "status": "UNDELIV", "part": 2, "parts": 3},
            {"message_id": "mp-partial", "status": "DELIVRD", "part": 3, "parts": 3},
        ],
    )
    final = shown(partial)
    assert final["status"] == "undelivered"
    assert final["history"][-1]["detail"] == "2 of 3 parts delivered"
    assert final["error"]["code"] == "undelivered" and "2 of 3 parts" in final["error"]["message"]


def _send_one(client, stream, **fields) -> str:
    response = client.post(
        "/v1/messages", json={"messages": [message(**fields)]}, headers=auth(stream["token"])
    )
    return response.json()["results"][0]["message_id"]


def _http_delivery(runtime) -> Delivery:
    provider = HttpProvider(runtime.settings.http_provider)
    return Delivery(
        runtime, ProviderRegistry({"http": provider}, "http"), RedisAdmission(runtime.redis)
    )


def test_a_message_expired_after_a_timed_out_attempt_moves_on_with_the_carriers_receipt(
    client, runtime, make_stream, account_key, sms
):
    """A timed-out request may have been taken. When its retry would come after the
    message's validity, the message expires, but the carrier's receipt is the truth: it
    moves the message on as it moves a failed one (``core.receipts``), and clears the
    error."""
    runtime.settings = runtime.settings.model_copy(update={"retry_backoff_seconds": 600.0})
    message_id = _send_one(client, make_stream(), validity_seconds=120)
    sms.fail_next(1, 200, delay_seconds=2.0)  # taken, but answered after the 1 s timeout
    _http_delivery(runtime).deliver(message_id, "transactional")
    assert wait_until(lambda: message_id in sms.by_reference, timeout=5), "the carrier took it"

    def shown():
        return client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()

    assert (shown()["status"], shown()["attempts"]) == ("expired", 1)
    receipt = {"reference": message_id, "status": "DELIVRD"}
    assert dlr(client, receipt).json()["applied"] == 1
    assert dlr(client, receipt).json()["applied"] == 0
    final = shown()
    assert (final["status"], final["error"]) == ("delivered", None)
    assert final["history"][-1]["detail"].endswith(
        "the carrier took it after all (it had expired: expired)"
    )


def test_a_message_canceled_while_its_retry_waits_moves_on_with_the_carriers_receipt(
    client, runtime, make_stream, account_key, sms
):
    """A timed-out request may have been taken. The account cancels the message while its
    retry waits (``queued``, one attempt made): no retry goes, but the carrier's receipt is
    the truth and moves it on, as it moves one expired after a claim. Canceled before any
    claim, a message was never sent, and a receipt naming it changes nothing."""
    runtime.settings = runtime.settings.model_copy(update={"retry_backoff_seconds": 600.0})
    stream = make_stream()
    message_id, never_sent = _send_one(client, stream), _send_one(client, stream)
    sms.fail_next(1, 200, delay_seconds=2.0)  # taken, but answered after the 1 s timeout
    _http_delivery(runtime).deliver(message_id, "transactional")
    assert wait_until(lambda: message_id in sms.by_reference, timeout=5), "the carrier took it"

    def shown(key: str) -> dict:
        return client.get(f"/api/v1/messages/{key}", headers=auth(account_key)).json()

    assert (shown(message_id)["status"], shown(message_id)["attempts"]) == ("queued", 1)
    for key in (message_id, never_sent):
        canceled = client.post(f"/api/v1/messages/{key}/cancel", headers=auth(account_key))
        assert canceled.json()["status"] == "canceled"
    assert dlr(client, {"reference": message_id, "status": "DELIVRD"}).json()["applied"] == 1
    assert dlr(client, {"reference": never_sent, "status": "DELIVRD"}).json()["applied"] == 0
    final = shown(message_id)
    assert (final["status"], final["error"]) == ("delivered", None)
    assert final["history"][-1]["detail"].endswith("(it had canceled: provider_timeout)")
    assert shown(never_sent)["status"] == "canceled"


@pytest.mark.parametrize("expired", ["before_any_claim", "between_its_claim_and_the_call"])
def test_a_message_expired_before_any_call_ignores_a_receipt(
    client, runtime, make_stream, account_key, sms, expired
):
    """Expired before it was ever claimed, or claimed and expired before its call was
    made (the worker stalled in between: that claim is not counted), a message was never
    sent: a receipt naming it (a carrier's mistake, a forgery with our key) changes nothing,
    on either path."""
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    message_id = _send_one(client, make_stream(), validity_seconds=30)
    delivery = _http_delivery(runtime)
    if expired == "before_any_claim":
        clock.advance(31)
    else:
        for name in ("_claim", "_claim_ungated"):

            def claim_then_stall(keys, claim=getattr(delivery, name)):  # type: ignore[no-untyped-def]
                claimed = claim(keys)
                clock.advance(31)
                return claimed

            setattr(delivery, name, claim_then_stall)
    delivery.deliver(message_id, "transactional")

    def shown():
        return client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()

    assert (shown()["status"], shown()["attempts"]) == ("expired", 0)
    assert sms.requests == []
    applied = dlr(client, {"reference": message_id, "status": "DELIVRD"}).json()["applied"]
    delivery.apply_receipt(message_id, "delivered")
    assert (applied, shown()["status"], shown()["error"]["code"]) == (0, "expired", "expired")


def test_a_receipt_that_comes_while_the_retry_waits_is_applied_once_the_retry_is_sent(
    client, runtime, make_stream, account_key, sms
):
    """The first call times out although the carrier took the message, which goes back to
    ``queued`` to wait out its retry's back-off. The carrier's receipt (``UNDELIV``, naming
    our id as ``reference``) comes during that wait: it is stored against the message but
    moves nothing, since a receipt moves only a ``sending`` or ``sent`` one. The retry then
    goes, the carrier recognises the reference and answers with the same id, and the worker
    records ``sent``. Its follow-up applies the stored receipt, once. (It used to look only
    at receipts with no message yet, and the relay's sweep too: the message stayed ``sent``
    for good, and the customer never learned that it was not delivered.)"""
    runtime.settings = runtime.settings.model_copy(
        update={"retry_backoff_seconds": 60.0, "retry_backoff_max_seconds": 60.0}
    )
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    message_id = _send_one(client, make_stream())
    delivery = _http_delivery(runtime)
    sms.fail_next(1, 200, delay_seconds=2.0)  # taken, but answered after the 1 s timeout
    delivery.deliver(message_id, "transactional")
    assert wait_until(lambda: message_id in sms.by_reference, timeout=5), "the carrier took it"

    def shown():
        return client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()

    assert (shown()["status"], shown()["attempts"], shown()["hold_reason"]) == (
        "queued",
        1,
        "retry",
    )
    provider_id = sms.by_reference[message_id]
    receipt = {"message_id": provider_id, "reference": message_id, "status": "UNDELIV"}
    assert dlr(client, receipt).json()["applied"] == 0
    assert shown()["status"] == "queued"

    clock.advance(120)  # past the back-off: the retry's job comes
    delivery.deliver(message_id, "transactional")
    assert (shown()["status"], shown()["provider_message_id"]) == ("sent", provider_id)
    sent = [[message_id, "sent", clock().isoformat(), None]]
    StatusFollowUp(runtime).follow(sent)
    assert (shown()["status"], shown()["error"]["code"]) == ("undelivered", "undelivered")

    StatusFollowUp(runtime).follow(sent)  # the job again (at least once): nothing more
    assert dlr(client, receipt).json()["applied"] == 0  # a late repeat neither
    assert [h["status"] for h in shown()["history"]].count("undelivered") == 1


def test_a_receipt_for_a_message_not_called_yet_is_not_kept_for_its_send(
    client, runtime, make_stream, account_key, sms
):
    """A receipt naming a message that waits for its first call (a carrier's mistake, a
    forgery with our key) is no carrier's: it is not kept, so the message's ``sent``,
    when it comes, does not pick it up."""
    message_id = _send_one(client, make_stream())
    receipt = {"reference": message_id, "status": "DELIVRD"}
    assert dlr(client, receipt).json()["applied"] == 0
    _http_delivery(runtime).deliver(message_id, "transactional")
    StatusFollowUp(runtime).follow([[message_id, "sent", runtime.clock().isoformat(), None]])
    shown = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert shown["status"] == "sent"


def test_a_receipt_before_the_provider_id_is_known_waits_for_it(
    client, runtime, make_stream, account_key
):
    from core.receipts import resolve_waiting_receipts

    stream = make_stream()
    assert dlr(client, {"message_id": "early-1", "status": "DELIVRD"}).json()["applied"] == 0
    message_id = _sent_message(client, runtime, stream, "hello", "early-1")
    with runtime.session_factory() as session:
        change = resolve_waiting_receipts(session, uuid.UUID(message_id), runtime.clock())
        session.commit()
    assert change is not None
    shown = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert shown["status"] == "delivered"


def test_a_waiting_receipt_whose_follow_up_job_was_lost_is_applied_by_the_sweep(
    client, runtime, settings, make_stream, account_key
):
    """The early receipt waits for the follow-up job of the message's ``sent``. When Redis
    lost that job, the message stayed ``sent`` though the carrier had delivered it. The
    sweep reads each receipt once, a grace after it came, and applies it; a receipt no
    message claims is left waiting, and read no more."""
    runtime.settings = settings.model_copy(
        update={"callbacks": settings.callbacks.model_copy(update={"sweep_grace_seconds": 1})}
    )
    # The grace is counted on a clock the test moves: on a loaded machine the requests
    # below could take longer than the grace on the wall clock.
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    receipts = WaitingReceipts(runtime)
    assert receipts.sweep() == 0  # the first run starts at the end of the receipts
    stream = make_stream()
    assert dlr(client, {"message_id": "late-1", "status": "DELIVRD"}).json()["applied"] == 0
    assert dlr(client, {"message_id": "nobody", "status": "DELIVRD"}).json()["applied"] == 0
    message_id = _sent_message(client, runtime, stream, "hello", "late-1")  # no job follows
    runtime.broker.flush_all()

    def status() -> str:
        shown = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key))
        return shown.json()["status"]

    assert receipts.sweep() == 0, "within the grace its job may still come"
    assert status() == "sent"
    clock.advance(1.2)
    recovered = REGISTRY.get_sample_value("streams_receipts_recovered_total") or 0.0
    assert receipts.sweep() == 1
    assert status() == "delivered"
    assert REGISTRY.get_sample_value("streams_receipts_recovered_total") == recovered + 1
    assert receipts.sweep() == 0
    with runtime.session_factory() as session:
        waiting = session.execute(
            text("SELECT provider_message_id FROM provider_receipts WHERE message_id IS NULL")
        ).scalars()
        assert list(waiting) == ["nobody"]


def test_inbound_in_the_providers_format(client, runtime, make_stream, account_key):
    stream = make_stream(
        name="Replies", type="two_way", settings={"callback_url": "https://example.com/hook"}
    )
    body = json.dumps(
        {"from": "+972524265292", "to": "Acme", "text": "Hello", "message_id": "mo-1"}
    ).encode()
    url = f"/webhooks/{stream['id']}/inbound"
    assert client.post(url, content=body, headers={"X-Signature": "0" * 64}).status_code == 401
    first = client.post(url, content=body, headers={"X-Signature": body_hmac(WEBHOOK_SECRET, body)})
    assert first.status_code == 200 and first.json()["duplicate"] is False
    again = client.post(url, content=body, headers={"X-Signature": body_hmac(WEBHOOK_SECRET, body)})
    assert again.json() == {**first.json(), "duplicate": True, "opt_out": None}
    missing = json.dumps({"text": "no sender"}).encode()
    refused = client.post(
        url, content=missing, headers={"X-Signature": body_hmac(WEBHOOK_SECRET, missing)}
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "from"
