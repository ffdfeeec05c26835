"""One error shape for every failure: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ApiError(Exception):
    """Raise anywhere below a route to answer with the contract's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")


def json_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error body, declared as JSON explicitly.

    For routes whose success is not JSON (plain text, an event stream): FastAPI would file a
    ``model=`` response under the route's own media type, but errors are always JSON.
    """
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        status: {
            "description": "The error body of API.md",
            "content": {"application/json": {"schema": schema}},
        }
        for status in statuses
    }


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def field_path(location: Sequence[str | int]) -> str:
    """``("body", "messages", 3, "recipient_phone")`` → ``messages[3].recipient_phone``."""
    parts = [p for p in location if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def describe_validation_error(error: dict[str, Any]) -> tuple[str, str]:
    """A field path and a sentence for the first pydantic error."""
    location = field_path(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return location, f"{location or 'field'} is not a known field"
    if kind == "missing":
        return location, f"{location} is required"
    if kind == "uuid_parsing":
        # pydantic's message goes on to quote the offending character: say what is expected.
        return location, f"{location}: Input should be a valid UUID"
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    return location, f"{location}: {message}" if location else message


def invalid_field(exc: ValidationError, within: str = "") -> ApiError:
    """422 ``invalid_field`` for the first error of a model validated inside a route, the
    field named from the request body's root: ``within`` is where the model sits in the
    body (``"settings"``; empty for the body itself)."""
    location, message = describe_validation_error(exc.errors()[0])
    if within:
        message = f"{within}.{message}" if location else message
        location = f"{within}.{location}" if location else within
    return ApiError(422, "invalid_field", message, field=location or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(422, "invalid_json", "The body is not valid JSON.")
        if first.get("type") == "model_attributes_type":
            # Not an object where one is wanted: the body itself, or a field inside it.
            if location := field_path(first.get("loc", ())):
                return error_response(
                    422, "invalid_field", f"{location}: must be a JSON object", location
                )
            return error_response(422, "invalid_field", "The body must be a JSON object.")
        location, message = describe_validation_error(first)
        return error_response(422, "invalid_field", message, location or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers 400 "error parsing the body" for bytes that are not UTF-8; to
            # the contract that is a body that does not parse, like any other bad JSON.
            return error_response(422, "invalid_json", "The body is not valid JSON (UTF-8).")
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # The same 400 for json.loads' other ValueError: an integer of more digits than
            # Python converts (4,300).
            return error_response(
                422, "invalid_json", "The body's JSON has a number too long to read."
            )
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # The same 400, for JSON nested deeper than the parser's recursion limit.
            return error_response(422, "invalid_json", "The body's JSON is nested too deeply.")
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database_unavailable", error=str(exc.orig)[:200])
        return error_response(
            503,
            "database_unavailable",
            "The database is unavailable; nothing was stored. Retry shortly.",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await _database_down(_request, exc)  # type: ignore[arg-type]
        if isinstance(exc, DataError) and "NUL" in str(exc.orig):
            # PostgreSQL text cannot hold U+0000; psycopg refuses it before sending, so
            # nothing was written. Request bodies are checked before the route runs,
            # naming their field (schemas/request_body.py); this is for the rest (query
            # parameters such as the streams list's name filter).
            return error_response(
                422, "invalid_text", "Text may not contain the NUL character (U+0000)."
            )
        log.exception("database_error")
        return error_response(500, "internal_error", "An internal error occurred.")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error_type=type(exc).__name__)
        return error_response(500, "internal_error", "An internal error occurred.")
