"""Who may use a console page: the signed-in session behind the cookie, and, for anything that
changes state, the session's CSRF token too. One dependency per kind, used by every route."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from core.network import request_scheme
from dispatcher.auth import runtime_of
from dispatcher.console.csrf import require_token
from dispatcher.console.sessions import COOKIE_NAME, SignedIn, find_session

CONSOLE_PATH = "/console"


class SignInRequired(Exception):
    """No live session: pages redirect to the sign-in page."""


def is_https(request: Request) -> bool:
    """Whether the browser reached us over TLS (directly or through a trusted proxy)."""
    peer = request.client.host if request.client else None
    scheme = request_scheme(
        request.url.scheme,
        peer,
        request.headers.get("x-forwarded-proto"),
        request.app.state.trusted_proxies,
    )
    return scheme == "https"


def set_cookie(
    response: Response, request: Request, name: str, value: str, *, expires: datetime | None
) -> None:
    """A console cookie: HttpOnly, SameSite=Lax, Secure whenever the browser uses TLS."""
    response.set_cookie(
        name,
        value,
        expires=expires,
        path=CONSOLE_PATH,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path=CONSOLE_PATH, httponly=True, samesite="lax", secure=is_https(request)
    )


async def current_session(request: Request) -> SignedIn:
    """Dependency: the request's live session, or ``SignInRequired``."""
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie:
        raise SignInRequired()
    signed_in = await run_in_threadpool(find_session, runtime_of(request), cookie)
    if signed_in is None:
        raise SignInRequired()
    request.state.console_session = signed_in
    return signed_in


async def changing_session(
    request: Request, signed_in: Annotated[SignedIn, Depends(current_session)]
) -> SignedIn:
    """Dependency for state-changing requests: the live session, carrying its CSRF token
    (``CsrfRefused`` otherwise)."""
    await require_token(request, signed_in.csrf_token)
    return signed_in


Session = Annotated[SignedIn, Depends(current_session)]
ChangingSession = Annotated[SignedIn, Depends(changing_session)]
