"""The pure rules of two-way and WhatsApp: opt-out keywords, template parameters, multipart
outcomes, the HTTP provider's field mapping, Retry-After, Meta's error codes, the Cloud API
body, and which addresses callbacks may reach."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.http_provider_format import FormatError, parse_inbound, parse_receipt, request_body
from core.json_paths import get_path, set_path
from core.opt_out import opt_out_keyword
from core.provider_choice import provider_for
from core.receipts import multipart_outcome
from core.settings import HttpProviderSettings
from core.whatsapp_templates import parameter_count, positional_values, render
from schemas.enums import MessageStatus
from workers.outbound_guard import forbidden, refusal
from workers.providers.base import OutboundMessage
from workers.providers.http_answers import error_text, retry_after_seconds
from workers.providers.whatsapp_cloud import classify_error, cloud_api_body


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("STOP", "stop"),
        ("stop", "stop"),
        ("  Unsubscribe\t", "stop"),
        ("END", "stop"),
        ("quit", "stop"),
        ("Cancel", "stop"),
        ("OPTOUT", "stop"),
        ("ＳＴＯＰ", "stop"),
        ("STOP\u200b", "stop"),
        ("start", "start"),
        ("START ", "start"),
        ("stop it", None),
        ("opt out", None),
        ("", None),
        (None, None),
        ("STOP" * 40, None),
    ],
)
def test_opt_out_keywords(text, action):
    assert opt_out_keyword(text) == action


def test_template_parameters():
    assert parameter_count("Hi {{1}}, order {{2}} ({{1}})") == 2
    assert parameter_count("No parameters") == 0
    with pytest.raises(ValueError, match="without gaps"):
        parameter_count("{{2}}")
    assert render("Hi {{1}}, {{2}}", ["Dana", "1003"]) == "Hi Dana, 1003"
    assert positional_values(["a", 2], 2) == ["a", "2"]
    assert positional_values({"2": "b", "1": "a"}, 2) == ["a", "b"]
    for bad, expected in [
        (["a"], 2),
        ({"1": "a", "3": "b"}, 2),
        (["a", "b\nc"], 2),
        (["a", "x     y"], 2),
        (["a", None], 2),
        ("a,b", 2),
        (["", "b"], 2),
    ]:
        with pytest.raises(ValueError):
            positional_values(bad, expected)


def test_multipart_outcome():
    assert multipart_outcome(3, {1: "delivered", 2: "delivered"}) is None
    assert multipart_outcome(3, {1: "delivered", 2: "delivered", 3: "delivered"}) == (
        MessageStatus.delivered,
        "3 of 3 parts delivered",
    )
    assert multipart_outcome(3, {1: "delivered", 2: "undelivered", 3: "delivered"}) == (
        MessageStatus.undelivered,
        "2 of 3 parts delivered",
    )
    assert multipart_outcome(1, {1: "undelivered"})[0] is MessageStatus.undelivered


def test_json_paths():
    assert get_path({"messages": [{"id": "x"}]}, "messages.0.id") == "x"
    assert get_path({"messages": []}, "messages.0.id") is None
    assert get_path({"a": 1}, "a.b") is None
    document: dict = {}
    set_path(document, "sms.to", "+1")
    assert document == {"sms": {"to": "+1"}}


def test_http_provider_format_reads_and_refuses():
    settings = HttpProviderSettings(
        request_fields={"recipient": "dest.msisdn", "body": "content", "reference": "ref"},
        receipt_fields={"message_id": "id", "status": "state", "part": "seq", "parts": "total"},
        _env_file=None,
    )
    assert request_body(settings, sender="A", recipient="+1", body="hi", reference="r") == {
        "dest": {"msisdn": "+1"},
        "content": "hi",
        "ref": "r",
    }
    receipt = parse_receipt(settings, {"id": "p1", "state": "DELIVRD", "seq": "2", "total": 3})
    assert (receipt.provider_message_id, receipt.status, receipt.part, receipt.parts) == (
        "p1",
        "delivered",
        2,
        3,
    )
    for bad, field in [
        ({"state": "DELIVRD"}, "id"),
        ({"id": "p1", "state": "WHO"}, "state"),
        ({"id": "p1", "state": "DELIVRD", "seq": 0}, "seq"),
        ({"id": "p1", "state": "DELIVRD", "seq": 4, "total": 3}, "seq"),
        ({"id": {"x": 1}, "state": "DELIVRD"}, "id"),
    ]:
        with pytest.raises(FormatError) as raised:
            parse_receipt(settings, bad)
        assert raised.value.field == field
    with pytest.raises(FormatError):
        parse_inbound(HttpProviderSettings(_env_file=None), {"text": "hi"})


def test_retry_after_and_error_text():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("999999") == 24 * 3600
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    token = "st_" + "A" * 43
    assert token not in error_text({"error": {"message": f"bad {token}"}}, "x")
    assert error_text(None, "fallback") == "fallback"


def test_meta_error_codes():
    def classify(code, status=400, retry_after=None):
        return classify_error(status, {"error": {"code": code, "message": "m"}}, retry_after, 60)

    rate, _ = classify(130429)
    assert rate.transient and rate.code == "whatsapp_rate_limited"
    pair, _ = classify(131056)
    assert pair.transient and pair.retry_after == 60
    pair_header, _ = classify(131056, retry_after=5)
    assert pair_header.retry_after == 5
    token, credential = classify(190, status=401)
    assert not token.transient and token.code == "whatsapp_invalid_token" and credential
    assert token.configuration
    permission, credential = classify(200, status=403)
    assert permission.code == "whatsapp_permission_denied" and credential
    assert permission.configuration
    for code, ours in [
        (131026, "whatsapp_undeliverable"),
        (132001, "whatsapp_unknown_template"),
        (132000, "whatsapp_template_parameters"),
        (131047, "whatsapp_reengagement_required"),
        (131030, "whatsapp_recipient_not_allowed"),
    ]:
        error, credential = classify(code)
        assert (error.code, error.transient, credential) == (ours, False, False)
        assert not error.configuration, "a refusal of this message, not of our set-up"
    # The business account or number cannot send at all: our set-up, not the message.
    for code, ours in [
        (131031, "whatsapp_account_locked"),
        (131042, "whatsapp_payment_issue"),
        (133010, "whatsapp_number_not_registered"),
        (368, "whatsapp_account_blocked"),
    ]:
        error, credential = classify(code)
        assert (error.code, error.transient, error.configuration) == (ours, False, True)
    outage, _ = classify(131000, status=500)
    assert outage.transient
    unknown_5xx, _ = classify_error(502, None, None, 60)
    assert unknown_5xx.transient and unknown_5xx.code == "whatsapp_unavailable"
    # A proxy's 408: the request was not acted on, so it is offered again.
    proxy_timeout, _ = classify_error(408, None, None, 60)
    assert proxy_timeout.transient and proxy_timeout.code == "whatsapp_unavailable"
    unknown_4xx, _ = classify(999999)
    assert not unknown_4xx.transient and unknown_4xx.code == "whatsapp_rejected"


def test_cloud_api_body():
    base = dict(
        reference="ref-1",
        sender="WhatsApp",
        recipient="+972524265292",
        segments=1,
        encoding="GSM-7",
    )
    text = cloud_api_body(OutboundMessage(body="hi", **base))
    assert text == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "972524265292",
        "biz_opaque_callback_data": "ref-1",
        "type": "text",
        "text": {"preview_url": False, "body": "hi"},
    }
    document = cloud_api_body(
        OutboundMessage(
            body="[document]",
            content={"kind": "media", "type": "document", "id": "123", "filename": "a.pdf"},
            **base,
        )
    )
    assert document["type"] == "document"
    assert document["document"] == {"id": "123", "filename": "a.pdf"}
    no_params = cloud_api_body(
        OutboundMessage(
            body="x",
            content={"kind": "template", "name": "hello", "language": "en", "parameters": []},
            **base,
        )
    )
    assert no_params["template"] == {"name": "hello", "language": {"code": "en"}}


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        # Internal IPv4 addresses written as IPv6 ones that carry them.
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254 (cloud metadata)
        ("64:ff9b::10.0.0.5", True),  # NAT64 of a private address
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::8.8.8.8", True),  # NAT64's local-use prefix: the operator's mapping
        ("2002:a00:5::1", True),  # 6to4 of 10.0.0.5
        ("2002:808:808::1", True),  # 6to4 at all (deprecated; Pythons disagree if global)
        ("::7f00:1", True),  # IPv4-compatible 127.0.0.1
        ("::a9fe:a9fe", True),  # IPv4-compatible 169.254.169.254
        ("fec0::1", True),  # deprecated site-local
        ("64:ff9b::8.8.8.8", False),  # NAT64 of a public address
    ],
)
def test_callback_addresses(address, refused):
    assert forbidden(ipaddress.ip_address(address)) is refused


def test_callback_url_refusals():
    assert refusal("http://127.0.0.1:8080/x", allow_private=False)
    assert refusal("http://[::ffff:127.0.0.1]/x", allow_private=False)
    assert refusal("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", allow_private=False)
    assert refusal("http://localhost/x", allow_private=False)
    assert refusal("ftp://example.com/x", allow_private=False)
    assert refusal("http://127.0.0.1:8080/x", allow_private=True) is None
    assert refusal("http://8.8.8.8/hook", allow_private=False) is None


def test_provider_choice():
    assert provider_for("whatsapp", demo=False, default_provider="http") == "whatsapp_cloud"
    assert provider_for("whatsapp", demo=True, default_provider="http") == "sandbox"
    assert provider_for("marketing", demo=False, default_provider="http") == "http"


def test_the_types_whose_claims_are_never_retaken_are_those_of_a_provider_without_idempotency():
    """``NOT_IDEMPOTENT_TYPES`` (a stale claim of theirs fails rather than being offered
    again) names exactly the stream types whose live provider declares no idempotency."""
    from core.provider_choice import HTTP, NOT_IDEMPOTENT_TYPES, SANDBOX, WHATSAPP_CLOUD
    from schemas.enums import StreamType
    from workers.providers.http import HttpProvider
    from workers.providers.sandbox import SandboxProvider
    from workers.providers.whatsapp_cloud import WhatsAppCloudProvider

    adapters = {SANDBOX: SandboxProvider, HTTP: HttpProvider, WHATSAPP_CLOUD: WhatsAppCloudProvider}
    for default in (SANDBOX, HTTP):
        unsafe = {
            kind.value
            for kind in StreamType
            if not adapters[provider_for(kind, demo=False, default_provider=default)].idempotent
        }
        assert unsafe == NOT_IDEMPOTENT_TYPES
