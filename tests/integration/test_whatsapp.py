"""WhatsApp streams end to end: the set-up tab, templates, sends through the Cloud API
adapter against a local fake Cloud API, Meta's webhooks (handshake, signature, out-of-order
statuses, inbound messages) and the invalid-token error state."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DataError

from core.clock import as_utc
from core.settings import WhatsAppApiSettings
from schemas.tables import Message, StreamStat, WhatsAppConfig
from tests.conftest import auth
from tests.fakes.server import serve
from tests.fakes.whatsapp_cloud import (
    VERSION,
    FakeWhatsAppCloud,
    signed,
    status,
    text_message,
    webhook,
)
from tests.processes import wait_until
from tests.two_way import (
    ACCESS_TOKEN,
    APP_SECRET,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    add_template,
    whatsapp_stream,
)
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.pool import start_worker
from workers.providers.registry import ProviderRegistry
from workers.relay import Relay


@pytest.fixture
def cloud():
    fake = FakeWhatsAppCloud(
        tokens={PHONE_NUMBER_ID: ACCESS_TOKEN}, templates={("order_shipped", "en_US"): 2}
    )
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake


@pytest.fixture
def settings(settings, cloud):
    return settings.model_copy(
        update={
            "whatsapp": WhatsAppApiSettings(
                api_base_url=cloud.base_url,
                api_version=VERSION,
                timeout_seconds=2,
                credentials_cache_seconds=0,
                _env_file=None,
            ),
            "retry_backoff_seconds": 0.05,
        }
    )


@pytest.fixture
def worker(runtime):
    started = start_worker(runtime, ["whatsapp"], threads=2)
    yield started
    started.stop(timeout=5_000)


def send(client, token, **item):
    response = client.post(
        "/v1/messages",
        json={"messages": [{"recipient_phone": "+972524265292", **item}]},
        headers=auth(token),
    )
    assert response.status_code == 202, response.text
    return response.json()["results"][0]


def message_of(client, key, message_id):
    return client.get(f"/api/v1/messages/{message_id}", headers=auth(key)).json()


# ---------------------------------------------------------------- the WhatsApp tab


def test_setup_makes_the_stream_ready_and_keeps_the_token_write_only(
    client, runtime, make_stream, account_key
):
    stream = make_stream(name="WA", type="whatsapp", default_sender=None)
    assert stream["status"] == "draft"
    assert set(stream["missing_steps"]) == {"whatsapp.phone_number_id", "whatsapp.access_token"}
    empty = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key))
    assert empty.json()["state"] == "incomplete"

    whatsapp_stream(lambda **_: stream, client, account_key)
    shown = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key))
    body = shown.json()
    assert body["access_token"] == "…" + ACCESS_TOKEN[-4:]
    assert ACCESS_TOKEN not in shown.text and APP_SECRET not in shown.text
    assert body["app_secret_set"] is True and body["verify_token"] == VERIFY_TOKEN
    assert body["state"] == "ok" and body["phone_number_id"] == PHONE_NUMBER_ID
    assert body["webhook_url"].endswith(f"/webhooks/{stream['id']}/whatsapp")
    again = client.get(f"/api/v1/streams/{stream['id']}", headers=auth(account_key)).json()
    assert again["status"] == "ready" and again["missing_steps"] == []

    with runtime.engine.connect() as connection:
        stored = connection.execute(text("SELECT * FROM whatsapp_configs")).mappings().one()
    assert ACCESS_TOKEN not in str(dict(stored)) and APP_SECRET not in str(dict(stored))
    assert runtime.secret_box.open(stored["access_token_sealed"]) == ACCESS_TOKEN

    # Leaving the token out keeps it; null clears it (and the stream is draft again).
    client.put(
        f"/api/v1/streams/{stream['id']}/whatsapp",
        json={"business_account_id": "999"},
        headers=auth(account_key),
    )
    kept = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key))
    assert kept.json()["access_token"] == "…" + ACCESS_TOKEN[-4:]
    client.put(
        f"/api/v1/streams/{stream['id']}/whatsapp",
        json={"access_token": None},
        headers=auth(account_key),
    )
    cleared = client.get(f"/api/v1/streams/{stream['id']}", headers=auth(account_key)).json()
    assert cleared["status"] == "draft" and cleared["missing_steps"] == ["whatsapp.access_token"]


def test_setup_errors_name_the_field_and_change_nothing(client, make_stream, account_key):
    stream = make_stream(name="WA", type="whatsapp", default_sender=None)
    for body, field in [
        ({"phone_number_id": "12ab"}, "phone_number_id"),
        ({"access_token": "short"}, "access_token"),
        ({"access_token": "has spaces in it"}, "access_token"),
        ({"unknown": 1}, "unknown"),
    ]:
        response = client.put(
            f"/api/v1/streams/{stream['id']}/whatsapp", json=body, headers=auth(account_key)
        )
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field
    shown = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key))
    assert shown.json()["state"] == "incomplete"
    other = make_stream(name="SMS")
    wrong_type = client.get(f"/api/v1/streams/{other['id']}/whatsapp", headers=auth(account_key))
    assert wrong_type.status_code == 409


def test_another_accounts_whatsapp_tab_is_404(client, make_stream, account_key, other_account_key):
    stream = whatsapp_stream(make_stream, client, account_key)
    template = add_template(client, account_key, stream["id"])
    for method, path in [
        ("GET", "whatsapp"),
        ("PUT", "whatsapp"),
        ("GET", "whatsapp/templates"),
        ("POST", "whatsapp/templates"),
        ("DELETE", f"whatsapp/templates/{template['id']}"),
    ]:
        response = client.request(
            method,
            f"/api/v1/streams/{stream['id']}/{path}",
            json=(
                {"name": "a", "language": "en", "category": "utility", "body": "x"}
                if path.endswith("templates") and method == "POST"
                else {}
            )
            if method != "GET"
            else None,
            headers=auth(other_account_key),
        )
        assert response.status_code == 404, (method, path)


def test_templates_are_registered_with_their_parameter_count(client, make_stream, account_key):
    stream = whatsapp_stream(make_stream, client, account_key)
    created = add_template(
        client,
        account_key,
        stream["id"],
        buttons=[{"type": "url", "text": "Track", "url": "https://shop.example/t/{{1}}"}],
    )
    assert created["parameter_count"] == 2 and created["status"] == "approved"
    listed = client.get(
        f"/api/v1/streams/{stream['id']}/whatsapp/templates", headers=auth(account_key)
    ).json()
    assert [t["name"] for t in listed] == ["order_shipped"]
    duplicate = client.post(
        f"/api/v1/streams/{stream['id']}/whatsapp/templates",
        json={"name": "order_shipped", "language": "en_US", "category": "utility", "body": "x"},
        headers=auth(account_key),
    )
    assert duplicate.status_code == 409
    for body, field in [
        ({"name": "Bad Name", "language": "en", "category": "utility", "body": "x"}, "name"),
        ({"name": "a", "language": "english", "category": "utility", "body": "x"}, "language"),
        ({"name": "a", "language": "en", "category": "spam", "body": "x"}, "category"),
        ({"name": "a", "language": "en", "category": "utility", "body": "{{1}} {{3}}"}, "body"),
    ]:
        response = client.post(
            f"/api/v1/streams/{stream['id']}/whatsapp/templates",
            json=body,
            headers=auth(account_key),
        )
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field


def test_an_unregistered_template_is_gone_for_new_sends_only(
    client, runtime, make_stream, account_key
):
    stream = whatsapp_stream(make_stream, client, account_key)
    template = add_template(client, account_key, stream["id"])
    french = add_template(client, account_key, stream["id"], language="fr")
    templates = f"/api/v1/streams/{stream['id']}/whatsapp/templates"
    send = {
        "recipient_phone": "+972524265292",
        "template": {"name": "order_shipped", "language": "en_US", "variables": ["Dana", "1"]},
    }
    accepted = client.post("/v1/messages", json={"messages": [send]}, headers=auth(stream["token"]))
    assert accepted.json()["results"][0]["status"] == "queued"

    other = whatsapp_stream(make_stream, client, account_key, phone_number_id="106540352242999")
    for template_id in [str(uuid.uuid4()), "not-a-uuid", french["id"] + "0"]:
        missing = client.delete(f"{templates}/{template_id}", headers=auth(account_key))
        assert missing.status_code == 404, template_id
        assert missing.json()["error"]["code"] == "not_found"
    # A template of another stream of the same account is not this stream's to remove.
    elsewhere = client.delete(
        f"/api/v1/streams/{other['id']}/whatsapp/templates/{template['id']}",
        headers=auth(account_key),
    )
    assert elsewhere.status_code == 404
    assert len(client.get(templates, headers=auth(account_key)).json()) == 2

    gone = client.delete(f"{templates}/{template['id']}", headers=auth(account_key))
    assert gone.status_code == 204 and gone.content == b""
    assert [
        (t["name"], t["language"]) for t in client.get(templates, headers=auth(account_key)).json()
    ] == [("order_shipped", "fr")]
    again = client.delete(f"{templates}/{template['id']}", headers=auth(account_key))
    assert again.status_code == 404

    refused = client.post("/v1/messages", json={"messages": [send]}, headers=auth(stream["token"]))
    (result,) = refused.json()["results"]
    assert (result["status"], result["error"]["field"]) == (
        "rejected",
        "messages[0].template.language",
    )
    with runtime.session_factory() as session:
        stored = session.scalars(select(Message)).all()
    assert len(stored) == 1, "the message accepted before stays"
    # Registered again as it now is, it can be sent again.
    add_template(client, account_key, stream["id"], body="Hello {{1}}, order {{2}} shipped.")
    resent = client.post("/v1/messages", json={"messages": [send]}, headers=auth(stream["token"]))
    assert resent.json()["results"][0]["status"] == "queued"


def test_sends_naming_an_unknown_template_or_the_wrong_parameters_are_item_errors(
    client, runtime, make_stream, account_key
):
    stream = whatsapp_stream(make_stream, client, account_key)
    add_template(client, account_key, stream["id"])
    response = client.post(
        "/v1/messages",
        json={
            "messages": [
                {"recipient_phone": "+972524265292", "template": {"name": "nope"}},
                {
                    "recipient_phone": "+972524265292",
                    "template": {"name": "order_shipped", "variables": ["Dana"]},
                },
                {
                    "recipient_phone": "+972524265292",
                    "template": {"name": "order_shipped", "language": "fr", "variables": []},
                },
                {
                    "recipient_phone": "+972524265292",
                    "template": {"name": "order_shipped", "variables": ["Dana", "A\nB"]},
                },
                {
                    "recipient_phone": "+972524265292",
                    "media": {"type": "gif", "url": "https://x.io/a"},
                },
                {
                    "recipient_phone": "+972524265292",
                    "template": {"name": "order_shipped", "variables": ["Dana", "1003"]},
                },
            ]
        },
        headers=auth(stream["token"]),
    )
    results = response.json()["results"]
    assert [
        (r["status"], (r.get("error") or {}).get("code"), (r.get("error") or {}).get("field"))
        for r in results
    ] == [
        ("rejected", "unknown_template", "messages[0].template.name"),
        ("rejected", "template_parameters", "messages[1].template.variables"),
        ("rejected", "unknown_template", "messages[2].template.language"),
        ("rejected", "template_parameters", "messages[3].template.variables"),
        ("rejected", "invalid_field", "messages[4].media.type"),
        ("queued", None, None),
    ]
    with runtime.session_factory() as session:
        stored = session.scalars(select(Message)).all()
    assert len(stored) == 1, "rejected items store nothing"
    assert stored[0].body == "Hi Dana, your order 1003 has shipped."
    assert stored[0].content["parameters"] == ["Dana", "1003"]


# ---------------------------------------------------------------- sending through the adapter


def test_template_text_and_media_go_out_through_the_cloud_api(
    client, runtime, make_stream, account_key, cloud, worker
):
    stream = whatsapp_stream(make_stream, client, account_key)
    add_template(
        client,
        account_key,
        stream["id"],
        buttons=[
            {"type": "url", "text": "Track", "url": "https://shop.example/t/{{1}}"},
            {"type": "quick_reply", "text": "Stop"},
        ],
    )
    template = send(
        client,
        stream["token"],
        template={
            "name": "order_shipped",
            "variables": {"1": "Dana", "2": "1003"},
            "buttons": [{"index": 0, "value": "1003"}, {"index": 1, "value": "STOP-1003"}],
        },
    )
    reply = send(client, stream["token"], message_content="Thanks, on its way!")
    media = send(
        client,
        stream["token"],
        media={"type": "image", "url": "https://cdn.example/p.jpg", "caption": "Your parcel"},
    )
    ids = [template["message_id"], reply["message_id"], media["message_id"]]
    assert wait_until(
        lambda: all(message_of(client, account_key, i)["status"] == "sent" for i in ids), 15
    )
    bodies = {r["body"]["biz_opaque_callback_data"]: r for r in cloud.accepted()}
    assert set(bodies) == set(ids)
    sent_template = bodies[template["message_id"]]
    assert sent_template["phone_number_id"] == PHONE_NUMBER_ID
    assert sent_template["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert sent_template["body"]["to"] == "972524265292"
    assert sent_template["body"]["template"] == {
        "name": "order_shipped",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Dana"}, {"type": "text", "text": "1003"}],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "1003"}],
            },
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "1",
                "parameters": [{"type": "payload", "payload": "STOP-1003"}],
            },
        ],
    }
    assert bodies[reply["message_id"]]["body"]["text"] == {
        "preview_url": False,
        "body": "Thanks, on its way!",
    }
    assert bodies[media["message_id"]]["body"]["image"] == {
        "link": "https://cdn.example/p.jpg",
        "caption": "Your parcel",
    }
    shown = message_of(client, account_key, template["message_id"])
    assert shown["provider"] == "whatsapp_cloud"
    assert shown["provider_message_id"].startswith("wamid.")


def test_rate_limits_are_retried_and_refusals_fail(
    client, runtime, make_stream, account_key, cloud, worker
):
    stream = whatsapp_stream(make_stream, client, account_key)
    cloud.fail_next(2, 130429, "(#130429) Rate limit hit")
    retried = send(client, stream["token"], message_content="hello")
    assert wait_until(
        lambda: message_of(client, account_key, retried["message_id"])["status"] == "sent", 15
    )
    history = [
        h["detail"] for h in message_of(client, account_key, retried["message_id"])["history"]
    ]
    assert sum("(whatsapp_rate_limited); retry in" in (d or "") for d in history) == 2

    cloud.fail_next(1, 131026, "(#131026) Message undeliverable")
    refused = send(client, stream["token"], message_content="hello again")
    assert wait_until(
        lambda: message_of(client, account_key, refused["message_id"])["status"] == "failed", 15
    )
    assert (
        message_of(client, account_key, refused["message_id"])["error"]["code"]
        == "whatsapp_undeliverable"
    )


def test_pair_rate_limit_is_retried_later(client, runtime, make_stream, account_key, cloud, worker):
    stream = whatsapp_stream(make_stream, client, account_key)
    runtime.settings.whatsapp.pair_rate_retry_seconds = 0.5
    cloud.fail_next(1, 131056, "(#131056) Pair rate limit hit")
    sent = send(client, stream["token"], message_content="hi")
    assert wait_until(
        lambda: message_of(client, account_key, sent["message_id"])["status"] == "sent", 15
    )
    details = [h["detail"] for h in message_of(client, account_key, sent["message_id"])["history"]]
    assert any("(whatsapp_pair_rate_limited); retry in" in (d or "") for d in details)


def test_an_invalid_token_fails_the_message_and_shows_in_the_whatsapp_tab(
    client, runtime, make_stream, account_key, cloud, worker
):
    """Meta refuses the stream's token (it expired, say): the message fails, but not for
    itself. It is a dead letter (reason ``configuration``) that a replay sends once a new
    token is saved."""
    stream = whatsapp_stream(make_stream, client, account_key)
    cloud.tokens[PHONE_NUMBER_ID] = "a-rotated-token-we-do-not-have"
    sent = send(client, stream["token"], message_content="hi")
    assert wait_until(
        lambda: message_of(client, account_key, sent["message_id"])["status"] == "failed", 15
    )
    assert (
        message_of(client, account_key, sent["message_id"])["error"]["code"]
        == "whatsapp_invalid_token"
    )
    tab = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key)).json()
    assert tab["state"] == "error"
    assert tab["error"]["code"] == "whatsapp_invalid_token"
    assert "190" in tab["error"]["message"]
    assert len(cloud.requests) == 1, "a permanent error is not retried"

    # A new token clears the error state.
    client.put(
        f"/api/v1/streams/{stream['id']}/whatsapp",
        json={"access_token": "a-rotated-token-we-do-not-have"},
        headers=auth(account_key),
    )
    tab = client.get(f"/api/v1/streams/{stream['id']}/whatsapp", headers=auth(account_key)).json()
    assert tab["state"] == "ok" and tab["error"] is None

    letters = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert [(letter["message_id"], letter["reason"]) for letter in letters] == [
        (sent["message_id"], "configuration")
    ]
    replayed = client.post(
        f"/api/v1/dead-letters/{letters[0]['id']}/replay", headers=auth(account_key)
    )
    assert replayed.status_code == 202, replayed.text
    assert wait_until(
        lambda: message_of(client, account_key, sent["message_id"])["status"] == "sent", 15
    )
    assert len(cloud.accepted()) == 1


# ---------------------------------------------------------------- Meta's webhooks


def test_handshake_answers_the_challenge_only_for_the_verify_token(
    client, make_stream, account_key
):
    stream = whatsapp_stream(make_stream, client, account_key)
    url = f"/webhooks/{stream['id']}/whatsapp"
    good = client.get(
        url,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert good.status_code == 200 and good.text == "1158201444"
    assert good.headers["content-type"].startswith("text/plain")
    wrong = client.get(
        url, params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403 and "1" not in wrong.json()["error"]["message"]
    unknown = client.get(
        f"/webhooks/{uuid.uuid4()}/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    )
    assert unknown.status_code == 404
    assert unknown.json() == {"error": {"code": "not_found", "message": "No such stream."}}


def test_events_need_metas_signature(client, runtime, make_stream, account_key):
    stream = whatsapp_stream(make_stream, client, account_key)
    raw, headers = signed(
        webhook(PHONE_NUMBER_ID, messages=[text_message("972524265292", "Hello")]), APP_SECRET
    )
    url = f"/webhooks/{stream['id']}/whatsapp"
    for bad in (
        {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"Content-Type": "application/json"},
        signed(webhook(PHONE_NUMBER_ID), "another-app-secret")[1],
    ):
        assert client.post(url, content=raw, headers=bad).status_code == 401
    tampered = raw.replace(b"Hello", b"Hallo")
    assert client.post(url, content=tampered, headers=headers).status_code == 401
    with runtime.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM inbound_messages")).scalar() == 0
    assert client.post(url, content=raw, headers=headers).status_code == 200
    with runtime.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM inbound_messages")).scalar() == 1


def test_out_of_order_statuses_never_move_a_message_back(
    client, runtime, make_stream, account_key, cloud, worker
):
    stream = whatsapp_stream(make_stream, client, account_key)
    sent = send(client, stream["token"], message_content="hi")
    assert wait_until(
        lambda: message_of(client, account_key, sent["message_id"])["status"] == "sent", 15
    )
    wamid = message_of(client, account_key, sent["message_id"])["provider_message_id"]
    url = f"/webhooks/{stream['id']}/whatsapp"

    def post(*statuses):
        raw, headers = signed(webhook(PHONE_NUMBER_ID, statuses=list(statuses)), APP_SECRET)
        assert client.post(url, content=raw, headers=headers).status_code == 200

    post(status(wamid, "read"))  # read before delivered before sent
    post(status(wamid, "delivered"))
    post(status(wamid, "sent"))
    post(status(wamid, "failed", error_code=131026))
    shown = message_of(client, account_key, sent["message_id"])
    assert shown["status"] == "delivered"
    assert [h["status"] for h in shown["history"]] == ["queued", "sending", "sent", "delivered"]


def test_a_status_that_beats_the_worker_finds_its_message_by_reference(
    client, runtime, make_stream, account_key
):
    """Meta can report ``delivered`` before the worker has written ``sent`` (and the wamid):
    ``biz_opaque_callback_data`` carries our id, so the status still lands, and the worker's
    late ``sent`` cannot move it back."""
    stream = whatsapp_stream(make_stream, client, account_key)
    sent = send(client, stream["token"], message_content="hi")
    with runtime.session_factory() as session:  # the worker's claim, frozen before "sent"
        session.execute(
            text("UPDATE messages SET status = 'sending' WHERE id = :id"),
            {"id": uuid.UUID(sent["message_id"])},
        )
        session.commit()
    raw, headers = signed(
        webhook(
            PHONE_NUMBER_ID,
            statuses=[status("wamid.EARLY", "delivered", reference=sent["message_id"])],
        ),
        APP_SECRET,
    )
    assert (
        client.post(f"/webhooks/{stream['id']}/whatsapp", content=raw, headers=headers).json()[
            "applied"
        ]
        == 1
    )
    from core.message_states import transition
    from schemas.enums import MessageStatus

    with runtime.session_factory() as session:  # the worker's late "sent"
        late = transition(
            session,
            uuid.UUID(sent["message_id"]),
            to=MessageStatus.sent,
            allowed_from=[MessageStatus.sending],
            at=runtime.clock(),
        )
        session.commit()
    assert late is None
    shown = message_of(client, account_key, sent["message_id"])
    assert shown["status"] == "delivered" and shown["provider_message_id"] == "wamid.EARLY"


def test_statuses_of_another_streams_messages_are_ignored(
    client, runtime, make_stream, account_key
):
    first = whatsapp_stream(make_stream, client, account_key)
    second = whatsapp_stream(make_stream, client, account_key)
    sent = send(client, second["token"], message_content="hi")
    with runtime.session_factory() as session:
        session.execute(text("UPDATE messages SET status = 'sent'"))
        session.commit()
    raw, headers = signed(
        webhook(
            PHONE_NUMBER_ID, statuses=[status("wamid.X", "delivered", reference=sent["message_id"])]
        ),
        APP_SECRET,
    )
    assert (
        client.post(f"/webhooks/{first['id']}/whatsapp", content=raw, headers=headers).json()[
            "applied"
        ]
        == 0
    )
    assert message_of(client, account_key, sent["message_id"])["status"] == "sent"


def test_a_nul_in_an_inbound_text_does_not_refuse_the_receipts_beside_it(
    client, runtime, make_stream, account_key
):
    """Meta's payload is read leniently: a NUL in one inbound text (which no store can
    hold) must not refuse the whole webhook before its receipts are applied, or every
    retry of it would be refused too and the receipts lost."""
    stream = whatsapp_stream(make_stream, client, account_key)
    sent = send(client, stream["token"], message_content="hi")
    with runtime.session_factory() as session:
        session.execute(
            text(
                "UPDATE messages SET status = 'sent', provider = 'whatsapp_cloud', "
                "provider_message_id = 'wamid.ODD'"
            )
        )
        session.commit()
    payload = webhook(
        PHONE_NUMBER_ID,
        statuses=[status("wamid.ODD", "delivered")],
        messages=[text_message("972524265292", "a\x00b", message_id="wamid.NUL")],
    )
    raw, headers = signed(payload, APP_SECRET)
    client.post(f"/webhooks/{stream['id']}/whatsapp", content=raw, headers=headers)
    assert message_of(client, account_key, sent["message_id"])["status"] == "delivered"


def test_inbound_whatsapp_messages_are_stored_once(client, runtime, make_stream, account_key):
    stream = whatsapp_stream(make_stream, client, account_key)
    incoming = text_message("972524265292", "Where is my order?", message_id="wamid.IN1")
    raw, headers = signed(webhook(PHONE_NUMBER_ID, messages=[incoming]), APP_SECRET)
    url = f"/webhooks/{stream['id']}/whatsapp"
    assert client.post(url, content=raw, headers=headers).json()["messages"] == 1
    assert client.post(url, content=raw, headers=headers).status_code == 200  # Meta retries
    other_number, other_headers = signed(
        webhook("999999", messages=[text_message("972524265292", "not ours")]), APP_SECRET
    )
    client.post(url, content=other_number, headers=other_headers)
    with runtime.engine.connect() as connection:
        rows = connection.execute(text("SELECT sender, text, provider FROM inbound_messages")).all()
    assert [tuple(r) for r in rows] == [("+972524265292", "Where is my order?", "whatsapp_cloud")]


def test_an_inbound_timestamp_no_calendar_holds_is_read_as_now(
    client, runtime, make_stream, account_key
):
    """Meta's ``timestamp`` is read leniently too: one past the year 9999 (twelve digits)
    must not turn the webhook into a 500 (each of Meta's retries would fail alike, and the
    error's traceback would print the stream's secrets in a console log)."""
    stream = whatsapp_stream(make_stream, client, account_key)
    incoming = text_message("972524265292", "hi", message_id="wamid.FAR")
    incoming["timestamp"] = "999999999999"
    raw, headers = signed(webhook(PHONE_NUMBER_ID, messages=[incoming]), APP_SECRET)
    answer = client.post(f"/webhooks/{stream['id']}/whatsapp", content=raw, headers=headers)
    assert (answer.status_code, answer.json()["messages"]) == (200, 1), answer.text
    with runtime.engine.connect() as connection:
        received = connection.execute(text("SELECT received_at FROM inbound_messages")).scalar()
    assert abs(as_utc(received) - runtime.clock()) < timedelta(minutes=5)


def test_whatsapp_config_rows_are_sealed(runtime, client, make_stream, account_key):
    whatsapp_stream(make_stream, client, account_key)
    with runtime.session_factory() as session:
        config = session.scalars(select(WhatsAppConfig)).one()
    assert config.access_token_last4 == ACCESS_TOKEN[-4:]
    assert runtime.secret_box.open(config.app_secret_sealed) == APP_SECRET


@pytest.mark.parametrize(
    "lateness",
    [{"delay_seconds": 1.5}, {"drip_seconds": 0.1}],
    ids=["answers-late", "drips-its-answer"],
)
def test_invariant_2_an_answer_that_comes_too_late_is_never_sent_again(
    client, runtime, make_stream, account_key, cloud, lateness
):
    """Meta takes the message but answers after our timeout (or begins at once and drips
    its answer past it: the timeout bounds the whole call, not each read). The Cloud API has
    no idempotency key, so a retry would be a second WhatsApp message to the same person: the
    message fails as outcome unknown and becomes a dead letter, replayable on purpose."""
    from tests.fakes.failures import Failure

    runtime.settings.whatsapp.timeout_seconds = 0.5
    stream = whatsapp_stream(make_stream, client, account_key)
    late = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.LATE"}]}
    cloud.failures.fail_next(1, Failure(status=200, body=late, **lateness))
    sent = send(client, stream["token"], message_content="hello")
    started = start_worker(runtime, ["whatsapp"], threads=2)
    try:
        assert wait_until(
            lambda: message_of(client, account_key, sent["message_id"])["status"] == "failed", 15
        )
    finally:
        started.stop(timeout=5_000)
    assert wait_until(lambda: all(r["answered"] for r in cloud.requests), 5)
    assert len(cloud.accepted()) == 1 and len(cloud.requests) == 1
    error = message_of(client, account_key, sent["message_id"])["error"]
    assert error["code"] == "whatsapp_outcome_unknown"
    letters = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert [(item["message_id"], item["reason"]) for item in letters] == [
        (sent["message_id"], "outcome_unknown")
    ]


def _offered(cloud, message_id) -> int:
    """How many times the fake Cloud API took the message (it echoes our id back)."""
    return sum(
        (request["body"] or {}).get("biz_opaque_callback_data") == str(message_id)
        for request in cloud.accepted()
    )


def _lease_runs_out(runtime, message_id) -> None:
    lease = runtime.settings.claim_lease_seconds
    with runtime.session_factory() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(claimed_at=runtime.clock() - timedelta(seconds=lease + 1))
        )
        session.commit()


def test_invariant_2_a_claim_that_outlived_its_lease_is_never_offered_to_meta_again(
    client, runtime, make_stream, account_key, cloud
):
    """Meta takes the message and its record fails (or the worker dies between the call and
    the record): the message stays ``sending``. After the lease, neither the relay nor a
    redelivered job may offer it again, since Meta would take it twice: it fails as an
    unknown outcome, a dead letter whose replay is the operator's choice."""
    from tests.fakes.failures import Failure

    stream = whatsapp_stream(make_stream, client, account_key)
    message_id = uuid.UUID(send(client, stream["token"], message_content="hello")["message_id"])
    delivery = Delivery(
        runtime, ProviderRegistry.from_runtime(runtime), RedisAdmission(runtime.redis)
    )
    # An id PostgreSQL refuses (a NUL byte): Meta took the message, its record fails.
    took = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.TAKEN\u0000"}]}
    cloud.failures.fail_next(1, Failure(status=200, body=took))
    with pytest.raises(DataError):
        delivery.deliver(str(message_id), "whatsapp")
    assert _offered(cloud, message_id) == 1
    _lease_runs_out(runtime, message_id)

    delivery.deliver(str(message_id), "whatsapp")  # the job, redelivered
    assert _offered(cloud, message_id) == 1, "a redelivered job offered it again"
    report = Relay(runtime).sweep()
    assert (report.reclaimed, report.claims_spent) == (0, 1)
    delivery.deliver(str(message_id), "whatsapp")
    assert _offered(cloud, message_id) == 1, "offered again after the relay's sweep"
    found = message_of(client, account_key, message_id)
    assert (found["status"], found["error"]["code"]) == ("failed", "claim_lease_expired")
    letters = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert [(item["message_id"], item["reason"]) for item in letters] == [
        (str(message_id), "outcome_unknown")
    ]


