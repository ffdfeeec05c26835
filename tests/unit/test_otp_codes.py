"""OTP code rules (``core.otp_codes``): generation, client codes, masking, the keyed digest,
and composing a send's text in each code mode. Pure (apart from ``secrets``)."""

from __future__ import annotations

import base64
import uuid
from collections import Counter

import pytest
from cryptography.fernet import Fernet, InvalidToken

from core.credentials import SecretBox
from core.otp_codes import (
    DIGITS,
    UNAMBIGUOUS_ALPHANUMERIC,
    CodeHasher,
    InvalidCode,
    OtpInputError,
    OtpRules,
    check_client_code,
    compose_code_message,
    generate_code,
    mask_code,
    normalize_code,
)
from core.sealed_bodies import hidden_parts, without_hidden
from schemas.streams import OTP_DEFAULTS

STREAM = uuid.UUID("8a7c1f0e-0000-4000-8000-000000000001")
PHONE = "+972524265292"


def rules(**changes) -> OtpRules:  # type: ignore[no-untyped-def]
    return OtpRules.from_settings({**OTP_DEFAULTS, **changes})


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("length", [4, 5, 10])
def test_generated_digits_have_the_length(length: int) -> None:
    for _ in range(50):
        code = generate_code(length, "digits")
        assert len(code) == length and set(code) <= set(DIGITS)


def test_the_alphanumeric_alphabet_has_no_ambiguous_characters() -> None:
    assert not set("0O1IL") & set(UNAMBIGUOUS_ALPHANUMERIC)
    assert len(set(UNAMBIGUOUS_ALPHANUMERIC)) == len(UNAMBIGUOUS_ALPHANUMERIC) == 31
    assert UNAMBIGUOUS_ALPHANUMERIC.upper() == UNAMBIGUOUS_ALPHANUMERIC


def test_generated_codes_use_the_whole_alphabet_evenly() -> None:
    """Every character turns up, none wildly more often than another (a biased generator,
    e.g. ``random`` modulo, or a fixed prefix, would not pass)."""
    seen = Counter("".join(generate_code(10, "alphanumeric") for _ in range(3_000)))
    assert set(seen) == set(UNAMBIGUOUS_ALPHANUMERIC)
    expected = 30_000 / len(UNAMBIGUOUS_ALPHANUMERIC)
    assert all(0.8 * expected < n < 1.2 * expected for n in seen.values()), seen


# ---------------------------------------------------------------- client codes


@pytest.mark.parametrize(
    ("code", "length", "alphabet", "expected"),
    [
        ("48213", 5, "digits", "48213"),
        (" 48213 ", 5, "digits", "48213"),
        ("ab1Cd", 5, "alphanumeric", "AB1CD"),
        ("0O1Il", 5, "alphanumeric", "0O1IL"),
        ("0000000000", 10, "digits", "0000000000"),
    ],
)
def test_client_codes_are_normalised(code: str, length: int, alphabet, expected: str) -> None:
    assert check_client_code(code, length, alphabet) == expected


@pytest.mark.parametrize(
    ("code", "length", "alphabet"),
    [
        ("4821", 5, "digits"),
        ("482134", 5, "digits"),
        ("48a13", 5, "digits"),
        ("４８２１３", 5, "digits"),  # full-width digits
        ("4821³", 5, "digits"),
        ("48-13", 5, "alphanumeric"),
        ("ab cd", 5, "alphanumeric"),
        ("abcdé", 5, "alphanumeric"),
        ("", 5, "digits"),
    ],
)
def test_bad_client_codes_are_refused_without_echoing_them(code, length, alphabet) -> None:
    with pytest.raises(InvalidCode) as caught:
        check_client_code(code, length, alphabet)
    assert code.strip() not in str(caught.value) or not code.strip()


def test_normalisation_is_trim_and_upper_case() -> None:
    assert normalize_code("  aBc12\t") == "ABC12"


# ---------------------------------------------------------------- masking and digests


