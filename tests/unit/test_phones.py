"""Phone numbers and senders: E.164 normalisation and the originator rules carriers accept."""

from __future__ import annotations

import pytest

from core.phones import MAX_INPUT_LENGTH, InvalidPhoneNumber, normalize_sender, to_e164


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+972 52-426-5292", "+972524265292"),
        ("+972524265292", "+972524265292"),
        ("  +972-52-426-5292\n", "+972524265292"),
        ("+972 (52) 426 5292", "+972524265292"),
        ("+972.52.426.5292", "+972524265292"),
        ("+1 650 253 0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_to_e164_normalises(text: str, expected: str) -> None:
    assert to_e164(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("972524265292", "must be in international format"),
        ("0524265292", "must be in international format"),
        ("", "must be in international format"),
        ("+1 555 0100", "is not a valid number for its country"),
        ("+9725242652920000", "is not a valid number for its country"),
        ("+972 52", "is not a valid number for its country"),
        ("+972 52-426-52G2", "may contain only digits"),
        ("+0972524265292", "cannot be parsed"),
        ("+", "may contain only digits"),
        ("+972 52-426-5292" + " " * 17, None),  # stripped: not too long, valid
        ("+972 52-426-5292" + "0" * 17, f"is longer than {MAX_INPUT_LENGTH} characters"),
        ("+" + "9" * 40, f"is longer than {MAX_INPUT_LENGTH} characters"),
        ("+９７２５２４２６５２９２", "may contain only digits"),  # fullwidth
        ("+٩٧٢٥٢٤٢٦٥٢٩٢", "may contain only digits"),  # Arabic-Indic
        ("+972\N{NO-BREAK SPACE}524265292", "may contain only digits"),
    ],
)
def test_to_e164_rejects(text: str, reason: str | None) -> None:
    if reason is None:
        assert to_e164(text) == "+972524265292"
        return
    with pytest.raises(InvalidPhoneNumber, match=reason):
        to_e164(text)


def test_invalid_phone_number_is_a_value_error() -> None:
    assert issubclass(InvalidPhoneNumber, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "+1 650 253 OOOO",  # letter O for zero -> +16502536666, someone else
        "+1-800-FLOWERS",  # -> +18003569377
        "+972 52-ABC-5292",  # -> +972522225292
        "+972524265292 ext. 123",  # extension silently dropped
        "+972524265292x1",
    ],
)
def test_to_e164_rejects_letters(text: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_e164(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # alphanumeric ids: 1-11 ASCII letters, digits and spaces, with a letter
        ("A", "A"),
        ("Acme", "Acme"),
        ("Acme Corp", "Acme Corp"),
        ("ABCDEFGHIJK", "ABCDEFGHIJK"),
        ("  Acme  ", "Acme"),
        ("Shop24", "Shop24"),
        ("24 7 Shop", "24 7 Shop"),
        # short codes: 3-8 digits
        ("123", "123"),
        ("0123", "0123"),
        ("12345678", "12345678"),
        # E.164
        ("+972 52-426-5292", "+972524265292"),
    ],
)
def test_normalize_sender_accepts(text: str, expected: str) -> None:
    assert normalize_sender(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ABCDEFGHIJKL", "has 1 to 11 characters"),
        ("Acme Corp Ltd", "has 1 to 11 characters"),
        ("", "has 1 to 11 characters"),
        ("   ", "has 1 to 11 characters"),
        ("12", "short code of 3 to 8 digits"),
        ("123456789", "short code of 3 to 8 digits"),
        ("972524265292", "short code of 3 to 8 digits"),
        ("1234 5678", "needs at least one letter"),
        ("Acmé", "only ASCII letters, digits and spaces"),
        ("ＡＣＭＥ", "only ASCII letters, digits and spaces"),  # fullwidth letters
        ("１２３", "only ASCII letters, digits and spaces"),  # fullwidth digits
        ("Acme!", "only ASCII letters, digits and spaces"),
        ("Acme-Co", "only ASCII letters, digits and spaces"),
        ("Acme_Co", "only ASCII letters, digits and spaces"),
        ("Ac\tme", "only ASCII letters, digits and spaces"),
        ("+1 555 0100", "sender number is not a valid number for its country"),
        ("+972", "sender number"),
    ],
)
def test_normalize_sender_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_sender(text)