def _failed_as_unknown(client, runtime, stream, account_key, cloud) -> uuid.UUID:
    """A message Meta took, answering after our timeout: failed as an unknown outcome."""
    from tests.fakes.failures import Failure

    runtime.settings.whatsapp.timeout_seconds = 0.5
    message_id = uuid.UUID(send(client, stream["token"], message_content="hello")["message_id"])
    late = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.LATE"}]}
    cloud.failures.fail_next(1, Failure(status=200, body=late, delay_seconds=1.5))
    delivery = Delivery(
        runtime, ProviderRegistry.from_runtime(runtime), RedisAdmission(runtime.redis)
    )
    delivery.deliver(str(message_id), "whatsapp")
    found = message_of(client, account_key, message_id)
    assert (found["status"], found["error"]["code"]) == ("failed", "whatsapp_outcome_unknown")
    return message_id


def _meta_reports(client, stream, message_id, *webhooks: list[str]) -> None:
    """Meta's status webhooks for the message, one per list of statuses (Meta batches them)."""
    for reported in webhooks:
        statuses = [status("wamid.LATE", one, reference=str(message_id)) for one in reported]
        raw, headers = signed(webhook(PHONE_NUMBER_ID, statuses=statuses), APP_SECRET)
        answer = client.post(f"/webhooks/{stream['id']}/whatsapp", content=raw, headers=headers)
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("reported", "refusal"), [("sent", "not_failed"), ("delivered", "carrier_reported")]
)
def test_a_dead_letter_meta_has_reported_on_is_not_replayed(
    client, runtime, make_stream, account_key, cloud, reported, refusal
):
    """Meta answers after our timeout (the message fails as an unknown outcome), then its
    status webhook reports the message sent or delivered: it took it. The message moves on
    to what Meta reported, and a replay, which would send it again, is refused."""
    stream = whatsapp_stream(make_stream, client, account_key)
    message_id = _failed_as_unknown(client, runtime, stream, account_key, cloud)
    _meta_reports(client, stream, message_id, [reported])
    found = message_of(client, account_key, message_id)
    assert (found["status"], found["error"]) == (reported, None)

    letter = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"][0]
    replay = client.post(f"/api/v1/dead-letters/{letter['id']}/replay", headers=auth(account_key))
    assert replay.status_code == 409, replay.text
    assert replay.json()["error"]["code"] == refusal
    assert reported in replay.json()["error"]["message"]
    after = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"][0]
    assert after["replayed_at"] is None, "a refused replay changes nothing"
    assert after["message_status"] == reported, "the list says the letter needs no replay"
    assert message_of(client, account_key, message_id)["status"] == reported
    assert wait_until(lambda: all(r["answered"] for r in cloud.requests), 5)
    assert _offered(cloud, message_id) == 1


