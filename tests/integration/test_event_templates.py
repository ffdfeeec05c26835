"""Event templates: the ``/api/v1/streams/{id}/events`` resource (account key; other accounts'
ids answer 404, invariant 4) and sending by ``event_key`` (rendered text, segments counted on
it, a bad item rejected alone with its field named, invariant 7)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import event, func, select

from schemas.tables import EventTemplate, Message
from tests.conftest import auth, message

STREAMS = "/api/v1/streams"
SHIPPED = {
    "key": "order.shipped",
    "name": "Order shipped",
    "template": "Hi {name}, order {order_id} is on its way. {{tracking}}",
}


def events_url(stream: dict) -> str:
    return f"{STREAMS}/{stream['id']}/events"


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def listed(client, key: str, stream: dict) -> list[dict]:
    response = client.get(events_url(stream), headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()["items"]


def send(client, stream: dict, *items: dict):
    # json.dumps writes a lone surrogate as its "\ud800" escape; httpx's encoder cannot.
    return client.post(
        "/v1/messages",
        content=json.dumps({"messages": list(items)}),
        headers={**auth(stream["token"]), "Content-Type": "application/json"},
    )


def by_event(key: str = "order.shipped", **variables) -> dict:
    return {"recipient_phone": "+972524265292", "event_key": key, "variables": variables}


@pytest.fixture
def shop(client, account_key, make_stream) -> dict:
    """A transactional stream with the ``order.shipped`` event."""
    stream = make_stream(name="Shop")
    created = client.post(events_url(stream), json=SHIPPED, headers=auth(account_key))
    assert created.status_code == 201, created.text
    return stream


# ---------------------------------------------------------------- the resource


def test_create_list_change_and_delete_an_event(client, account_key, make_stream):
    stream = make_stream(type="otp", demo=True)

    created = client.post(events_url(stream), json=SHIPPED, headers=auth(account_key))

    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in ("key", "name", "template")} == SHIPPED
    assert body["variables"] == ["name", "order_id"]
    assert listed(client, account_key, stream) == [body]

    changed = client.patch(
        f"{events_url(stream)}/order.shipped",
        json={"template": "Order {order_id} shipped"},
        headers=auth(account_key),
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["variables"]) == ("Order shipped", ["order_id"])

    deleted = client.delete(f"{events_url(stream)}/order.shipped", headers=auth(account_key))
    assert deleted.status_code == 204
    assert listed(client, account_key, stream) == []
    gone = client.patch(
        f"{events_url(stream)}/order.shipped", json={"name": "x"}, headers=auth(account_key)
    )
    assert error_of(gone, 404)["code"] == "not_found"


def test_events_are_listed_by_key(client, account_key, make_stream):
    stream = make_stream()
    for key in ("b.second", "a.first", "c-third"):
        body = {"key": key, "name": key, "template": "x"}
        assert (
            client.post(events_url(stream), json=body, headers=auth(account_key)).status_code == 201
        )
    assert [e["key"] for e in listed(client, account_key, stream)] == [
        "a.first",
        "b.second",
        "c-third",
    ]


def test_a_duplicate_key_is_409_and_changes_nothing(client, account_key, shop):
    before = listed(client, account_key, shop)
    again = {**SHIPPED, "name": "Another", "template": "Other {x}"}

    error = error_of(client.post(events_url(shop), json=again, headers=auth(account_key)), 409)

    assert (error["code"], error["field"]) == ("duplicate_event_key", "key")
    assert listed(client, account_key, shop) == before


def test_the_same_key_on_two_streams_is_fine(client, account_key, shop, make_stream):
    other = make_stream(name="Other shop")
    response = client.post(events_url(other), json=SHIPPED, headers=auth(account_key))
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SHIPPED, "template": "Hi {name"}, "template"),
        ({**SHIPPED, "template": "Hi name}"}, "template"),
        ({**SHIPPED, "template": "Hi {name}}"}, "template"),
        ({**SHIPPED, "template": "{{name}"}, "template"),
        ({**SHIPPED, "template": "Hi {}"}, "template"),
        ({**SHIPPED, "template": "Hi {0}"}, "template"),
        ({**SHIPPED, "template": "Hi {user.name}"}, "template"),
        ({**SHIPPED, "template": "Hi {user[0]}"}, "template"),
        ({**SHIPPED, "template": "Hi {name!r}"}, "template"),
        ({**SHIPPED, "template": "Total {total:>10}"}, "template"),
        ({**SHIPPED, "template": "Hi {имя}"}, "template"),
        ({**SHIPPED, "template": ""}, "template"),
        ({**SHIPPED, "template": "x" * 1601}, "template"),
        ({**SHIPPED, "key": "Order.Shipped"}, "key"),
        ({**SHIPPED, "key": "order shipped"}, "key"),
        ({**SHIPPED, "key": "order/shipped"}, "key"),
        ({**SHIPPED, "key": "ordеr"}, "key"),  # a Cyrillic е
        ({**SHIPPED, "key": "k" * 65}, "key"),
        ({**SHIPPED, "key": ""}, "key"),
        ({**SHIPPED, "name": "  "}, "name"),
        # Display names, like stream names: no direction overrides (Trojan Source) or
        # control characters (BEL, ESC).
        ({**SHIPPED, "name": "Ship\u202edeppihs"}, "name"),
        ({**SHIPPED, "name": "Ship\x07ped"}, "name"),
        ({**SHIPPED, "name": "Ship\x1b[31mped"}, "name"),
        ({"key": "a", "template": "x"}, "name"),
        ({**SHIPPED, "colour": "blue"}, "colour"),
    ],
)
def test_bad_events_are_422_naming_the_field_and_change_nothing(
    client, account_key, make_stream, body, field
):
    stream = make_stream()

    error = error_of(client.post(events_url(stream), json=body, headers=auth(account_key)), 422)

    assert error["field"] == field
    assert listed(client, account_key, stream) == []


@pytest.mark.parametrize(
    "body",
    [
        {"template": "Hi {name"},
        {"template": None},
        {"name": None},
        {"name": ""},
        {"name": "Ship\u202eped"},
        {"key": "renamed"},
    ],
)
def test_a_bad_change_is_422_and_changes_nothing(client, account_key, shop, body):
    before = listed(client, account_key, shop)
    response = client.patch(
        f"{events_url(shop)}/order.shipped", json=body, headers=auth(account_key)
    )
    error_of(response, 422)
    assert listed(client, account_key, shop) == before


@pytest.mark.parametrize("stream_type", ["marketing", "two_way"])
def test_only_transactional_and_otp_streams_have_events(
    client, account_key, make_stream, stream_type
):
    stream = make_stream(type=stream_type, demo=True)
    for response in (
        client.get(events_url(stream), headers=auth(account_key)),
        client.post(events_url(stream), json=SHIPPED, headers=auth(account_key)),
    ):
        assert error_of(response, 409)["code"] == "wrong_stream_type"


def test_invariant_4_other_accounts_event_routes_answer_404(
    client, account_key, other_account_key, shop
):
    routes = [
        ("GET", events_url(shop), None),
        ("POST", events_url(shop), {**SHIPPED, "key": "stolen"}),
        ("PATCH", f"{events_url(shop)}/order.shipped", {"template": "pwned"}),
        ("DELETE", f"{events_url(shop)}/order.shipped", None),
    ]
    before = listed(client, account_key, shop)
    for method, path, body in routes:
        response = client.request(method, path, json=body, headers=auth(other_account_key))
        unknown = client.request(
            method,
            path.replace(shop["id"], str(uuid.uuid4())),
            json=body,
            headers=auth(other_account_key),
        )
        assert error_of(response, 404) == error_of(unknown, 404), (method, path)
    assert listed(client, account_key, shop) == before
    assert client.get(events_url(shop)).status_code == 401


def test_a_deleted_streams_events_are_gone(client, account_key, shop, runtime):
    client.delete(f"{STREAMS}/{shop['id']}", headers=auth(account_key))
    assert error_of(client.get(events_url(shop), headers=auth(account_key)), 404)


def test_unknown_event_key_in_the_path_is_404(client, account_key, shop):
    for key in ("nope", "NOT-A-KEY", "a" * 200):
        response = client.delete(f"{events_url(shop)}/{key}", headers=auth(account_key))
        assert error_of(response, 404)["code"] == "not_found"


# ---------------------------------------------------------------- sending by event


def test_a_send_by_event_renders_the_template(client, runtime, shop):
    response = send(client, shop, by_event(name="Dana", order_id=1003))

    assert response.status_code == 202
    result = response.json()["results"][0]
    assert (result["status"], result["segments"], result["encoding"]) == ("queued", 1, "GSM-7")
    shown = client.get(f"/v1/messages/{result['message_id']}", headers=auth(shop["token"]))
    assert shown.json()["message_content"] == "Hi Dana, order 1003 is on its way. {tracking}"


def test_segments_and_encoding_are_those_of_the_rendered_text(client, shop):
    results = send(
        client,
        shop,
        by_event(name="Dana", order_id="x" * 150),
        by_event(name="Даша", order_id=1),
        by_event(name="Даша", order_id="x" * 60),
    ).json()["results"]

    assert [(r["segments"], r["encoding"]) for r in results] == [
        (2, "GSM-7"),
        (1, "UCS-2"),
        (2, "UCS-2"),
    ]


def test_values_are_inserted_literally(client, runtime, shop):
    result = send(client, shop, by_event(name="{order_id}", order_id="{{x}}")).json()["results"][0]
    with runtime.session_factory() as session:
        body = session.scalar(
            select(Message.body).where(Message.id == uuid.UUID(result["message_id"]))
        )
    assert body == "Hi {order_id}, order {{x}} is on its way. {tracking}"


@pytest.mark.parametrize(
    ("item", "code", "field"),
    [
        (by_event(name="Dana"), "missing_variable", "messages[1].variables.order_id"),
        (by_event("order.lost", name="D", order_id=1), "unknown_event", "messages[1].event_key"),
        (
            {"recipient_phone": "+972524265292", "event_key": "order.shipped"},
            "missing_variable",
            "messages[1].variables.name",
        ),
        (by_event(name=True, order_id=1), "invalid_variable", "messages[1].variables.name"),
        (by_event(name=None, order_id=1), "invalid_variable", "messages[1].variables.name"),
        (by_event(name={"a": 1}, order_id=1), "invalid_variable", "messages[1].variables.name"),
        (by_event(name="x" * 501, order_id=1), "invalid_variable", "messages[1].variables.name"),
        (by_event(name="\ud800", order_id=1), "invalid_variable", "messages[1].variables.name"),
        (
            {**by_event(name="D", order_id=1), "message_content": "Hello"},
            "conflicting_content",
            "messages[1].message_content",
        ),
        (
            message(variables={"name": "D"}),
            "invalid_field",
            "messages[1].variables",
        ),
        (
            {**by_event(name="D", order_id=1), "variables": "name=D"},
            "invalid_field",
            "messages[1].variables",
        ),
        (
            by_event(name="x" * 500, order_id="y" * 500, **{"z": 1}) | {"event_key": "long"},
            "content_too_long",
            "messages[1].variables",
        ),
    ],
)
def test_a_bad_event_item_is_rejected_alone(client, runtime, account_key, shop, item, code, field):
    long = {"key": "long", "name": "Long", "template": "{name}{order_id}{name}{order_id}"}
    client.post(events_url(shop), json=long, headers=auth(account_key))

    response = send(client, shop, by_event(name="A", order_id=1), item, message())

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["queued", "rejected", "queued"]
    error = body["results"][1]["error"]
    assert (error["code"], error["field"]) == (code, field)
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 2


@pytest.mark.parametrize(
    ("stream_type", "stream_settings"),
    [("marketing", {}), ("two_way", {"callback_url": "https://hooks.example.com/in"})],
)
def test_other_stream_types_cannot_send_by_event(client, make_stream, stream_type, stream_settings):
    stream = make_stream(type=stream_type, demo=True, settings=stream_settings)
    assert stream["status"] == "ready"
    result = send(client, stream, by_event(name="D", order_id=1)).json()["results"][0]
    assert (result["error"]["code"], result["error"]["field"]) == (
        "unsupported_content",
        "messages[0].event_key",
    )


def test_an_otp_stream_sends_by_event_too(client, account_key, make_stream):
    stream = make_stream(type="otp", demo=True)
    body = {"key": "login.alert", "name": "New login", "template": "New login from {city}"}
    client.post(events_url(stream), json=body, headers=auth(account_key))

    result = send(client, stream, by_event("login.alert", city="Haifa")).json()["results"][0]

    assert result["status"] == "queued"


def test_templates_are_loaded_once_per_request(client, runtime, shop):
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "event_templates" in statement:
            statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        items = [by_event(name=f"n{i}", order_id=i) for i in range(200)]
        response = send(client, shop, *items)
        plain = send(client, shop, message())
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)

    assert response.json()["accepted"] == 200
    assert plain.json()["accepted"] == 1
    assert len(statements) == 1, "one query for the batch, none for a batch without events"


def test_an_event_changed_is_used_by_the_next_send(client, account_key, shop, runtime):
    client.patch(
        f"{events_url(shop)}/order.shipped",
        json={"template": "Shipped: {order_id}"},
        headers=auth(account_key),
    )
    result = send(client, shop, by_event(order_id=7)).json()["results"][0]
    with runtime.session_factory() as session:
        body = session.scalar(
            select(Message.body).where(Message.id == uuid.UUID(result["message_id"]))
        )
        assert session.scalar(select(func.count()).select_from(EventTemplate)) == 1
    assert body == "Shipped: 7"
