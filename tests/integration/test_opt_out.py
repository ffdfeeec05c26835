"""Opt-out: STOP (and its synonyms) from a number puts it on the account's suppression list;
marketing to it is rejected (``opted_out``) while OTP and transactional messages still go;
START takes it off. Plus the sandbox inbound webhook's signature checks."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import auth, message
from tests.processes import wait_until
from tests.two_way import post_signed_inbound, signing_secret
from workers.pool import start_worker

NUMBER = "+972524265292"


@pytest.fixture
def two_way(make_stream, client, account_key):
    stream = make_stream(
        name="Replies", type="two_way", settings={"callback_url": "https://example.com/hook"}
    )
    stream["secret"] = signing_secret(client, account_key, stream["id"])
    return stream


def reply(client, stream, text, number=NUMBER):
    response = post_signed_inbound(
        client, stream["id"], stream["secret"], {"from": number, "to": "Acme", "text": text}
    )
    assert response.status_code == 200, response.text
    return response.json()


def statuses(client, key, ids):
    return [client.get(f"/api/v1/messages/{i}", headers=auth(key)).json() for i in ids]


def test_stop_rejects_marketing_but_otp_and_transactional_still_go(
    client, runtime, make_stream, account_key, two_way
):
    marketing = make_stream(name="Promo", type="marketing")
    otp = make_stream(name="Codes", type="otp")
    transactional = make_stream(name="Orders")
    assert reply(client, two_way, "  Stop \n")["opt_out"] == "stop"
    listed = client.get("/api/v1/suppressions", headers=auth(account_key)).json()
    assert [(i["phone"], i["stream_id"]) for i in listed["items"]] == [(NUMBER, two_way["id"])]

    ids = [
        client.post(
            "/v1/messages", json={"messages": [message()]}, headers=auth(s["token"])
        ).json()["results"][0]["message_id"]
        for s in (marketing, otp, transactional)
    ]
    worker = start_worker(runtime, ["marketing", "otp", "transactional"], threads=3)
    try:
        assert wait_until(
            lambda: (
                [m["status"] for m in statuses(client, account_key, ids)]
                == ["rejected", "delivered", "delivered"]
            ),
            20,
        )
    finally:
        worker.stop(timeout=5_000)
    rejected = statuses(client, account_key, ids)[0]
    assert rejected["error"]["code"] == "opted_out"
    assert rejected["provider"] is None, "it never reached a provider"


def test_start_takes_the_number_off_the_list(client, runtime, make_stream, account_key, two_way):
    marketing = make_stream(name="Promo", type="marketing")
    reply(client, two_way, "UNSUBSCRIBE")
    assert client.get("/api/v1/suppressions", headers=auth(account_key)).json()["total"] == 1
    assert reply(client, two_way, "start")["opt_out"] == "start"
    assert client.get("/api/v1/suppressions", headers=auth(account_key)).json()["total"] == 0
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(marketing["token"])
    ).json()["results"][0]["message_id"]
    worker = start_worker(runtime, ["marketing"], threads=1)
    try:
        assert wait_until(
            lambda: statuses(client, account_key, [message_id])[0]["status"] == "delivered", 15
        )
    finally:
        worker.stop(timeout=5_000)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("STOP", "stop"),
        ("end", "stop"),
        (" Quit ", "stop"),
        ("CANCEL", "stop"),
        ("optout", "stop"),
        ("ＳＴＯＰ", "stop"),
        ("stop please", None),
        ("Stopwatch", None),
    ],
)
def test_keywords(client, two_way, text, action):
    assert reply(client, two_way, text)["opt_out"] == action


def test_suppressions_are_per_account_and_deletable(
    client, two_way, account_key, other_account_key
):
    reply(client, two_way, "STOP")
    assert client.get("/api/v1/suppressions", headers=auth(other_account_key)).json()["total"] == 0
    path = f"/api/v1/suppressions/{NUMBER.replace('+', '%2B')}"
    assert client.delete(path, headers=auth(other_account_key)).status_code == 404
    assert client.delete(path, headers=auth(account_key)).status_code == 204
    assert client.delete(path, headers=auth(account_key)).status_code == 404
    bad = client.delete("/api/v1/suppressions/12345", headers=auth(account_key))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "phone"
    filtered = client.get(
        "/api/v1/suppressions", params={"phone": "not a number"}, headers=auth(account_key)
    )
    assert filtered.status_code == 422


# ---------------------------------------------------------------- sandbox inbound signatures


def test_sandbox_inbound_signature_valid_invalid_tampered_and_replayed(client, runtime, two_way):
    body = {"from": NUMBER, "to": "Acme", "text": "Hello"}
    stream_id, secret = two_way["id"], two_way["secret"]
    assert post_signed_inbound(client, stream_id, secret, body).status_code == 200
    wrong_secret = post_signed_inbound(client, stream_id, "whsec_" + "x" * 43, body)
    assert wrong_secret.status_code == 401
    assert wrong_secret.json()["error"]["code"] == "invalid_signature"
    assert post_signed_inbound(client, stream_id, secret, body, tamper=True).status_code == 401
    old = int(time.time()) - 3600
    assert post_signed_inbound(client, stream_id, secret, body, timestamp=old).status_code == 401
    unsigned = client.post(f"/webhooks/{stream_id}/inbound", json=body)
    assert unsigned.status_code == 401
    unknown = post_signed_inbound(client, str(uuid.uuid4()), secret, body)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": {"code": "not_found", "message": "No such stream."}}
    with runtime.engine.connect() as connection:
        from sqlalchemy import text

        assert connection.execute(text("SELECT count(*) FROM inbound_messages")).scalar() == 1


def test_sandbox_inbound_bad_bodies_name_the_field(client, runtime, two_way):
    for body, field in [
        ({"to": "Acme", "text": "hi"}, "from"),
        ({"from": "12345", "text": "hi"}, "from"),
        ({"from": NUMBER}, "text"),
        ({"from": NUMBER, "text": "hi", "extra": 1}, "extra"),
        # In UTC (as it is stored) this would be before the year 1.
        ({"from": NUMBER, "text": "hi", "received_at": "0001-01-01T00:00:00+14:00"}, "received_at"),
    ]:
        response = post_signed_inbound(client, two_way["id"], two_way["secret"], body)
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field, body


def test_webhooks_tab_shows_endpoints_and_examples(client, make_stream, account_key, two_way):
    tab = client.get(f"/api/v1/streams/{two_way['id']}/webhooks", headers=auth(account_key))
    body = tab.json()
    assert body["inbound"]["url"].endswith(f"/webhooks/{two_way['id']}/inbound")
    assert body["inbound"]["example_body"]["text"] == "STOP"
    assert body["callback"]["url"] == "https://example.com/hook"
    assert body["callback"]["signing_secret"].startswith("whsec_")
    assert set(body["callback"]["example_bodies"]) == {"message.inbound", "message.status"}
    sms = make_stream(name="Orders")
    assert (
        client.get(f"/api/v1/streams/{sms['id']}/webhooks", headers=auth(account_key)).status_code
        == 409
    )