def test_a_failure_meta_then_reports_delivered_leaves_the_stats_failures(
    client, runtime, make_stream, account_key, cloud
):
    """The carrier is the truth: a message failed as an unknown outcome that Meta reports
    sent, then delivered (in one webhook, then again), ends delivered, with Meta's id, and
    the stream's stats count it delivered and no longer failed, once (in the minute it
    failed, at every granularity)."""
    stream = whatsapp_stream(make_stream, client, account_key)
    message_id = _failed_as_unknown(client, runtime, stream, account_key, cloud)
    window = {
        "from": (runtime.clock() - timedelta(days=2)).isoformat(),
        "to": (runtime.clock() + timedelta(days=2)).isoformat(),
    }
    path = f"/api/v1/streams/{stream['id']}/stats"
    before = client.get(path, params=window, headers=auth(account_key)).json()
    assert (before["counts"]["failed"], before["delivery_rate"]) == (1, 0.0)

    _meta_reports(client, stream, message_id, ["sent", "delivered"], ["delivered"])
    found = message_of(client, account_key, message_id)
    assert (found["status"], found["error"]) == ("delivered", None)
    assert [change["status"] for change in found["history"]][-3:] == [
        "failed",
        "sent",
        "delivered",
    ]
    with runtime.session_factory() as session:
        assert session.get(Message, message_id).provider_message_id == "wamid.LATE"
        failed_rows = session.execute(
            select(StreamStat.bucket_seconds, StreamStat.messages, StreamStat.segments).where(
                StreamStat.stream_id == uuid.UUID(stream["id"]), StreamStat.status == "failed"
            )
        ).all()
    assert sorted(failed_rows) == [(60, 0, 0), (3600, 0, 0), (86400, 0, 0)]
    after = client.get(path, params=window, headers=auth(account_key)).json()
    assert after["counts"]["failed"] == 0
    assert (after["counts"]["sent"], after["counts"]["delivered"]) == (1, 1)
    assert after["delivery_rate"] == 1.0


