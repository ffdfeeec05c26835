"""The operator console: server-rendered pages (Jinja2) under ``/console``, htmx for
interaction, Server-Sent Events for the realtime page. Its pages call the management API's own
functions, so every rule, error and account boundary is the API's."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from dispatcher.console.access import CONSOLE_PATH, SignInRequired
from dispatcher.console.csrf import CsrfRefused
from dispatcher.console.pages import panel, realtime, signin, streams
from dispatcher.console.rendering import build_templates, is_htmx, render
from dispatcher.console.response_headers import ConsoleResponseHeaders
from dispatcher.errors import ApiError, describe_validation_error

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = f"{CONSOLE_PATH}/static"


def install_console(app: FastAPI) -> None:
    """Mount the console's routes, static files, error pages and response headers on ``app``."""
    app.state.console_templates = build_templates()
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="console-static")
    for module in (signin, streams, panel, realtime):
        app.include_router(module.router)
    app.add_middleware(ConsoleResponseHeaders, prefix=CONSOLE_PATH, static_prefix=STATIC_PATH)

    @app.exception_handler(SignInRequired)
    async def _sign_in_required(request: Request, _exc: SignInRequired) -> Response:
        target = f"{CONSOLE_PATH}/signin"
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(CsrfRefused)
    async def _csrf_refused(request: Request, exc: CsrfRefused) -> Response:
        return error_page(request, 403, "Request refused", exc.message)

    # The API's errors stay JSON for the API; on console pages they are pages too.
    api_error_json = app.exception_handlers[ApiError]
    invalid_request_json = app.exception_handlers[RequestValidationError]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if not on_console(request):
            return await api_error_json(request, exc)
        title = "Not found" if exc.status == 404 else "Something went wrong"
        return error_page(request, exc.status, title, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if not on_console(request):
            return await invalid_request_json(request, exc)
        _field, message = describe_validation_error(dict((exc.errors() or [{}])[0]))
        return error_page(request, 422, "Invalid request", message)


def on_console(request: Request) -> bool:
    """Whether ``request`` is for the console (its errors are pages), not the API."""
    return request.url.path.startswith(CONSOLE_PATH + "/")


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    """A readable error: a modal for htmx requests (wherever they meant to swap), a page
    otherwise."""
    if is_htmx(request):
        response = render(request, "fragments/error.html", status, title=title, message=message)
        response.headers["HX-Retarget"] = "#modal"
        response.headers["HX-Reswap"] = "innerHTML"
        return response
    return render(request, "error.html", status, title=title, message=message)
