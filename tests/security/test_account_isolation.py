"""Invariant 4: accounts are walled off. An account key sees and changes its own streams,
messages and stats only. Every other id answers 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from schemas.tables import Base
from tests.conftest import auth, message
from tests.processes import wait_until
from tests.two_way import add_template, post_signed_inbound, signing_secret, whatsapp_stream

STREAMS = "/api/v1/streams"
PHONE = "+972524265292"
OTHER_PHONE = "+972524265293"

#: A body that would succeed for the owner, for every account route that takes one. A new
#: route with a body must be added here: ``test_every_account_route_is_covered`` says so.
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/v1/streams/{stream_id}"): {
        "name": "Taken over",
        "allowed_ips": ["0.0.0.0/0"],
    },
    ("POST", "/api/v1/streams/{stream_id}/token/reset"): {"grace_seconds": 60},
    ("POST", "/api/v1/streams/{stream_id}/restrict"): {"reason": "hostile takeover"},
    ("PUT", "/api/v1/streams/{stream_id}/settings"): {"max_per_second": 1},
    ("POST", "/api/v1/streams/{stream_id}/test"): {"recipient_phone": PHONE},
    ("PUT", "/api/v1/streams/{stream_id}/whatsapp"): {"phone_number_id": "999"},
    ("POST", "/api/v1/streams/{stream_id}/whatsapp/templates"): {
        "name": "hijack",
        "language": "en_US",
        "category": "utility",
        "body": "Hi {{1}}",
    },
    ("POST", "/api/v1/streams/{stream_id}/events"): {
        "key": "hijack",
        "name": "Hijack",
        "template": "Hi {name}",
    },
    ("PATCH", "/api/v1/streams/{stream_id}/events/{key}"): {"template": "Owned {name}"},
}


def account_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every operation that takes an account key and names an id (in the
    path, or a ``*_id`` query parameter), read from the app's own OpenAPI document (which
    lists every route, with the credential it declares), so a new route is never missed."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if {"accountKey": []} not in operation.get("security", []):
                continue
            parameters = operation.get("parameters", [])
            if any(p["in"] == "path" or p["name"].endswith("_id") for p in parameters):
                found.append((method.upper(), path))
    return found


def needs_body(app, method: str, path: str) -> bool:
    body = app.openapi()["paths"][path][method.lower()].get("requestBody", {})
    return bool(body.get("required"))


def database_fingerprint(runtime) -> dict[str, str]:
    """A digest of every row of every table: 'nothing changed' means this is equal."""
    with runtime.engine.connect() as connection:
        return {
            table.name: connection.execute(
                text(
                    f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                    f"FROM {table.name} t"
                )
            ).scalar_one()
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def owned(client, make_stream, account_key, runtime) -> dict[str, Any]:
    """Account A's things of every kind, each with the id the routes take."""
    stream = make_stream(name="A orders", tags=["a-only"], allowed_ips=["203.0.113.0/24"])
    sent = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id="a-1")]},
        headers=auth(stream["token"]),
    )
    assert sent.status_code == 202, sent.text
    event = client.post(
        f"{STREAMS}/{stream['id']}/events",
        json={"key": "order.shipped", "name": "Shipped", "template": "Order {n} shipped"},
        headers=auth(account_key),
    )
    assert event.status_code == 201, event.text
    whatsapp = whatsapp_stream(make_stream, client, account_key)
    template = add_template(client, account_key, whatsapp["id"])
    two_way = make_stream(
        name="A chat", type="two_way", demo=True, settings={"callback_url": "https://a.example/h"}
    )
    secret = signing_secret(client, account_key, two_way["id"])
    stop = post_signed_inbound(client, two_way["id"], secret, {"from": PHONE, "text": "STOP"})
    assert stop.status_code == 200, stop.text
    with runtime.engine.connect() as connection:
        callback_id = connection.execute(text("SELECT id FROM callback_deliveries")).scalar_one()
    # The ingress marks accepted messages as enqueued from a background thread, a moment
    # after the 202: wait for it, so the test's "nothing changed" sees B's requests only.
    message_id = sent.json()["results"][0]["message_id"]
    assert wait_until(lambda: is_marked_enqueued(runtime, message_id), timeout=10)
    return {
        "stream": stream["id"],
        "whatsapp": whatsapp["id"],
        "two_way": two_way["id"],
        "message": sent.json()["results"][0]["message_id"],
        "token": stream["token"],
        "key": "order.shipped",
        "callback": str(callback_id),
        "phone": PHONE,
        "template": template["id"],
    }


def is_marked_enqueued(runtime, message_id: str) -> bool:
    with runtime.engine.connect() as connection:
        return connection.execute(
            text("SELECT enqueued_at IS NOT NULL FROM messages WHERE id = :id"),
            {"id": uuid.UUID(message_id)},
        ).scalar_one()


def ids_for(path: str, things: dict[str, Any]) -> dict[str, str]:
    """The value of each parameter a route names, from ``things``."""
    if "/whatsapp" in path:
        stream = things["whatsapp"]
    elif "/callbacks/" in path or path.endswith("/webhooks"):
        stream = things["two_way"]
    else:
        stream = things["stream"]
    return {
        "stream_id": stream,
        "message_id": things["message"],
        "letter_id": things["message"],
        "dead_letter_id": things["callback"],
        "key": things["key"],
        "phone": things["phone"],
        "template_id": things["template"],
    }