def test_a_connection_refused_is_retried(client, runtime, make_stream, account_key):
    """The request never left: offering it again cannot send it twice."""
    runtime.settings.whatsapp.api_base_url = "http://127.0.0.1:9"  # nothing listens there
    runtime.settings.max_send_attempts = 2
    stream = whatsapp_stream(make_stream, client, account_key)
    sent = send(client, stream["token"], message_content="hello")
    started = start_worker(runtime, ["whatsapp"], threads=2)
    try:
        assert wait_until(
            lambda: message_of(client, account_key, sent["message_id"])["status"] == "failed", 15
        )
    finally:
        started.stop(timeout=5_000)
    found = message_of(client, account_key, sent["message_id"])
    assert found["error"]["code"] == "whatsapp_unreachable"
    assert sum("retry in" in (h["detail"] or "") for h in found["history"]) == 1


def test_each_business_number_is_sent_at_its_own_throughput(
    client, runtime, make_stream, account_key, cloud
):
    """Meta's throughput is per business phone number (80 a second by default). The
    adapter declares it, and admission paces each number across the workers; two numbers
    do not share one budget."""
    runtime.settings.whatsapp.max_per_second = 4
    other_number = "109876543210987"
    cloud.tokens[other_number] = ACCESS_TOKEN
    first = whatsapp_stream(make_stream, client, account_key)
    second = whatsapp_stream(
        make_stream, client, account_key, phone_number_id=other_number, name="WhatsApp 2"
    )
    for stream in (first, second):
        for n in range(6):
            send(client, stream["token"], message_content=f"hello {n}")
    from tests.processes import pipeline

    with pipeline(runtime, ["whatsapp"], threads=4):  # the relay brings parked ones back
        assert wait_until(lambda: len(cloud.accepted()) == 12, 15)
    times = {
        number: sorted(r["at"] for r in cloud.accepted() if r["phone_number_id"] == number)
        for number in (PHONE_NUMBER_ID, other_number)
    }
    for number, at in times.items():
        # Six messages at four a second: five intervals of 0.25 s, each allowed 20 ms early.
        assert at[-1] - at[0] >= 5 * (0.25 - 0.02) - 0.01, (number, at)
    ours, theirs = times.values()
    assert theirs[0] < ours[-1] and ours[0] < theirs[-1], "the two numbers go side by side"
    # One shared budget would need eleven intervals for the twelve.
    assert max(ours[-1], theirs[-1]) - min(ours[0], theirs[0]) < 11 * (0.25 - 0.02)
