"""Phone numbers: parse and normalise to E.164 with ``phonenumbers`` (Google's libphonenumber
port), because hand-written regexes accept numbers no carrier will route."""

from __future__ import annotations

import re

import phonenumbers

MAX_INPUT_LENGTH = 32
#: Digits and the separators people type. Letters are refused: libphonenumber would map
#: them to keypad digits ("+1-800-FLOWERS") or drop them as an extension, turning a typo
#: into somebody else's number.
_DIALLABLE = re.compile(r"\+[0-9][0-9 ().\-]*")


class InvalidPhoneNumber(ValueError):
    """The text is not a valid, routable phone number in international form."""


def to_e164(text: str) -> str:
    """Normalise ``text`` (which must carry its country code, ``+972...``) to E.164.

    Raises ``InvalidPhoneNumber`` with a reason a person can act on.
    """
    candidate = text.strip()
    if len(candidate) > MAX_INPUT_LENGTH:
        raise InvalidPhoneNumber(f"is longer than {MAX_INPUT_LENGTH} characters")
    if not candidate.startswith("+"):
        raise InvalidPhoneNumber(
            "must be in international format, starting with + and the country code"
        )
    if not _DIALLABLE.fullmatch(candidate):
        raise InvalidPhoneNumber(
            "may contain only digits, spaces, dashes, dots and brackets after the +"
        )
    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"cannot be parsed ({exc._msg})") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber("is not a valid number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_ALPHANUMERIC_SENDER_MAX = 11


def normalize_sender(text: str) -> str:
    """A sender is an E.164 number, a short code (3–8 digits) or an alphanumeric id.

    Alphanumeric ids are 1–11 characters of ASCII letters, digits and spaces, with at least
    one letter: what carriers accept in the SMS originator field.
    Raises ``ValueError`` with the reason.
    """
    candidate = text.strip()
    if candidate.startswith("+"):
        try:
            return to_e164(candidate)
        except InvalidPhoneNumber as exc:
            raise ValueError(f"sender number {exc}") from exc
    if candidate.isascii() and candidate.isdigit():
        if 3 <= len(candidate) <= 8:
            return candidate
        raise ValueError("a numeric sender must be a short code of 3 to 8 digits, or +E.164")
    if not candidate or len(candidate) > _ALPHANUMERIC_SENDER_MAX:
        raise ValueError(f"an alphanumeric sender has 1 to {_ALPHANUMERIC_SENDER_MAX} characters")
    if not candidate.isascii() or not all(c.isalnum() or c == " " for c in candidate):
        raise ValueError("an alphanumeric sender may use only ASCII letters, digits and spaces")
    if not any(c.isalpha() for c in candidate):
        raise ValueError("an alphanumeric sender needs at least one letter")
    return candidate