def unknown_things() -> dict[str, Any]:
    fresh = str(uuid.uuid4())
    return {
        "stream": fresh,
        "whatsapp": fresh,
        "two_way": fresh,
        "message": str(uuid.uuid4()),
        "callback": str(uuid.uuid4()),
        "key": "no.such.key",
        "phone": OTHER_PHONE,
        "template": str(uuid.uuid4()),
    }


def request_for(client, method: str, path: str, things: dict[str, Any], key: str):
    values = ids_for(path, things)
    url = path.format(**values).replace("+", "%2B")
    params = {"stream_id": values["stream_id"]} if "{stream_id}" not in path else None
    body = BODIES.get((method, path))
    return client.request(method, url, json=body, params=params, headers=auth(key))


def test_every_account_route_is_covered(app):
    """A route with a body needs a body in BODIES, so the handler (not validation) answers."""
    routes = account_routes(app)
    assert len(routes) >= 30  # the enumeration itself works
    for method, path in routes:
        if needs_body(app, method, path):
            assert (method, path) in BODIES, f"add a valid body for {method} {path}"


def test_invariant_4_accounts_are_walled_off_on_every_route(
    app, client, account_key, other_account_key, owned, runtime
):
    """B's key on A's ids, on every account route the app has: 404, byte for byte what an
    unknown id gets, and not one row of the database changes. Then A's things still work."""
    unknown = unknown_things()
    before = database_fingerprint(runtime)
    answers = []

    for method, path in account_routes(app):
        on_owned = request_for(client, method, path, owned, other_account_key)
        on_unknown = request_for(client, method, path, unknown, other_account_key)
        answers.append((method, path, on_owned, on_unknown))

    for method, path, on_owned, on_unknown in answers:
        if path == "/api/v1/dead-letters":  # a filter: B's page of its own (none)
            assert on_owned.status_code == 200, (method, path, on_owned.text)
            assert on_owned.json()["items"] == []
        else:
            assert on_owned.status_code == 404, (method, path, on_owned.text)
            assert on_owned.json()["error"]["code"] == "not_found", (method, path)
        assert (on_owned.status_code, on_owned.content) == (
            on_unknown.status_code,
            on_unknown.content,
        ), (method, path)
    assert database_fingerprint(runtime) == before
    again = client.get(f"/api/v1/messages/{owned['message']}", headers=auth(account_key))
    assert again.status_code == 200
    sent = client.post("/v1/messages", json={"messages": [message()]}, headers=auth(owned["token"]))
    assert sent.status_code == 202, sent.text


def test_invariant_4_other_accounts_streams_never_listed(
    client, account_key, other_account_key, owned, make_stream
):
    own = make_stream(key=other_account_key, name="B orders", tags=["b-only"])
    queries: list[dict[str, Any]] = [
        {},
        {"name": "orders"},
        {"name": "A orders"},
        {"tag": "a-only"},
        {"type": "transactional"},
        {"status": "sending"},
        {"per_page": 100},
    ]

    for params in queries:
        page = client.get(STREAMS, params=params, headers=auth(other_account_key))
        assert page.status_code == 200, page.text
        ids = [item["id"] for item in page.json()["items"]]
        assert owned["stream"] not in ids, params
        assert set(ids) <= {own["id"]}, params
        assert page.json()["total"] == len(ids), params

    mine = client.get(STREAMS, headers=auth(account_key)).json()
    assert {item["id"] for item in mine["items"]} == {
        owned["stream"],
        owned["whatsapp"],
        owned["two_way"],
    }


def test_invariant_4_stream_token_reads_only_its_own_stream_messages(
    client, account_key, other_account_key, owned, make_stream
):
    """A token opens one stream: a sibling stream of the same account, or another
    account's stream, cannot read the message by id or by internal_id."""
    sibling = make_stream(name="A marketing", type="marketing")
    stranger = make_stream(key=other_account_key, name="B orders")

    for token in (sibling["token"], stranger["token"]):
        by_id = client.get(f"/v1/messages/{owned['message']}", headers=auth(token))
        assert by_id.status_code == 404, by_id.text
        assert by_id.json()["error"]["code"] == "not_found"
        by_internal_id = client.get(
            "/v1/messages", params={"internal_id": "a-1"}, headers=auth(token)
        )
        assert by_internal_id.status_code == 404, by_internal_id.text

    own = client.get(f"/v1/messages/{owned['message']}", headers=auth(owned["token"]))
    assert own.status_code == 200
    assert own.json()["stream_id"] == owned["stream"]


def test_invariant_4_internal_ids_do_not_collide_across_accounts(
    client, other_account_key, owned, make_stream
):
    """The same ``internal_id`` on B's stream is a new message, not A's duplicate."""
    stranger = make_stream(key=other_account_key, name="B orders")

    sent = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id="a-1")]},
        headers=auth(stranger["token"]),
    )

    assert sent.status_code == 202, sent.text
    result = sent.json()["results"][0]
    assert result["message_id"] != owned["message"]
    assert not result.get("duplicate")
