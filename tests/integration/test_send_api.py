"""The send API: who may send (invariant 3), what a batch does with bad items (invariant 7)
and repeated internal ids (invariant 2)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dispatcher.app import create_app
from schemas.tables import Message, MessageEvent
from tests.conftest import auth, message


def send(client: TestClient, token: str, *items: dict, headers: dict | None = None):
    return client.post(
        "/v1/messages", json={"messages": list(items)}, headers={**auth(token), **(headers or {})}
    )


def count_messages(runtime) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


# ------------------------------------------------------------------ invariant 3


def test_invariant_3_right_token_from_allowed_ip_is_accepted(client_from, make_stream):
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    response = send(client_from("203.0.113.77"), stream["token"], message())
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    "token", ["", "st_" + "A" * 43, "not-a-token", "sk_" + "B" * 43, "st_\u0430" * 10]
)
def test_invariant_3_wrong_token_is_401(client, make_stream, runtime, token):
    make_stream()
    response = client.post(
        "/v1/messages",
        json={"messages": [message()]},
        headers={"Authorization": f"Bearer {token}".encode()},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert count_messages(runtime) == 0


def test_invariant_3_missing_authorization_is_401(client, make_stream):
    make_stream()
    response = client.post("/v1/messages", json={"messages": [message()]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_invariant_3_account_key_is_not_a_stream_token(client, make_stream, account_key):
    make_stream()
    assert send(client, account_key, message()).status_code == 401


def test_invariant_3_ip_outside_allowlist_is_403(client_from, make_stream, runtime):
    stream = make_stream(allowed_ips=["203.0.113.0/24", "2001:db8::/32"])
    response = send(client_from("198.51.100.9"), stream["token"], message())
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ip_not_allowed"
    assert count_messages(runtime) == 0


def test_invariant_3_spoofed_forwarded_for_from_untrusted_peer_is_ignored(client_from, make_stream):
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    outsider = client_from("198.51.100.9")
    spoofed = send(outsider, stream["token"], message(), headers={"X-Forwarded-For": "203.0.113.5"})
    assert spoofed.status_code == 403
    insider = client_from("203.0.113.5")
    framed = send(insider, stream["token"], message(), headers={"X-Forwarded-For": "198.51.100.9"})
    assert framed.status_code == 202


def test_invariant_3_forwarded_for_from_trusted_proxy_is_used(settings, runtime, account_key):
    trusted = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})
    app = create_app(trusted, runtime=runtime)
    with TestClient(app, client=("10.1.2.3", 1234)) as proxy:
        created = proxy.post(
            "/api/v1/streams",
            json={
                "name": "Proxied",
                "type": "transactional",
                "default_sender": "Acme",
                "allowed_ips": ["203.0.113.0/24"],
            },
            headers=auth(account_key),
        ).json()
        token = proxy.get(
            f"/api/v1/streams/{created['id']}/token", headers=auth(account_key)
        ).json()["token"]
        ok = send(
            proxy,
            token,
            message(),
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.8, 10.9.9.9"},
        )
        assert ok.status_code == 202
        blocked = send(
            proxy, token, message(), headers={"X-Forwarded-For": "203.0.113.8, 198.51.100.1"}
        )
        assert blocked.status_code == 403
        no_header = send(proxy, token, message())
        assert no_header.status_code == 403  # the proxy itself is not an allowed client


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("2001:db8:1::5", 202),
        ("2001:db9::5", 403),
        ("::ffff:203.0.113.9", 202),
        ("203.0.113.9", 202),
    ],
)
def test_invariant_3_ipv6_and_mapped_addresses(client_from, make_stream, peer, expected):
    stream = make_stream(allowed_ips=["2001:db8::/32", "203.0.113.0/24"])
    assert send(client_from(peer), stream["token"], message()).status_code == expected


def test_invariant_3_token_of_one_stream_cannot_read_another_streams_message(client, make_stream):
    first, second = make_stream(name="One"), make_stream(name="Two")
    sent = send(client, first["token"], message()).json()["results"][0]["message_id"]
    assert client.get(f"/v1/messages/{sent}", headers=auth(first["token"])).status_code == 200
    assert client.get(f"/v1/messages/{sent}", headers=auth(second["token"])).status_code == 404


# ------------------------------------------------------------------ invariant 7


def test_invariant_7_bad_item_in_batch_is_rejected_alone(client, make_stream, runtime):
    stream = make_stream()
    response = send(
        client,
        stream["token"],
        message(internal_id="a"),
        message(internal_id="b", recipient_phone="+1555"),
        message(internal_id="c", message_content="Ünïcødé ✓"),
        {"internal_id": "d", "message_content": "no recipient"},
        message(internal_id="e", surprise="field"),
    )
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 3)
    results = body["results"]
    assert [r["internal_id"] for r in results] == ["a", "b", "c", "d", "e"]
    assert [r["status"] for r in results] == [
        "queued",
        "rejected",
        "queued",
        "rejected",
        "rejected",
    ]
    assert results[1]["error"]["field"] == "messages[1].recipient_phone"
    assert results[1]["error"]["code"] == "invalid_phone"
    assert results[3]["error"]["field"] == "messages[3].recipient_phone"
    assert results[4]["error"]["field"] == "messages[4].surprise"
    assert results[2]["encoding"] == "UCS-2"
    assert results[0]["encoding"] == "GSM-7"
    assert count_messages(runtime) == 2
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(MessageEvent)) == 2


def test_a_batch_item_that_is_not_an_object_is_rejected_alone(client, make_stream, runtime):
    """API.md, Send API: ``"results": [{..., "status": "queued"|"scheduled"|"rejected", ...,
    "error"?}]``, ``Results are in request order`` and ``422 for a body that does not
    parse``; DESIGN.md invariant 7: ``A bad item in a batch rejects that item alone.``

    The body parses and its envelope is right: an item that is not a JSON object (``5``,
    ``null``) is that item's ``invalid_item``, named by its place, and the good item beside
    it is stored."""
    stream = make_stream()
    response = send(client, stream["token"], message(internal_id="good"), 5, None)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    assert [r["status"] for r in body["results"]] == ["queued", "rejected", "rejected"]
    assert [r["error"]["field"] for r in body["results"][1:]] == ["messages[1]", "messages[2]"]
    assert {r["error"]["code"] for r in body["results"][1:]} == {"invalid_item"}
    assert count_messages(runtime) == 1


#: API.md: results: [{"internal_id", "message_id", "status", "segments", "encoding",
#: "duplicate"?, "error"?}] -- only the keys marked "?" may be left out.
RESULT_KEYS = {"internal_id", "message_id", "status", "segments", "encoding"}


def test_send_results_carry_every_documented_key_for_every_item(client, make_stream):
    """API.md, Send API: ``→ 202 {"accepted": N, "rejected": M, "results": [{"internal_id",
    "message_id", "status": ..., "segments", "encoding": ..., "duplicate"?, "error"?}]}``.

    Only ``duplicate`` and ``error`` are optional: an item sent without an ``internal_id``
    still has the key (``null``), and a rejected item has ``message_id``, ``segments`` and
    ``encoding`` as ``null``, so a client reading ``result["message_id"]`` of each item
    never meets a KeyError. The optional keys stay out when unset."""
    stream = make_stream()
    response = send(
        client,
        stream["token"],
        message(),
        message(internal_id="bad", recipient_phone="+1555"),
    )
    assert response.status_code == 202, response.text
    queued, rejected = response.json()["results"]
    assert (queued["status"], rejected["status"]) == ("queued", "rejected")
    assert queued.keys() >= RESULT_KEYS and rejected.keys() >= RESULT_KEYS
    assert queued["internal_id"] is None and queued["message_id"]
    assert "duplicate" not in queued and "error" not in queued
    assert "message_status" not in queued
    assert (rejected["message_id"], rejected["segments"], rejected["encoding"]) == (None,) * 3
    assert rejected["error"]["code"] == "invalid_phone"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 422, "invalid_json"),
        (b'{"messages": []}', 422, "invalid_field"),
        (b'{"messages": "x"}', 422, "invalid_field"),
        (b'{"nothing": 1}', 422, "invalid_field"),
        (b"[]", 422, "invalid_field"),
    ],
)
def test_invariant_7_unparseable_body_is_422_and_stores_nothing(
    client, make_stream, runtime, body, status, code
):
    stream = make_stream()
    response = client.post(
        "/v1/messages",
        content=body,
        headers={**auth(stream["token"]), "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert count_messages(runtime) == 0


def test_batch_over_the_limit_is_413(client, make_stream, settings, runtime):
    stream = make_stream()
    items = [message() for _ in range(settings.max_batch + 1)]
    response = send(client, stream["token"], *items)
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("batch_too_large", "messages")
    assert f"at most {settings.max_batch} messages" in error["message"]
    assert count_messages(runtime) == 0


def test_oversized_body_is_413_before_parsing(client, make_stream, settings, runtime):
    stream = make_stream()
    huge = (
        b'{"messages": [{"recipient_phone": "+972524265292", "message_content": "'
        + b"x" * settings.max_body_bytes
        + b'"}]}'
    )
    response = client.post(
        "/v1/messages",
        content=huge,
        headers={**auth(stream["token"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert count_messages(runtime) == 0


def test_segments_are_counted_on_the_text(client, make_stream):
    stream = make_stream()
    results = send(
        client,
        stream["token"],
        message(message_content="a" * 161),
        message(message_content="ש" * 71),
    ).json()["results"]
    assert [(r["segments"], r["encoding"]) for r in results] == [(2, "GSM-7"), (2, "UCS-2")]


@pytest.mark.parametrize(
    ("state_call", "status", "code"),
    [("disable", 403, "stream_disabled"), ("restrict", 403, "stream_restricted")],
)
def test_paused_streams_refuse_sends(client, make_stream, account_key, state_call, status, code):
    stream = make_stream()
    body = {"reason": "compliance review"} if state_call == "restrict" else None
    assert (
        client.post(
            f"/api/v1/streams/{stream['id']}/{state_call}", json=body, headers=auth(account_key)
        ).status_code
        == 200
    )
    response = send(client, stream["token"], message())
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_draft_stream_refuses_sends_with_409(client, make_stream):
    stream = make_stream(default_sender=None)
    assert stream["status"] == "draft"
    response = send(client, stream["token"], message())
    assert (response.status_code, response.json()["error"]["code"]) == (409, "stream_draft")


# ------------------------------------------------------------------ invariant 2 (idempotency)


def test_invariant_2_repeated_internal_id_returns_the_first_message(client, make_stream, runtime):
    stream = make_stream()
    first = send(client, stream["token"], message(internal_id="1003")).json()["results"][0]
    again = send(
        client, stream["token"], message(internal_id="1003", message_content="other")
    ).json()
    assert again["results"][0]["message_id"] == first["message_id"]
    assert again["results"][0]["duplicate"] is True
    assert "duplicate" not in first and "message_status" not in first
    assert count_messages(runtime) == 1


def test_a_repeat_says_what_became_of_the_first_message(client, make_stream, runtime, account_key):
    """The item is taken (``status`` queued: nothing new is sent), and ``message_status``
    says where the first message stands now: a client retrying a send it had canceled is
    not told that a message is on its way."""
    stream = make_stream()
    later = (runtime.clock() + timedelta(hours=2)).isoformat()
    item = message(internal_id="promo-1", send_at=later)
    first = send(client, stream["token"], item).json()["results"][0]
    again = send(client, stream["token"], item).json()["results"][0]
    assert (again["duplicate"], again["message_status"]) == (True, "scheduled")
    canceled = client.post(
        f"/api/v1/messages/{first['message_id']}/cancel", headers=auth(account_key)
    )
    assert canceled.status_code == 200, canceled.text
    again = send(client, stream["token"], item).json()["results"][0]
    assert (again["status"], again["duplicate"]) == ("queued", True)
    assert again["message_status"] == "canceled"


def test_invariant_2_repeat_inside_one_batch(client, make_stream, runtime):
    stream = make_stream()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repeat's result serializes as its schema says
        results = send(
            client, stream["token"], message(internal_id="x"), message(internal_id="x")
        ).json()["results"]
    assert results[0]["message_id"] == results[1]["message_id"]
    assert (results[1]["duplicate"], results[1]["message_status"]) == (True, "queued")
    assert count_messages(runtime) == 1


def test_invariant_2_internal_id_is_per_stream(client, make_stream, runtime):
    one, two = make_stream(name="One"), make_stream(name="Two")
    a = send(client, one["token"], message(internal_id="same")).json()["results"][0]
    b = send(client, two["token"], message(internal_id="same")).json()["results"][0]
    assert a["message_id"] != b["message_id"]
    assert count_messages(runtime) == 2


def test_invariant_2_concurrent_retries_store_one_message(client, make_stream, runtime):
    stream = make_stream()

    def attempt(_: int) -> str:
        return send(client, stream["token"], message(internal_id="race")).json()["results"][0][
            "message_id"
        ]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(attempt, range(16)))
    assert len(ids) == 1
    assert count_messages(runtime) == 1


def test_message_lookup_by_internal_id(client, make_stream):
    stream = make_stream()
    sent = send(client, stream["token"], message(internal_id="lookup-me")).json()["results"][0]
    found = client.get(
        "/v1/messages", params={"internal_id": "lookup-me"}, headers=auth(stream["token"])
    )
    assert found.status_code == 200
    assert found.json()["message_id"] == sent["message_id"]
    assert found.json()["history"][0]["status"] == "queued"
    missing = client.get(
        "/v1/messages", params={"internal_id": "nope"}, headers=auth(stream["token"])
    )
    assert missing.status_code == 404
