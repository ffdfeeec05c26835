"""The Streams page: the table with its filters and pages, the three-dot actions, and the
create-stream steps. Every action calls the management API's own function."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from core.stream_rules import REQUIRED_STEPS
from dispatcher.auth import runtime_of
from dispatcher.console.access import CONSOLE_PATH, ChangingSession, Session
from dispatcher.console.forms import split_tags, stream_create_body, whatsapp_body
from dispatcher.console.rendering import (
    STREAMS_CHANGED,
    FormErrors,
    is_htmx,
    relative_time,
    render,
)
from dispatcher.errors import ApiError
from dispatcher.query_params import NameFilter, QueryText
from dispatcher.routes import streams as streams_api
from dispatcher.routes import whatsapp as whatsapp_api
from schemas.enums import StreamStatus, StreamType
from schemas.streams import (
    CALLBACK_SETTINGS,
    OTP_ONLY_SETTINGS,
    RestrictBody,
    StreamCreate,
    StreamOut,
    TestSend,
    TokenReset,
)
from schemas.whatsapp import WhatsAppSetup

router = APIRouter(prefix=f"{CONSOLE_PATH}/streams", include_in_schema=False)
log = structlog.get_logger(__name__)

PER_PAGE = 10

#: The create steps of each type, in order: (key, title). Each step is a section of one
#: form, so "Save as draft" on any step sends what is filled so far.
CREATE_STEPS: dict[StreamType, tuple[tuple[str, str], ...]] = {
    StreamType.marketing: (("details", "Details"), ("sender", "Sender"), ("limits", "Limits")),
    StreamType.transactional: (
        ("details", "Details"),
        ("sender", "Sender"),
        ("limits", "Limits"),
    ),
    StreamType.otp: (
        ("details", "Details"),
        ("sender", "Sender"),
        ("codes", "Code settings"),
        ("limits", "Limits"),
    ),
    StreamType.two_way: (
        ("details", "Details"),
        ("sender", "Sender"),
        ("callbacks", "Inbound & callbacks"),
        ("limits", "Limits"),
    ),
    StreamType.whatsapp: (
        ("details", "Details"),
        ("whatsapp", "WhatsApp account"),
        ("callbacks", "Callbacks"),
        ("limits", "Limits"),
    ),
}
TYPE_BLURBS = {
    StreamType.marketing: "Campaigns and promotions. Quiet hours and opt-out apply.",
    StreamType.transactional: "Order updates, receipts, alerts. Event templates.",
    StreamType.otp: "Login and verification codes: we generate, send and verify them.",
    StreamType.two_way: "Conversations: inbound replies are posted to your callback URL.",
    StreamType.whatsapp: "WhatsApp Business: templates, media and replies via Meta's Cloud API.",
}


# ---------------------------------------------------------------- the table


def _filters(name: str | None, status: str | None, tag: str | None) -> dict[str, str]:
    return {k: v for k, v in (("name", name), ("status", status), ("tag", tag)) if v}


def _table_context(
    request: Request,
    account_id: uuid.UUID,
    name: str | None,
    status: str | None,
    tag: str | None,
    page: int,
) -> dict[str, Any]:
    errors = FormErrors()
    status_filter: StreamStatus | None = None
    if status:
        try:
            status_filter = StreamStatus(status)
        except ValueError:
            errors.add("status", f"{status!r} is not a stream status")
    tags = split_tags(tag)
    result = streams_api.list_streams(
        request,
        account_id,
        name=name or None,
        status=status_filter,
        tag=tags or None,
        page=page,
        per_page=PER_PAGE,
    )
    pages = max(1, -(-result.total // PER_PAGE))
    filters = _filters(name, status, tag)
    now = runtime_of(request).clock()
    return {
        "page_result": result,
        "pages": pages,
        "filters": filters,
        "errors": errors,
        "now": now,
        "relative_time": relative_time,
        "page_url": lambda number: "?" + urlencode({**filters, "page": number}),
    }


Filter = Annotated[QueryText | None, Query(max_length=200)]
Page = Annotated[int, Query(ge=1, le=100_000)]


@router.get("")
def streams_page(
    request: Request,
    signed_in: Session,
    name: NameFilter = None,
    status: Filter = None,
    tag: Filter = None,
    page: Page = 1,
    panel: uuid.UUID | None = None,
) -> Response:
    """The table; with ``panel`` (a stream id, as the create form's redirect sends) that
    stream's panel opens too. A malformed ``panel`` is refused like any bad query parameter."""
    context = _table_context(request, signed_in.account_id, name, status, tag, page)
    return render(request, "streams.html", open_panel=panel, **context)


@router.get("/table")
def streams_table(
    request: Request,
    signed_in: Session,
    name: NameFilter = None,
    status: Filter = None,
    tag: Filter = None,
    page: Page = 1,
) -> Response:
    """The table alone, for filters, pages and refreshes; the address bar follows."""
    context = _table_context(request, signed_in.account_id, name, status, tag, page)
    query = urlencode({**context["filters"], **({"page": page} if page > 1 else {})})
    response = render(request, "fragments/streams_table.html", **context)
    response.headers["HX-Push-Url"] = f"{CONSOLE_PATH}/streams" + (f"?{query}" if query else "")
    return response


# ---------------------------------------------------------------- actions


def _stream(request: Request, account_id: uuid.UUID, stream_id: str) -> StreamOut:
    return streams_api.get_stream(stream_id, request, account_id)


def _done(request: Request, message: str) -> Response:
    """Close the modal, show ``message``, and have the table refresh itself."""
    response = render(request, "fragments/done.html", message=message)
    response.headers.update(STREAMS_CHANGED)
    return response


def _confirm(
    request: Request, stream: StreamOut, action: str, *, title: str, text: str, button: str
) -> Response:
    """The confirmation modal whose button posts to the stream's ``action``."""
    return render(
        request,
        "fragments/confirm.html",
        stream=stream,
        title=title,
        text=text,
        action=f"{CONSOLE_PATH}/streams/{stream.id}/{action}",
        button=button,
    )


@router.get("/{stream_id}/token")
def token_modal(request: Request, signed_in: Session, stream_id: str) -> Response:
    stream = _stream(request, signed_in.account_id, stream_id)
    token = streams_api.show_token(stream_id, request, signed_in.account_id).token
    return render(request, "fragments/token.html", stream=stream, token=token, fresh=False)


@router.get("/{stream_id}/reset-token")
def reset_token_confirm(request: Request, signed_in: Session, stream_id: str) -> Response:
    return _confirm(
        request,
        _stream(request, signed_in.account_id, stream_id),
        "reset-token",
        title="Reset the token?",
        text="The current token stops working at once. Every service that sends through "
        "this stream needs the new one.",
        button="Reset token",
    )


@router.post("/{stream_id}/reset-token")
def reset_token(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    token = streams_api.reset_token(stream_id, request, signed_in.account_id, TokenReset()).token
    stream = _stream(request, signed_in.account_id, stream_id)
    response = render(request, "fragments/token.html", stream=stream, token=token, fresh=True)
    response.headers.update(STREAMS_CHANGED)
    return response


@router.get("/{stream_id}/test")
def test_form(request: Request, signed_in: Session, stream_id: str) -> Response:
    stream = _stream(request, signed_in.account_id, stream_id)
    return render(request, "fragments/test.html", stream=stream, values={}, result=None)


@router.post("/{stream_id}/test")
async def test_send(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    """Send one test message through the real send path (stored, queued, delivered by the
    workers), as the stream's token would."""
    form = await request.form()
    values = {k: str(v) for k, v in form.items()}
    return await run_in_threadpool(_test_send, request, signed_in.account_id, stream_id, values)


def _test_send(
    request: Request, account_id: uuid.UUID, stream_id: str, values: dict[str, str]
) -> Response:
    stream = _stream(request, account_id, stream_id)
    try:
        body = TestSend(
            recipient_phone=values.get("recipient_phone", "").strip(),
            message_content=values.get("message_content", "").strip() or None,
        )
        result = streams_api.test_stream(stream_id, body, request, account_id)
    except (ApiError, ValidationError) as exc:
        errors = FormErrors.of(exc)  # a field-less refusal (draft, disabled) shows on top
        return render(
            request,
            "fragments/test.html",
            422,
            stream=stream,
            values=values,
            errors=errors,
            result=None,
        )
    response = render(request, "fragments/test.html", stream=stream, values=values, result=result)
    response.headers.update(STREAMS_CHANGED)
    return response


@router.post("/{stream_id}/disable")
def disable(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    stream = streams_api.disable_stream(stream_id, request, signed_in.account_id)
    return _done(request, f"{stream.name} is disabled: sends are refused, queued ones wait.")


@router.post("/{stream_id}/enable")
def enable(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    stream = streams_api.enable_stream(stream_id, request, signed_in.account_id)
    return _done(request, f"{stream.name} is enabled ({stream.status.value}).")


@router.get("/{stream_id}/restrict")
def restrict_form(request: Request, signed_in: Session, stream_id: str) -> Response:
    stream = _stream(request, signed_in.account_id, stream_id)
    return render(request, "fragments/restrict.html", stream=stream, values={})


@router.post("/{stream_id}/restrict")
async def restrict(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    form = await request.form()
    reason = str(form.get("reason", "")).strip()
    return await run_in_threadpool(_restrict, request, signed_in.account_id, stream_id, reason)


def _restrict(request: Request, account_id: uuid.UUID, stream_id: str, reason: str) -> Response:
    try:
        body = RestrictBody(reason=reason)
    except ValidationError as exc:
        stream = _stream(request, account_id, stream_id)
        return render(
            request,
            "fragments/restrict.html",
            422,
            stream=stream,
            values={"reason": reason},
            errors=FormErrors.of(exc),
        )
    stream = streams_api.restrict_stream(stream_id, body, request, account_id)
    return _done(request, f"{stream.name} is restricted: {reason}")


@router.post("/{stream_id}/unrestrict")
def unrestrict(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    stream = streams_api.unrestrict_stream(stream_id, request, signed_in.account_id)
    return _done(request, f"{stream.name} is no longer restricted.")


@router.get("/{stream_id}/delete")
def delete_confirm(request: Request, signed_in: Session, stream_id: str) -> Response:
    stream = _stream(request, signed_in.account_id, stream_id)
    return _confirm(
        request,
        stream,
        "delete",
        title=f"Delete {stream.name}?",
        text="Its token stops working at once and it leaves this list. Its message history "
        "stays readable through the API.",
        button="Delete stream",
    )


@router.post("/{stream_id}/delete")
def delete(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    stream = _stream(request, signed_in.account_id, stream_id)
    streams_api.delete_stream(stream_id, request, signed_in.account_id)
    log.info("console_stream_deleted", stream_id=stream_id)
    response = _done(request, f"{stream.name} is deleted.")
    response.headers["HX-Trigger"] = '{"streams-changed": null, "stream-deleted": null}'
    return response


# ---------------------------------------------------------------- create


@router.get("/new")
def choose_type(request: Request, _signed_in: Session) -> Response:
    return render(request, "new_stream_type.html", blurbs=TYPE_BLURBS)


def _wizard(
    request: Request,
    stream_type: StreamType,
    values: dict[str, str],
    errors: FormErrors,
    status_code: int = 200,
) -> Response:
    steps = CREATE_STEPS[stream_type]
    return render(
        request,
        "new_stream.html",
        status_code,
        stream_type=stream_type,
        steps=steps,
        required=REQUIRED_STEPS[stream_type],
        values=values,
        errors=errors,
        first_error_step=_step_of_first_error(errors),
    )


def _step_of_first_error(errors: FormErrors) -> str | None:
    """The create step holding the first field in error, so the form opens there."""
    field = next(iter(errors.by_field), None)
    if field is None:
        return None
    if field.startswith("whatsapp."):
        return "whatsapp"
    if field == "default_sender":
        return "sender"
    if not field.startswith("settings."):
        return "details"
    setting = field.removeprefix("settings.").split(".")[0]
    if setting in CALLBACK_SETTINGS:
        return "callbacks"
    if setting in OTP_ONLY_SETTINGS:
        return "codes"
    return "limits"


@router.get("/new/{stream_type}")
def create_form(request: Request, _signed_in: Session, stream_type: StreamType) -> Response:
    return _wizard(request, stream_type, {}, FormErrors())


@router.post("/new/{stream_type}")
async def create(request: Request, signed_in: ChangingSession, stream_type: StreamType) -> Response:
    """Create the stream from whatever steps are filled: the API makes it ``draft`` until
    nothing required is missing. A WhatsApp account given here is saved right after."""
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    return await run_in_threadpool(_create, request, signed_in.account_id, stream_type, values)


def _create(
    request: Request, account_id: uuid.UUID, stream_type: StreamType, values: dict[str, str]
) -> Response:
    try:
        body = StreamCreate.model_validate(stream_create_body(values, stream_type.value))
        whatsapp = (
            WhatsAppSetup.model_validate(whatsapp_body(values, clear_blank_ids=False))
            if stream_type is StreamType.whatsapp
            else None
        )
    except ValidationError as exc:
        prefix = "whatsapp." if exc.title == WhatsAppSetup.__name__ else ""
        return _wizard(request, stream_type, values, FormErrors.of(exc, prefix), 422)
    try:
        created = streams_api.create_stream(body, request, account_id)
    except ApiError as exc:
        return _wizard(request, stream_type, values, FormErrors.of(exc), 422)
    if whatsapp is not None and whatsapp.model_fields_set:
        whatsapp_api.put_whatsapp(created.id, whatsapp, request, account_id)
    log.info("console_stream_created", stream_id=created.id, stream_type=stream_type.value)
    target = f"{CONSOLE_PATH}/streams?panel={created.id}"
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
