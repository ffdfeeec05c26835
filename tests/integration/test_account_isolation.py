"""Invariant 4: accounts are walled off. An account key sees and changes its own streams,
messages and stats only. Every other id answers 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import auth, message

STREAMS = "/api/v1/streams"
PHONE = "+972524265292"

#: Every route that takes an id, with a body that would succeed for the owner.
ROUTES = [
    ("GET", "/api/v1/streams/{stream}", None),
    ("PATCH", "/api/v1/streams/{stream}", {"name": "Taken over", "allowed_ips": ["0.0.0.0/0"]}),
    ("DELETE", "/api/v1/streams/{stream}", None),
    ("GET", "/api/v1/streams/{stream}/token", None),
    ("POST", "/api/v1/streams/{stream}/token/reset", None),
    ("POST", "/api/v1/streams/{stream}/token/reset", {"grace_seconds": 60}),
    ("POST", "/api/v1/streams/{stream}/disable", None),
    ("POST", "/api/v1/streams/{stream}/enable", None),
    ("POST", "/api/v1/streams/{stream}/restrict", {"reason": "hostile takeover"}),
    ("POST", "/api/v1/streams/{stream}/unrestrict", None),
    ("GET", "/api/v1/streams/{stream}/settings", None),
    ("PUT", "/api/v1/streams/{stream}/settings", {"max_per_second": 1}),
    ("POST", "/api/v1/streams/{stream}/test", {"recipient_phone": PHONE}),
    ("GET", "/api/v1/streams/{stream}/request-api", None),
    ("GET", "/api/v1/messages/{message}", None),
]


def route_id(route: tuple[str, str, Any]) -> str:
    method, path, body = route
    tail = path.removeprefix("/api/v1/").replace("{stream}", "id").replace("{message}", "id")
    return f"{method} {tail}" + (" +body" if body else "")


def snapshot(client, key: str, stream_id: str) -> dict[str, Any]:
    """What the owner sees of a stream: its view, settings and token."""
    base = f"{STREAMS}/{stream_id}"
    view = client.get(base, headers=auth(key))
    assert view.status_code == 200, view.text
    settings = client.get(f"{base}/settings", headers=auth(key)).json()
    token = client.get(f"{base}/token", headers=auth(key)).json()["token"]
    return {"view": view.json(), "settings": settings, "token": token}


@pytest.fixture
def owned(client, make_stream) -> dict[str, str]:
    """Account A's stream, a message sent through it, and its token."""
    stream = make_stream(name="A orders", tags=["a-only"], allowed_ips=["203.0.113.0/24"])
    sent = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id="a-1")]},
        headers=auth(stream["token"]),
    )
    assert sent.status_code == 202, sent.text
    return {
        "stream": stream["id"],
        "message": sent.json()["results"][0]["message_id"],
        "token": stream["token"],
    }


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_invariant_4_accounts_are_walled_off(client, account_key, other_account_key, owned, route):
    """B's key on A's ids answers exactly what it answers for an id that does not exist,
    and A's stream is left as it was."""
    method, path, body = route
    before = snapshot(client, account_key, owned["stream"])
    unknown = {"stream": str(uuid.uuid4()), "message": str(uuid.uuid4())}

    response = client.request(
        method, path.format(**owned), json=body, headers=auth(other_account_key)
    )
    for_unknown = client.request(
        method, path.format(**unknown), json=body, headers=auth(other_account_key)
    )

    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert (response.status_code, response.json()) == (
        for_unknown.status_code,
        for_unknown.json(),
    )
    assert snapshot(client, account_key, owned["stream"]) == before
    again = client.get(f"/api/v1/messages/{owned['message']}", headers=auth(account_key))
    assert again.status_code == 200
    assert [event["status"] for event in again.json()["history"]] == ["queued"]
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
    assert [item["id"] for item in mine["items"]] == [owned["stream"]]


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
