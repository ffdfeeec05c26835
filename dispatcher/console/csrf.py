"""CSRF protection for the console: a synchronizer token per session.

Every form carries the session's token in a hidden ``csrf_token`` field, and every htmx
request sends it as ``X-CSRF-Token`` (set once on ``<body hx-headers>``). A state-changing
request without the right token is refused with 403, whatever its cookie says. The sign-in
form has no session yet, so it uses a double-submit token: a random cookie that the form
must repeat.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request

HEADER = "x-csrf-token"
FIELD = "csrf_token"
SIGN_IN_COOKIE = "streams_console_signin"


class CsrfRefused(Exception):
    """The request did not carry the token of its session."""

    message = (
        "This form has expired or did not come from the console (its security token is "
        "missing or wrong). Reload the page and try again."
    )


def tokens_match(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


async def presented_token(request: Request) -> str | None:
    """The token the request carries: the header (htmx) or the form field (plain forms)."""
    header = request.headers.get(HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(FIELD)
        return value if isinstance(value, str) else None
    return None


async def require_token(request: Request, expected: str) -> None:
    """Raise ``CsrfRefused`` unless the request carries ``expected``."""
    if not tokens_match(expected, await presented_token(request)):
        raise CsrfRefused()


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(32)
