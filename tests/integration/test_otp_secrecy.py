"""Invariant 8 for one-time codes: after the send, a code appears in no log line, no status
event, no error body and no API response; at rest it is kept only as a keyed digest (and,
until the carrier has it, inside the sealed text). The carrier still gets the real text."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select

from core.logs import configure_logging
from schemas.tables import Message, OtpCode
from tests.conftest import auth
from tests.fakes.http_sms import provider_settings
from tests.otp_codes import PHONE, code_of, send_code, verify
from tests.processes import wait_until
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.pool import start_worker
from workers.providers.base import Accepted, OutboundMessage
from workers.providers.http import HttpProvider
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider


def status_of(client, key: str, message_id: str) -> str:
    return client.get(f"/api/v1/messages/{message_id}", headers=auth(key)).json()["status"]


def test_invariant_8_otp_codes_never_reach_logs_events_or_responses(
    restore_logging, client, runtime, otp_stream, account_key, capfd
):
    configure_logging("DEBUG", "json")  # here, so it writes to this phase's captured stderr
    published: list = []
    runtime.status_feed.subscribe(published.extend)
    theirs = otp_stream(name="Theirs", code_mode="customer_code", code_length=10)
    ours = otp_stream(name="Ours", code_length=10, alphabet="alphanumeric")
    whole = otp_stream(name="Whole", code_mode="full_text", code_length=8)
    responses = []

    sent = {
        "theirs": send_code(client, theirs, code="7305918264"),
        "ours": send_code(client, ours),
        "whole": send_code(
            client, whole, code="64028315", message_content="Acme: 64028315 is your code."
        ),
    }
    ids = {name: response.json()["message_id"] for name, response in sent.items()}
    codes = {"theirs": "7305918264", "ours": code_of(runtime, ids["ours"]), "whole": "64028315"}
    responses += sent.values()
    responses.append(send_code(client, theirs, code="7305918264"))  # refused: cooldown
    responses.append(send_code(client, theirs, phone="+1555", code="7305918264"))  # bad phone
    responses.append(send_code(client, ours, code=codes["ours"]))  # refused: generate mode
    responses.append(send_code(client, whole, code="64028315", message_content="no code here"))

    worker = start_worker(runtime, ["otp"], threads=2)
    try:
        assert wait_until(
            lambda: all(status_of(client, account_key, i) == "delivered" for i in ids.values()),
            timeout=20,
        )
    finally:
        worker.stop(timeout=5_000)

    streams = {"theirs": theirs, "ours": ours, "whole": whole}
    for name, stream in streams.items():
        for path, key in (
            (f"/v1/messages/{ids[name]}", stream["token"]),
            (f"/api/v1/messages/{ids[name]}", account_key),
        ):
            view = client.get(path, headers=auth(key))
            responses.append(view)
            assert "*" * len(codes[name]) in view.json()["message_content"]
        responses.append(verify(client, stream, "0" * len(codes[name])))
        right = verify(client, stream, codes[name])
        assert right.json()["valid"] is True
        responses += [right, verify(client, stream, codes[name])]

    with runtime.session_factory() as session:
        stored = session.execute(select(Message.body, Message.sealed_body)).all()
        digests = session.scalars(select(OtpCode.code_digest)).all()
    output = capfd.readouterr()
    logged = output.out + output.err
    assert '"event": "otp_sent"' in logged and '"event": "otp_verified"' in logged
    assert '"event": "message_sent"' in logged
    assert len(published) >= 9  # queued, sending, sent (and delivered) for each message
    assert all(sealed is None for _, sealed in stored), "the sealed text is forgotten once sent"
    for code in codes.values():
        assert code not in logged
        assert code not in repr(published)
        for response in responses:
            assert code not in response.text, response.text
        assert all(code not in body for body, _ in stored)
        assert all(code not in digest for digest in digests)


class RecordingSandbox(SandboxProvider):
    """The sandbox carrier, remembering what it was handed (what a real carrier would see)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.handed: list[OutboundMessage] = []

    def send(self, message: OutboundMessage) -> Accepted:
        self.handed.append(message)
        return super().send(message)


def delivery_with(runtime, carrier: SandboxProvider) -> Delivery:
    """The real delivery pipeline, handing messages to ``carrier``."""
    return Delivery(
        runtime, ProviderRegistry({"sandbox": carrier}, "sandbox"), RedisAdmission(runtime.redis)
    )


