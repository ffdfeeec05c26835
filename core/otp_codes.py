"""One-time codes: how they are made, checked, kept and hidden. Pure, apart from the key.

* Made with ``secrets``: digits, or an alphanumeric alphabet without the characters people
  misread (0/O, 1/I/L), so a code read off a lock screen is typed right the first time.
* Compared case-insensitively: a code is normalised (trimmed, upper-cased) before hashing.
* Kept only as a keyed HMAC-SHA256 over (stream, recipient, code). A plain SHA-256 of a
  5-digit code is reversed by trying all 100,000 of them; the HMAC key (derived from
  ``STREAMS_SECRET_KEY`` with HKDF, with its own ``info`` so it is independent of the
  ``SecretBox`` key) never sits in the database. Binding the stream and recipient means a
  digest copied to another row verifies nothing there.
* Masked in every text we keep or show: ``Your code is *****``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.streams import OTP_DEFAULTS
from schemas.templates import (
    InvalidVariable,
    MissingVariable,
    TemplateSyntaxError,
    checked_variables,
    render_template,
)

Alphabet = Literal["digits", "alphanumeric"]
CodeMode = Literal["generate", "customer_code", "full_text"]

DIGITS = "0123456789"
#: Upper-case letters and digits without 0, O, 1, I and L.
UNAMBIGUOUS_ALPHANUMERIC = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_ALPHABETS: dict[Alphabet, str] = {"digits": DIGITS, "alphanumeric": UNAMBIGUOUS_ALPHANUMERIC}
MASK_CHARACTER = "*"


class InvalidCode(ValueError):
    """A code given by the client breaks the stream's rules; the message says which rule
    (never what the code was)."""


def generate_code(length: int, alphabet: Alphabet) -> str:
    """A fresh code of ``length`` characters drawn uniformly with ``secrets``."""
    characters = _ALPHABETS[alphabet]
    return "".join(secrets.choice(characters) for _ in range(length))


def normalize_code(code: str) -> str:
    """The form a code is hashed in: surrounding spaces dropped, letters upper-cased."""
    return code.strip().upper()


def check_client_code(code: str, length: int, alphabet: Alphabet) -> str:
    """A code the client made (``customer_code`` and ``full_text`` modes), normalised.

    It must have exactly ``length`` characters: ASCII digits for ``digits``; ASCII letters
    and digits for ``alphanumeric`` (the client's own codes may use any of them; only codes
    we generate avoid the ambiguous ones). Raises ``InvalidCode``.
    """
    normalised = normalize_code(code)
    if len(normalised) != length:
        raise InvalidCode(f"must be exactly {length} characters long")
    if alphabet == "digits":
        if not (normalised.isascii() and normalised.isdigit()):
            raise InvalidCode("must contain digits only (the stream's alphabet is digits)")
    elif not (normalised.isascii() and normalised.isalnum()):
        raise InvalidCode("must contain ASCII letters and digits only")
    return normalised


def mask_code(text: str, code: str) -> str:
    """``text`` with every occurrence of ``code`` replaced by as many ``*``."""
    if not code:
        return text
    return text.replace(code, MASK_CHARACTER * len(code))


class CodeHasher:
    """Keyed digests of one-time codes."""

    def __init__(self, secret_key: str) -> None:
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"streams/otp-code/v1"
        ).derive(secret_key.encode("utf-8"))

    def digest(self, stream_id: uuid.UUID, recipient: str, code: str) -> str:
        """Hex HMAC-SHA256 of the normalised code, bound to its stream and recipient."""
        message = b"\x00".join(
            (stream_id.bytes, recipient.encode("utf-8"), normalize_code(code).encode("utf-8"))
        )
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def matches(self, stored: str, stream_id: uuid.UUID, recipient: str, code: str) -> bool:
        """Constant-time comparison of a stored digest with the digest of ``code``."""
        presented = self.digest(stream_id, recipient, code)
        return hmac.compare_digest(stored.encode("ascii"), presented.encode("ascii"))


# ---------------------------------------------------------------- the stream's rules


@dataclass(frozen=True, slots=True)
class OtpRules:
    """An OTP stream's code settings, defaults filled in."""

    code_mode: CodeMode
    code_length: int
    alphabet: Alphabet
    ttl_seconds: int
    max_failures: int
    resend_cooldown_seconds: int
    template: str
    codes_per_recipient_per_hour: int
    codes_per_recipient_scope: Literal["account", "stream"]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> OtpRules:
        merged = {**OTP_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
        return cls(**{name: merged[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class ComposedCode:
    """What one send stores and sends: the code, the text that carries it, and that text
    with the code masked (what every reader sees)."""

    code: str
    text: str
    masked_text: str


class OtpInputError(ValueError):
    """A send body breaks the stream's rules: ``code`` names the error, ``field`` the field
    (``None`` when the stream's own settings are at fault)."""

    def __init__(self, code: str, message: str, field: str | None, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


#: Placeholders we fill ourselves; a send's variables may not set them.
BUILT_IN_VARIABLES = ("code", "ttl_minutes")


def compose_code_message(
    rules: OtpRules,
    *,
    code: str | None,
    message_content: str | None,
    variables: Mapping[str, Any] | None,
    max_length: int,
) -> ComposedCode:
    """The code and text of one send under ``rules``. Raises ``OtpInputError``.

    * ``generate``: we make the code; the client must not send ``code`` or
      ``message_content``.
    * ``customer_code``: the client's ``code``, checked against the length and alphabet.
    * ``full_text``: the client's ``code`` and its whole ``message_content``, which must
      contain that code (we need the code to verify it, and we check it is really in the
      text so a typo cannot send one code and verify another).

    In the first two modes the stream's template is rendered with ``variables`` plus
    ``{code}`` and ``{ttl_minutes}``.
    """
    mode = rules.code_mode
    if mode == "generate" and code is not None:
        raise OtpInputError(
            "code_not_allowed", "code: this stream generates its codes; leave code out", "code"
        )
    if mode != "full_text" and message_content is not None:
        raise OtpInputError(
            "invalid_field",
            "message_content is for streams in full_text mode; this stream uses its template",
            "message_content",
        )
    if mode != "generate" and code is None:
        raise OtpInputError("missing_code", f"code is required in {mode} mode", "code")
    if mode == "generate":
        chosen = generate_code(rules.code_length, rules.alphabet)
    else:
        try:
            chosen = check_client_code(code or "", rules.code_length, rules.alphabet)
        except InvalidCode as exc:
            raise OtpInputError("invalid_code", f"code {exc}", "code") from None

    if mode == "full_text":
        if variables is not None:
            raise OtpInputError(
                "invalid_field",
                "variables: full_text mode sends message_content as is",
                "variables",
            )
        if message_content is None or not message_content.strip():
            raise OtpInputError(
                "missing_content",
                "message_content is required in full_text mode",
                "message_content",
            )
        given = (code or "").strip()
        if given not in message_content:
            raise OtpInputError(
                "code_not_in_text", "message_content must contain the code", "message_content"
            )
        masked = mask_code(mask_code(message_content, given), chosen)
        return ComposedCode(chosen, message_content, masked)

    try:
        values = checked_variables(variables or {})
    except InvalidVariable as exc:
        field = f"variables.{exc.name}" if exc.name else "variables"
        raise OtpInputError("invalid_variable", f"{field} {exc.reason}", field) from None
    for name in BUILT_IN_VARIABLES:
        if name in values:
            raise OtpInputError(
                "reserved_variable",
                f"variables.{name} is filled in by Streams",
                f"variables.{name}",
            )
    values["code"] = chosen
    values["ttl_minutes"] = str(math.ceil(rules.ttl_seconds / 60))
    try:
        text = render_template(rules.template, values)
    except MissingVariable as exc:
        field = f"variables.{exc.name}"
        raise OtpInputError(
            "missing_variable", f"{field} is required by the stream's template", field
        ) from None
    except TemplateSyntaxError as exc:  # saved before templates were checked
        raise OtpInputError(
            "invalid_template", f"The stream's template is invalid: {exc}", None, status=409
        ) from None
    if len(text) > max_length:
        raise OtpInputError(
            "content_too_long",
            f"the text has {len(text)} characters once rendered; at most {max_length}",
            "variables",
        )
    return ComposedCode(chosen, text, mask_code(text, chosen))
