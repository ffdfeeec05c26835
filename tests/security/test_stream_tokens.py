"""Issue 8, item 6: a stream token opens its own stream only, and is compared in constant
time.

Every route that takes a stream token is read from the app's OpenAPI document (those
declaring the ``streamToken`` credential) and must be in ``CROSS_STREAM_CHECKS`` below, so
a new token route cannot be forgotten. Reading another stream's message (by id or
``internal_id``) is already an invariant 4 test in ``test_account_isolation.py``; here:
the answer is byte for byte the answer for an unknown id, OTP codes and WhatsApp templates
of another stream are out of reach, and the comparison's shape.
"""

from __future__ import annotations

import hmac
import uuid

import pytest

import core.credentials
import core.signatures
from core.credentials import digest
from dispatcher.auth import find_account, find_stream_access
from tests.conftest import auth, message
from tests.otp_codes import code_of, send_code, verify
from tests.two_way import add_template, whatsapp_stream

#: Every token route, and the test below that tries it with another stream's token.
CROSS_STREAM_CHECKS = {
    ("POST", "/v1/messages"): "test_a_send_lands_in_the_tokens_own_stream_only",
    ("GET", "/v1/messages"): "test_another_streams_messages_answer_like_unknown_ones",
    ("GET", "/v1/messages/{message_id}"): "test_another_streams_messages_answer_like_unknown_ones",
    ("POST", "/v1/otp/send"): "test_an_otp_token_cannot_verify_or_supersede_another_streams_code",
    ("POST", "/v1/otp/verify"): "test_an_otp_token_cannot_verify_or_supersede_another_streams_code",
}


def token_routes(app) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if {"streamToken": []} in operation.get("security", [])
    }


def test_every_token_route_has_a_cross_stream_check(app):
    assert token_routes(app) == set(CROSS_STREAM_CHECKS)


def test_another_streams_messages_answer_like_unknown_ones(client, make_stream, other_account_key):
    mine = make_stream(name="Mine")
    sibling = make_stream(name="Sibling")  # same account
    stranger = make_stream(key=other_account_key, name="Stranger")
    sent = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id="order-1")]},
        headers=auth(mine["token"]),
    ).json()["results"][0]["message_id"]

    for token in (sibling["token"], stranger["token"]):
        for owned, unknown in [
            (f"/v1/messages/{sent}", f"/v1/messages/{uuid.uuid4()}"),
            ("/v1/messages?internal_id=order-1", "/v1/messages?internal_id=order-2"),
        ]:
            on_owned = client.get(owned, headers=auth(token))
            on_unknown = client.get(unknown, headers=auth(token))
            assert on_owned.status_code == 404
            assert on_owned.content == on_unknown.content


def test_a_send_lands_in_the_tokens_own_stream_only(client, make_stream, account_key):
    """Nothing in a send body picks the stream: the token does (an unknown stream_id
    field is refused, not obeyed)."""
    mine, other = make_stream(name="Mine"), make_stream(name="Other")

    redirected = client.post(
        "/v1/messages",
        json={"stream_id": other["id"], "messages": [message()]},
        headers=auth(mine["token"]),
    )
    item = client.post(
        "/v1/messages",
        json={"messages": [message(stream_id=other["id"])]},
        headers=auth(mine["token"]),
    )

    assert redirected.status_code == 422
    assert item.status_code == 202
    assert item.json()["results"][0]["status"] == "rejected"
    stats = client.get(f"/api/v1/streams/{other['id']}/stats", headers=auth(account_key)).json()
    assert stats["accepted"] == 0


def test_an_otp_token_cannot_verify_or_supersede_another_streams_code(client, runtime, otp_stream):
    first, second = otp_stream(name="First"), otp_stream(name="Second")
    sent = send_code(client, first)
    assert sent.status_code == 202, sent.text
    code = code_of(runtime, sent.json()["message_id"])

    stolen = verify(client, second, code)
    assert stolen.status_code == 200
    assert stolen.json()["valid"] is False
    assert stolen.json()["reason"] == "no_code"
    assert send_code(client, second).status_code == 202  # a code of the second stream
    # The first stream's code is untouched: not superseded, no attempt spent.
    own = verify(client, first, code)
    assert own.json()["valid"] is True


def test_a_whatsapp_token_cannot_use_another_streams_templates(client, make_stream, account_key):
    owner = whatsapp_stream(make_stream, client, account_key)
    add_template(client, account_key, owner["id"])
    other = whatsapp_stream(make_stream, client, account_key)

    response = client.post(
        "/v1/messages",
        json={
            "messages": [
                {
                    "recipient_phone": "+972524265292",
                    "template": {"name": "order_shipped", "variables": ["Dana", "1003"]},
                }
            ]
        },
        headers=auth(other["token"]),
    )

    assert response.status_code == 202
    assert response.json()["results"][0]["status"] == "rejected"


@pytest.fixture
def compare_digest_calls(monkeypatch):
    """Records the arguments of every ``hmac.compare_digest`` call (and still compares)."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    real = hmac.compare_digest

    def recording(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert core.credentials.hmac is hmac and core.signatures.hmac is hmac
    return calls


def test_token_comparison_is_constant_time_on_fixed_length_digests(
    runtime, make_stream, account_key, compare_digest_calls
):
    """Why not a timing measurement: the house rule is no timed assertions, and on a
    shared 2-core machine a statistical test either flakes or only catches gross leaks.
    What makes the comparison constant-time is its shape, which this pins down:

    * the look-up is by SHA-256 digest in the database, so how much of a guess matches the
      real token's prefix cannot change the work done (the digests share nothing);
    * the one comparison of secrets is ``hmac.compare_digest`` on two 64-character hex
      digests, whatever the presented token's length or content;
    * a token that finds no row is not compared at all (nothing to leak).
    """
    stream = make_stream()
    token = stream["token"]
    now = runtime.clock()

    compare_digest_calls.clear()
    assert find_stream_access(runtime, token, now) is not None
    assert compare_digest_calls, "a found token must be compared with compare_digest"
    for a, b in compare_digest_calls:
        assert len(a) == len(b) == 64
        assert token.encode() not in (a, b) and token not in (a, b)
    assert (digest(token).encode(), digest(token).encode()) in compare_digest_calls

    compare_digest_calls.clear()
    near_misses = [token[:-1] + ("A" if token[-1] != "A" else "B"), "X" + token[1:], token * 3]
    for guess in near_misses:
        assert find_stream_access(runtime, guess, now) is None
    assert compare_digest_calls == []

    compare_digest_calls.clear()
    assert find_account(runtime, account_key) is not None
    assert [(len(a), len(b)) for a, b in compare_digest_calls] == [(64, 64)]


def test_api_answers_that_carry_a_secret_are_never_cached(client, make_stream, account_key):
    stream = make_stream()
    whatsapp = whatsapp_stream(make_stream, client, account_key)
    with_secrets = [
        client.get(f"/api/v1/streams/{stream['id']}/token", headers=auth(account_key)),
        client.post(f"/api/v1/streams/{stream['id']}/token/reset", headers=auth(account_key)),
        client.get(f"/api/v1/streams/{whatsapp['id']}/whatsapp", headers=auth(account_key)),
        client.put(
            f"/api/v1/streams/{whatsapp['id']}/whatsapp",
            json={"verify_token": "another-verify-token"},
            headers=auth(account_key),
        ),
    ]
    for answer in with_secrets:
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store", answer.request.url