def stored(runtime, message_id: str) -> tuple[str, str | None, str]:
    """(body, sealed_body, status) of a message."""
    with runtime.session_factory() as session:
        row = session.execute(
            select(Message.body, Message.sealed_body, Message.status).where(
                Message.id == uuid.UUID(message_id)
            )
        ).one()
    return row.body, row.sealed_body, row.status


def test_the_carrier_gets_the_real_text_and_then_it_is_forgotten(
    client, runtime, otp_stream, settings
):
    stream = otp_stream(code_mode="customer_code", code_length=6)
    message_id = send_code(client, stream, code="918273").json()["message_id"]
    carrier = RecordingSandbox(settings.sandbox, runtime.redis)

    delivery_with(runtime, carrier).deliver(message_id)

    assert [m.body for m in carrier.handed] == ["Your code is 918273"]
    # The test sandbox reports delivery at once, so the receipt is recorded with the send.
    assert stored(runtime, message_id) == ("Your code is ******", None, "delivered")
    assert verify(client, stream, "918273", phone=PHONE).json()["valid"] is True


def test_an_otp_message_that_fails_forgets_its_sealed_text_too(
    client, runtime, otp_stream, settings
):
    stream = otp_stream()
    message_id = send_code(client, stream).json()["message_id"]
    refusing = SandboxProvider(settings.sandbox.model_copy(update={"failure_rate": 1.0}))

    delivery_with(runtime, refusing).deliver(message_id)

    assert stored(runtime, message_id)[1:] == (None, "failed")


def test_an_otp_message_waiting_past_its_codes_ttl_expires_unsent(
    client, runtime, otp_stream, settings, clock
):
    """The message expires with its code (flow control's expiry): a dead code is never sent
    late, and its sealed text is dropped."""
    stream = otp_stream(ttl_seconds=60)
    message_id = send_code(client, stream).json()["message_id"]
    carrier = RecordingSandbox(settings.sandbox, runtime.redis)
    clock.advance(60)

    delivery_with(runtime, carrier).deliver(message_id)

    assert carrier.handed == []
    assert stored(runtime, message_id)[1:] == (None, "expired")


def test_forgetting_the_sealed_text_needs_no_second_connection(
    client, runtime, otp_stream, settings
):
    """The sealed text is cleared inside the transaction that records ``sent``: a worker
    whose pool has one connection per thread never waits for a second one."""
    from core.runtime import build_runtime

    stream = otp_stream()
    message_id = send_code(client, stream).json()["message_id"]
    narrow = build_runtime(settings.model_copy(update={"database_pool_size": 1}))
    try:
        delivery_with(narrow, SandboxProvider(settings.sandbox, runtime.redis)).deliver(message_id)
        assert narrow.engine.pool.checkedout() == 0
    finally:
        narrow.close()
    assert stored(runtime, message_id)[1:] == (None, "delivered")  # receipt at once


def test_a_carrier_error_quoting_the_code_keeps_it_out_of_logs_and_bodies(
    restore_logging, client, runtime, otp_stream, account_key, sms, capfd
):
    """Carriers quote the text they refuse ("text 'Your code is 918273' rejected"). Those
    words are stored as the message's error and logged, here in ``message_expired`` (a
    retry after 600 s would outlive the code's 120 s). The code is masked out of them as
    the stored body masks it; the rest of the carrier's words are kept."""
    configure_logging("DEBUG", "json")
    code = "918273"
    stream = otp_stream(code_mode="customer_code", code_length=6, ttl_seconds=120)
    message_id = send_code(client, stream, code=code).json()["message_id"]
    refusal = f"upstream refused text 'Your code is {code}', try later"
    sms.fail_next(1, 503, body={"error": {"message": refusal}}, headers={"Retry-After": "600"})
    carrier = HttpProvider(provider_settings(sms.base_url))
    delivery = Delivery(
        runtime, ProviderRegistry({"sandbox": carrier}, "sandbox"), RedisAdmission(runtime.redis)
    )
    try:
        delivery.deliver(message_id, "otp")
    finally:
        carrier.close()
    found = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert found["status"] == "expired", found
    output = capfd.readouterr()
    logged = output.out + output.err
    assert '"event": "message_expired"' in logged
    assert code not in logged and code not in json.dumps(found)
    assert "Your code is ******" in json.dumps(found), "the carrier's words, masked"
