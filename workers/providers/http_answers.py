"""Reading a provider's HTTP answer: ``Retry-After`` and a short, safe error text. Pure.

The error text is the carrier's own words and goes into ``messages.error_message``: it is
taken in as text PostgreSQL can store and a log line can show, with no control characters
(PostgreSQL refuses a NUL, and a refused write would leave the message unsettled) and no
lone surrogates (which UTF-8 cannot encode)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from core.logs import scrub

_MAX_RETRY_AFTER = 24 * 3600.0
_MAX_ERROR_TEXT = 200
#: Unicode categories no message text should carry: control characters, lone surrogates.
_UNSTORABLE = frozenset({"Cc", "Cs"})


def retry_after_seconds(header: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), capped at a day;
    None when absent or unreadable."""
    if not header:
        return None
    text = header.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), _MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), _MAX_RETRY_AFTER)


def error_text(answer: Any, fallback: str) -> str:
    """The provider's own words about an error, shortened, with anything secret-shaped
    masked and every control character or lone surrogate replaced (they end up in the
    message's ``error_message`` and in logs)."""
    candidates: list[Any] = []
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict):
            candidates += [error.get("message"), error.get("detail")]
        candidates += [error, answer.get("message"), answer.get("detail")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return scrub(_storable(candidate).strip())[:_MAX_ERROR_TEXT]
    return fallback


def _storable(text: str) -> str:
    """``text`` with each control character or lone surrogate replaced: whitespace by a
    space, anything else by U+FFFD, so a reader sees that something was there."""
    return "".join(
        (" " if char.isspace() else "\ufffd") if unicodedata.category(char) in _UNSTORABLE else char
        for char in text
    )
