"""Sign-in with an account key, and sign-out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import structlog
from fastapi import APIRouter, Form, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from dispatcher.auth import runtime_of
from dispatcher.console.access import (
    CONSOLE_PATH,
    ChangingSession,
    SignInRequired,
    clear_cookie,
    current_session,
    set_cookie,
)
from dispatcher.console.csrf import SIGN_IN_COOKIE, CsrfRefused, new_sign_in_token, tokens_match
from dispatcher.console.rendering import FormErrors, render
from dispatcher.console.sessions import COOKIE_NAME, sign_in, sign_out

router = APIRouter(prefix=CONSOLE_PATH, include_in_schema=False)
log = structlog.get_logger(__name__)


@router.get("")
@router.get("/")
def console_home() -> RedirectResponse:
    return RedirectResponse(f"{CONSOLE_PATH}/streams", status_code=303)


def _sign_in_page(request: Request, errors: FormErrors, status_code: int = 200) -> Response:
    # Reused while it lasts, so two sign-in tabs do not invalidate each other.
    presented = request.cookies.get(SIGN_IN_COOKIE, "")
    token = presented if 32 <= len(presented) <= 64 else new_sign_in_token()
    response = render(request, "signin.html", status_code, sign_in_token=token, errors=errors)
    set_cookie(response, request, SIGN_IN_COOKIE, token, expires=None)
    return response


@router.get("/signin")
async def sign_in_page(request: Request) -> Response:
    try:
        await current_session(request)
    except SignInRequired:
        return _sign_in_page(request, FormErrors())
    return RedirectResponse(f"{CONSOLE_PATH}/streams", status_code=303)


@router.post("/signin")
async def sign_in_submit(
    request: Request,
    account_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Double-submit check (no session yet), then the key; a session cookie on success."""
    if not tokens_match(request.cookies.get(SIGN_IN_COOKIE), csrf_token):
        raise CsrfRefused()
    runtime = runtime_of(request)
    lifetime = timedelta(hours=runtime.settings.console_session_hours)
    key = account_key.strip()
    opened = await run_in_threadpool(sign_in, runtime, key, lifetime) if key else None
    if opened is None:
        errors = FormErrors()
        errors.add(
            "account_key",
            "Enter your account key." if not key else "This account key is not valid.",
        )
        return _sign_in_page(request, errors, status_code=401)
    log.info("console_signed_in")
    response = RedirectResponse(f"{CONSOLE_PATH}/streams", status_code=303)
    set_cookie(response, request, COOKIE_NAME, opened.cookie_value, expires=opened.expires_at)
    clear_cookie(response, request, SIGN_IN_COOKIE)
    return response


@router.post("/signout")
async def sign_out_submit(request: Request, _signed_in: ChangingSession) -> Response:
    await run_in_threadpool(sign_out, runtime_of(request), request.cookies[COOKIE_NAME])
    log.info("console_signed_out")
    response = RedirectResponse(f"{CONSOLE_PATH}/signin", status_code=303)
    clear_cookie(response, request, COOKIE_NAME)
    return response
