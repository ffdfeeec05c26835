"""Webhook signatures both ways: valid, invalid, tampered body, replayed old timestamp."""

from __future__ import annotations

import hashlib
import hmac

from core.signatures import (
    body_hmac,
    streams_signature,
    verify_body_hmac,
    verify_hub_signature,
    verify_streams_signature,
)

SECRET = "whsec_test"
BODY = b'{"event":"message.inbound","text":"Hello"}'
NOW = 1_800_000_000


def test_streams_signature_is_hmac_of_timestamp_dot_body():
    header = streams_signature(SECRET, BODY, NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify_streams_signature(header, BODY, SECRET, NOW)


def test_streams_signature_refuses_wrong_secret_tampering_and_garbage():
    header = streams_signature(SECRET, BODY, NOW)
    assert not verify_streams_signature(header, BODY, "whsec_other", NOW)
    assert not verify_streams_signature(header, BODY.replace(b"Hello", b"Hallo"), SECRET, NOW)
    assert not verify_streams_signature(header.replace("t=", "t=1"), BODY, SECRET, NOW)
    for bad in (None, "", "v1=abc", f"t={NOW}", "t=x,v1=y", "t=1,v1=é", "a" * 5000):
        assert not verify_streams_signature(bad, BODY, SECRET, NOW)


def test_streams_signature_refuses_a_replayed_old_timestamp():
    old = streams_signature(SECRET, BODY, NOW - 301)
    assert not verify_streams_signature(old, BODY, SECRET, NOW)
    future = streams_signature(SECRET, BODY, NOW + 301)
    assert not verify_streams_signature(future, BODY, SECRET, NOW)
    assert verify_streams_signature(streams_signature(SECRET, BODY, NOW - 299), BODY, SECRET, NOW)


def test_streams_signature_accepts_any_of_several_v1_values():
    good = streams_signature(SECRET, BODY, NOW).split("v1=")[1]
    assert verify_streams_signature(f"t={NOW},v1={'0' * 64},v1={good}", BODY, SECRET, NOW)


def test_hub_signature():
    digest = hmac.new(b"app-secret", BODY, hashlib.sha256).hexdigest()
    assert verify_hub_signature(f"sha256={digest}", BODY, "app-secret")
    assert verify_hub_signature(f"sha256={digest.upper()}", BODY, "app-secret")
    assert not verify_hub_signature(digest, BODY, "app-secret"), "the prefix is required"
    assert not verify_hub_signature(f"sha256={digest}", BODY + b" ", "app-secret")
    assert not verify_hub_signature(f"sha256={digest}", BODY, "other")
    assert not verify_hub_signature(None, BODY, "app-secret")


def test_body_hmac_with_or_without_prefix():
    digest = body_hmac("s", BODY)
    assert verify_body_hmac(digest, BODY, "s") and verify_body_hmac(f"sha256={digest}", BODY, "s")
    assert not verify_body_hmac(digest, BODY + b"x", "s")
    assert not verify_body_hmac("", BODY, "s")
