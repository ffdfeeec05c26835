"""Issue 8, item 6: allowlist edge cases and X-Forwarded-For from untrusted peers.

Decisions (also in ``core/network.py``):

* ``0.0.0.0/0`` and ``::/0`` are accepted: an explicit "allow every address of this
  family", visible in the stream's ``allowed_ips``. Each holds its own family only, so
  ``0.0.0.0/0`` alone still refuses IPv6 callers. (An empty list also allows any address,
  as API.md says.)
* IPv4-mapped IPv6 is IPv4, on either side: ``::ffff:203.0.113.10`` is stored as
  ``203.0.113.10/32`` and a mapped peer matches IPv4 entries.
* Zone ids and malformed CIDRs are refused with 422 ``invalid_cidr`` naming
  ``allowed_ips[i]``, and nothing is stored.
* ``STREAMS_TRUSTED_PROXIES`` refuses malformed entries and any /0 at start-up.

The basic spoofed-header and trusted-proxy cases are invariant 3 tests in
``tests/integration/test_send_api.py``; these add what they do not cover.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from core.settings import Settings
from dispatcher.app import create_app
from schemas.tables import Message, Stream
from tests.conftest import auth, message

STREAMS = "/api/v1/streams"


def send(client, token, headers=None):
    return client.post(
        "/v1/messages", json={"messages": [message()]}, headers={**auth(token), **(headers or {})}
    )


def stream_count(runtime) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Stream)) or 0


def test_ipv4_mapped_ipv6_entry_is_stored_and_matched_as_ipv4(client_from, make_stream):
    stream = make_stream(allowed_ips=["::ffff:203.0.113.10"])

    assert stream["allowed_ips"] == ["203.0.113.10/32"]
    assert send(client_from("203.0.113.10"), stream["token"]).status_code == 202
    assert send(client_from("::ffff:203.0.113.10"), stream["token"]).status_code == 202
    assert send(client_from("203.0.113.11"), stream["token"]).status_code == 403
    assert send(client_from("::ffff:203.0.113.11"), stream["token"]).status_code == 403


@pytest.mark.parametrize(
    ("allowed", "peer", "status"),
    [
        (["0.0.0.0/0"], "198.51.100.7", 202),
        (["0.0.0.0/0"], "::ffff:198.51.100.7", 202),
        (["0.0.0.0/0"], "2001:db8::7", 403),
        (["::/0"], "2001:db8::7", 202),
        (["::/0"], "198.51.100.7", 403),
        (["0.0.0.0/0", "::/0"], "2001:db8::7", 202),
        (["0.0.0.0/0", "::/0"], "198.51.100.7", 202),
    ],
)
def test_slash_zero_is_an_explicit_allow_all_of_its_family(
    client_from, make_stream, allowed, peer, status
):
    stream = make_stream(allowed_ips=allowed)
    assert stream["allowed_ips"] == allowed  # stored as given: the choice stays visible
    assert send(client_from(peer), stream["token"]).status_code == status


@pytest.mark.parametrize(
    "bad",
    [
        "fe80::1%eth0",
        "fe80::%eth0/64",
        "10.0.0.0/33",
        "10.0.0.256",
        "010.0.0.1",
        "１０.0.0.1",  # fullwidth digits
        "10.0.0.0/8\u200b",  # a zero-width space
        "2001:db8::/129",
        "203.0.113.0/24,198.51.100.0/24",  # two in one entry
        "",
    ],
)
def test_bad_cidrs_are_refused_naming_the_entry_and_store_nothing(
    client, account_key, runtime, make_stream, bad
):
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    before = stream_count(runtime)

    created = client.post(
        STREAMS,
        json={
            "name": "Bad",
            "type": "transactional",
            "default_sender": "Acme",
            "allowed_ips": ["198.51.100.0/24", bad],
        },
        headers=auth(account_key),
    )
    patched = client.patch(
        f"{STREAMS}/{stream['id']}", json={"allowed_ips": [bad]}, headers=auth(account_key)
    )

    assert created.status_code == 422, created.text
    assert created.json()["error"]["code"] == "invalid_cidr"
    assert created.json()["error"]["field"] == "allowed_ips[1]"
    assert patched.status_code == 422, patched.text
    assert patched.json()["error"]["field"] == "allowed_ips[0]"
    assert stream_count(runtime) == before
    shown = client.get(f"{STREAMS}/{stream['id']}", headers=auth(account_key)).json()
    assert shown["allowed_ips"] == ["203.0.113.0/24"]


@pytest.mark.parametrize("proxies", ["0.0.0.0/0", "::/0", "10.0.0.0/8,::ffff:0:0/96", "10.0.0.x"])
def test_trusted_proxies_refuse_slash_zero_and_typos_at_start_up(proxies):
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(trusted_proxies=proxies, _env_file=None)


@pytest.mark.parametrize(
    "forwarded_for",
    [
        "203.0.113.5",
        "203.0.113.5, 203.0.113.6",
        "::ffff:203.0.113.5",
        "garbage, 203.0.113.5",
        "203.0.113.5" + ", 203.0.113.5" * 200,
    ],
)
def test_forwarded_for_from_a_peer_outside_the_trusted_proxies_is_ignored(
    settings, runtime, make_stream, forwarded_for
):
    """Trusted proxies are configured, but this peer is not one of them: whatever its
    header says, the client is the peer (outside the allowlist)."""
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    behind_proxies = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})
    app = create_app(behind_proxies, runtime=runtime)
    with TestClient(app, client=("198.51.100.9", 1234)) as outsider:
        spoofed = send(outsider, stream["token"], {"X-Forwarded-For": forwarded_for})
    assert spoofed.status_code == 403, spoofed.text
    assert spoofed.json()["error"]["code"] == "ip_not_allowed"
    assert "198.51.100.9" in spoofed.json()["error"]["message"]


def test_forwarded_for_over_two_header_lines_is_read_as_one_list(settings, runtime, make_stream):
    """A proxy that adds a header line of its own (HAProxy's ``option forwardfor``) leaves
    the client's line first: ``X-Forwarded-For: <an allowed address>`` from the client, then
    the proxy's ``X-Forwarded-For: 198.51.100.9``. The lines are one list (RFC 9110), read
    from the right: the client is 198.51.100.9, outside the allowlist, and nothing is
    stored. Reading the first line alone would take the client's word for it."""
    stream = make_stream(allowed_ips=["203.0.113.0/24"])
    behind_proxies = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})
    app = create_app(behind_proxies, runtime=runtime)
    with TestClient(app, client=("10.0.0.1", 1234)) as proxy:
        spoofed = proxy.post(
            "/v1/messages",
            json={"messages": [message()]},
            headers=[
                *auth(stream["token"]).items(),
                ("X-Forwarded-For", "203.0.113.5"),  # the client's own line
                ("X-Forwarded-For", "198.51.100.9"),  # the proxy's: the real client
            ],
        )
        allowed = proxy.post(
            "/v1/messages",
            json={"messages": [message()]},
            headers=[
                *auth(stream["token"]).items(),
                ("X-Forwarded-For", "198.51.100.9"),
                ("X-Forwarded-For", "203.0.113.5"),
            ],
        )
    assert spoofed.status_code == 403, spoofed.text
    assert spoofed.json()["error"]["code"] == "ip_not_allowed"
    assert "198.51.100.9" in spoofed.json()["error"]["message"]
    assert allowed.status_code == 202, allowed.text
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
