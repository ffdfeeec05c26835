"""Issue 8, item 6: provider webhooks with a bad signature, a stale or future timestamp, or
a replayed request are refused (or recorded once), and nothing is stored for a refusal.

The plain bad-signature cases already have tests (``test_opt_out.py`` for the sandbox
inbound, ``test_whatsapp.py`` for Meta's signature); these add timestamps at and past the
tolerance, replays, the delivery-receipt webhook and a signature of another stream.
"""

from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from core.clock import utcnow
from core.signatures import SIGNATURE_HEADER, body_hmac, streams_signature
from tests.conftest import auth
from tests.fakes.whatsapp_cloud import signed, text_message, webhook
from tests.two_way import APP_SECRET, PHONE_NUMBER_ID, signing_secret, whatsapp_stream

NUMBER = "+972524265292"
PROVIDER_SECRET = "provider-webhook-secret"


def inbound_count(runtime) -> int:
    with runtime.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM inbound_messages")).scalar() or 0


def callback_count(runtime) -> int:
    with runtime.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM callback_deliveries")).scalar() or 0


@pytest.fixture
def two_way(make_stream, client, account_key):
    stream = make_stream(
        name="Replies",
        type="two_way",
        demo=True,
        settings={"callback_url": "https://example.com/hook"},
    )
    stream["secret"] = signing_secret(client, account_key, stream["id"])
    return stream


def post_inbound(client, stream_id, raw, header):
    return client.post(
        f"/webhooks/{stream_id}/inbound",
        content=raw,
        headers={SIGNATURE_HEADER: header.encode("latin-1"), "Content-Type": "application/json"},
    )


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 10**9])
def test_sandbox_inbound_outside_the_tolerance_is_refused_and_stores_nothing(
    client, runtime, two_way, skew
):
    # The server's clock is pinned to a whole second: with a running clock, a timestamp
    # taken as int(time.time()) is up to a second behind, and +301 can land inside.
    now = utcnow().replace(microsecond=0)
    runtime.clock = lambda: now
    raw = json.dumps({"from": NUMBER, "to": "Acme", "text": "Hello"}).encode()
    header = streams_signature(two_way["secret"], raw, int(now.timestamp()) + skew)

    refused = post_inbound(client, two_way["id"], raw, header)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_signature"
    assert inbound_count(runtime) == 0
    assert callback_count(runtime) == 0


def test_sandbox_inbound_replayed_inside_the_tolerance_is_recorded_once(client, runtime, two_way):
    """The same signed request sent again (no provider message id in it) is a duplicate:
    one inbound message, one customer callback."""
    raw = json.dumps({"from": NUMBER, "to": "Acme", "text": "Hello"}).encode()
    header = streams_signature(two_way["secret"], raw, int(time.time()))

    first = post_inbound(client, two_way["id"], raw, header)
    replayed = post_inbound(client, two_way["id"], raw, header)
    rewritten = post_inbound(client, two_way["id"], raw, header + ",v1=" + "0" * 64)

    assert first.status_code == 200, first.text
    assert not first.json()["duplicate"]
    assert (replayed.status_code, replayed.json()["duplicate"]) == (200, True)
    assert (rewritten.status_code, rewritten.json()["duplicate"]) == (200, True)
    assert replayed.json()["inbound_id"] == first.json()["inbound_id"]
    assert inbound_count(runtime) == 1
    assert callback_count(runtime) == 1
    # A new message (new timestamp, same text) is not a replay.
    later = streams_signature(two_way["secret"], raw, int(time.time()) + 1)
    assert not post_inbound(client, two_way["id"], raw, later).json()["duplicate"]
    assert inbound_count(runtime) == 2


def test_sandbox_inbound_signed_for_another_stream_is_refused(
    client, runtime, make_stream, account_key, two_way
):
    other = make_stream(
        name="Other", type="two_way", demo=True, settings={"callback_url": "https://example.com/o"}
    )
    other_secret = signing_secret(client, account_key, other["id"])
    raw = json.dumps({"from": NUMBER, "to": "Acme", "text": "Hello"}).encode()

    refused = post_inbound(
        client, two_way["id"], raw, streams_signature(other_secret, raw, int(time.time()))
    )

    assert refused.status_code == 401
    assert inbound_count(runtime) == 0


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t=,v1=",
        "v1=" + "0" * 64,
        "t=1700000000",
        "t=" + "9" * 400 + ",v1=00",
        "t=1,v1=" + "\u00e9" * 64,  # latin-1, so it can be sent
        "x" * 5000,
    ],
)
def test_sandbox_inbound_malformed_signature_headers_are_401_not_500(
    client, runtime, two_way, header
):
    raw = json.dumps({"from": NUMBER, "to": "Acme", "text": "Hello"}).encode()
    refused = post_inbound(client, two_way["id"], raw, header)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "invalid_signature"
    assert inbound_count(runtime) == 0


def test_whatsapp_event_replayed_is_recorded_once(client, runtime, make_stream, account_key):
    """Meta signs no timestamp; its message ids make a replay a duplicate."""
    stream = whatsapp_stream(make_stream, client, account_key)
    raw, headers = signed(
        webhook(PHONE_NUMBER_ID, messages=[text_message("972524265292", "Hello")]), APP_SECRET
    )
    url = f"/webhooks/{stream['id']}/whatsapp"

    for _ in range(3):
        assert client.post(url, content=raw, headers=headers).status_code == 200

    assert inbound_count(runtime) == 1
    bad = {**headers, "X-Hub-Signature-256": "sha256=" + body_hmac("another-secret", raw)}
    assert client.post(url, content=raw, headers=bad).status_code == 401
    uppercase = {**headers, "X-Hub-Signature-256": headers["X-Hub-Signature-256"].upper()}
    assert client.post(url, content=raw, headers=uppercase).status_code == 401
    assert inbound_count(runtime) == 1


@pytest.fixture
def settings(settings):
    """The HTTP provider's webhooks are on (they answer 404 without a secret)."""
    provider = settings.http_provider.model_copy(
        update={"webhook_secret": SecretStr(PROVIDER_SECRET)}
    )
    return settings.model_copy(update={"http_provider": provider})


def test_delivery_receipts_need_the_providers_signature(client, settings, make_stream):
    stream = make_stream()
    sent = client.post(
        "/v1/messages",
        json={"messages": [{"recipient_phone": NUMBER, "message_content": "Hi"}]},
        headers=auth(stream["token"]),
    )
    message_id = sent.json()["results"][0]["message_id"]
    header = settings.http_provider.signature_header
    raw = json.dumps({"reference": message_id, "status": "delivered"}).encode()

    for bad in ({}, {header: body_hmac("wrong", raw)}, {header: "sha256=" + "0" * 64}):
        refused = client.post("/webhooks/dlr/http", content=raw, headers=bad)
        assert refused.status_code == 401, refused.text
    status = client.get(f"/v1/messages/{message_id}", headers=auth(stream["token"]))
    assert status.json()["status"] == "queued"
    assert [event["status"] for event in status.json()["history"]] == ["queued"]
