"""Keys and tokens (invariant 3): 256 random bits, found by digest, compared in constant time,
kept encrypted at rest."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest

from core.credentials import (
    ACCOUNT_KEY_PREFIX,
    STREAM_TOKEN_PREFIX,
    SecretBox,
    digest,
    digests_match,
    new_account_key,
    new_stream_token,
    new_webhook_secret,
)

# 256 bits in url-safe base64 without padding is ceil(256 / 6) = 43 characters.
MAKERS = [
    pytest.param(new_stream_token, "st_", id="stream_token"),
    pytest.param(new_account_key, "sk_", id="account_key"),
    pytest.param(new_webhook_secret, "whsec_", id="webhook_secret"),
]


def test_prefixes() -> None:
    assert (STREAM_TOKEN_PREFIX, ACCOUNT_KEY_PREFIX) == ("st_", "sk_")


@pytest.mark.parametrize(("make", "prefix"), MAKERS)
def test_token_has_prefix_and_at_least_256_random_bits(
    make: Callable[[], str], prefix: str
) -> None:
    value = make()
    assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_-]{43,}", value), value


@pytest.mark.parametrize(("make", "prefix"), MAKERS)
def test_tokens_are_unique_across_many_draws(make: Callable[[], str], prefix: str) -> None:
    draws = [make() for _ in range(2_000)]
    assert len(set(draws)) == 2_000
    # no shared fixed part after the prefix either
    assert len({value[len(prefix) : len(prefix) + 8] for value in draws}) == 2_000


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("st_שלום", hashlib.sha256("st_שלום".encode()).hexdigest()),
    ],
)
def test_digest_is_hex_sha256(secret: str, expected: str) -> None:
    assert digest(secret) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", digest(secret))


def test_digest_of_a_token_does_not_contain_it() -> None:
    token = new_stream_token()
    assert token not in digest(token)
    assert token[3:] not in digest(token)


@pytest.mark.parametrize(
    ("expected", "presented", "match"),
    [
        (digest("st_right"), "st_right", True),
        (digest("st_right"), "st_wrong", False),
        (digest("st_right"), "st_right ", False),
        (digest("st_right"), "ST_RIGHT", False),
        (digest("st_right"), "", False),
        (digest("st_right").upper(), "st_right", False),
        ("st_right", "st_right", False),  # a plain-text value is not a digest
        (None, "st_right", False),
        (None, "", False),
    ],
)
def test_digests_match(expected: str | None, presented: str, match: bool) -> None:
    assert digests_match(expected, presented) is match


@pytest.mark.parametrize(
    "plaintext",
    ["st_" + "a" * 43, "", "provider password: p@ss w0rd", "שלום \N{GRINNING FACE}"],
)
def test_secret_box_round_trips(plaintext: str) -> None:
    box = SecretBox("test-secret-key")
    sealed = box.seal(plaintext)
    assert isinstance(sealed, str)
    assert box.open(sealed) == plaintext
    # another box built from the same secret key opens it too (another process, a restart)
    assert SecretBox("test-secret-key").open(sealed) == plaintext


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    token = new_stream_token()
    sealed = SecretBox("test-secret-key").seal(token)
    assert token not in sealed
    assert token[3:] not in sealed
    assert token[3:20] not in sealed


def test_sealing_twice_gives_different_ciphertexts() -> None:
    box = SecretBox("test-secret-key")
    first, second = box.seal("st_same"), box.seal("st_same")
    assert first != second
    assert box.open(first) == box.open(second) == "st_same"


@pytest.mark.parametrize("other_key", ["another-secret-key", "test-secret-key ", "TEST-SECRET-KEY"])
def test_box_with_another_secret_key_cannot_open(other_key: str) -> None:
    sealed = SecretBox("test-secret-key").seal("st_secret")
    with pytest.raises(ValueError, match="ciphertext was not sealed with this secret key"):
        SecretBox(other_key).open(sealed)


def test_tampered_ciphertext_is_refused() -> None:
    box = SecretBox("test-secret-key")
    sealed = box.seal("st_secret")
    flipped = sealed[:-5] + ("A" if sealed[-5] != "A" else "B") + sealed[-4:]
    with pytest.raises(ValueError, match="ciphertext was not sealed with this secret key"):
        box.open(flipped)


@pytest.mark.parametrize("ciphertext", ["", "garbage", "st_" + "a" * 43, "gAAAAA"])
def test_garbage_ciphertext_is_refused(ciphertext: str) -> None:
    with pytest.raises(ValueError, match="ciphertext was not sealed with this secret key"):
        SecretBox("test-secret-key").open(ciphertext)


def test_non_ascii_ciphertext_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        SecretBox("test-secret-key").open("gAAAAé")