@pytest.mark.parametrize(
    ("text", "code", "masked"),
    [
        ("Your code is 48213", "48213", "Your code is *****"),
        ("48213 / 48213", "48213", "***** / *****"),
        ("No code here", "48213", "No code here"),
        ("anything", "", "anything"),
    ],
)
def test_masking_hides_every_occurrence(text: str, code: str, masked: str) -> None:
    assert mask_code(text, code) == masked
    assert len(mask_code(text, code)) == len(text)


def test_the_digest_is_keyed_and_bound_to_stream_and_recipient() -> None:
    hasher = CodeHasher("key-one")
    digest = hasher.digest(STREAM, PHONE, "48213")
    assert len(digest) == 64 and "48213" not in digest
    assert hasher.digest(STREAM, PHONE, "48213") == digest
    assert hasher.digest(STREAM, PHONE, "48214") != digest
    assert hasher.digest(uuid.uuid4(), PHONE, "48213") != digest
    assert hasher.digest(STREAM, "+972524265293", "48213") != digest
    assert CodeHasher("key-two").digest(STREAM, PHONE, "48213") != digest
    assert hasher.digest(STREAM, PHONE, " ab12c ") == hasher.digest(STREAM, PHONE, "AB12C")


def test_matches_compares_the_presented_code() -> None:
    hasher = CodeHasher("key-one")
    stored = hasher.digest(STREAM, PHONE, "48213")
    assert hasher.matches(stored, STREAM, PHONE, "48213")
    assert not hasher.matches(stored, STREAM, PHONE, "48212")
    assert not hasher.matches(stored, STREAM, PHONE, "")


def test_the_digest_key_is_not_the_secret_box_key() -> None:
    """HKDF with its own ``info``: the code-digest key cannot open what the box sealed.

    Checked through Fernet's public interface, so it holds whatever Fernet keeps inside.
    """
    hasher, box = CodeHasher("same-secret"), SecretBox("same-secret")
    sealed = box.seal("provider-password")
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(hasher._key)).decrypt(sealed.encode("ascii"))


# ---------------------------------------------------------------- composing a send


def test_rules_fill_in_defaults_for_missing_or_null_settings() -> None:
    assert OtpRules.from_settings({"code_length": 8, "template": None}) == rules(code_length=8)
    assert OtpRules.from_settings({}).codes_per_recipient_per_hour == 5


def test_generate_mode_renders_the_template() -> None:
    composed = compose_code_message(
        rules(template="{app}: {code} ({ttl_minutes} min)", ttl_seconds=61),
        code=None,
        message_content=None,
        variables={"app": "Acme"},
        max_length=1600,
    )
    assert composed.text == f"Acme: {composed.code} (2 min)"
    assert composed.masked_text == "Acme: ***** (2 min)"


def test_full_text_mode_masks_the_code_as_written_and_normalised() -> None:
    composed = compose_code_message(
        rules(code_mode="full_text", alphabet="alphanumeric"),
        code="ab12c",
        message_content="ab12c or AB12C",
        variables=None,
        max_length=1600,
    )
    assert (composed.code, composed.masked_text) == ("AB12C", "***** or *****")


def test_a_template_saved_before_the_rules_is_a_409_without_a_field() -> None:
    with pytest.raises(OtpInputError) as caught:
        compose_code_message(
            rules(template="Code {code} {"),
            code=None,
            message_content=None,
            variables=None,
            max_length=1600,
        )
    assert (caught.value.status, caught.value.code, caught.value.field) == (
        409,
        "invalid_template",
        None,
    )


def test_what_a_mask_hides_is_masked_out_of_other_words():
    """``core.sealed_bodies``: the parts a masked body hides (every code in it) are masked
    out of a carrier's words, longest first; a copy that does not line up hides it all."""
    text = "Acme: 4821 is your code, or use A1B2C3D4."
    hidden = hidden_parts(text, mask_code(mask_code(text, "4821"), "A1B2C3D4"))
    assert hidden == {"4821", "A1B2C3D4"}
    words = "refused: 'Acme: 4821 is your code, or use A1B2C3D4.' (4821)"
    assert without_hidden(words, hidden) == (
        "refused: 'Acme: **** is your code, or use ********.' (****)"
    )
    assert hidden_parts("Your code is 1234", "Your code is ***") == {"Your code is 1234"}
    assert without_hidden("no code here", frozenset()) == "no code here"
