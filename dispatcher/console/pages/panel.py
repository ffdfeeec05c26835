"""The side panel opened from a stream's name: one tab per concern, shown only for the stream
types it applies to. Each tab reads and writes through the management API's functions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dispatcher.console.access import CONSOLE_PATH, ChangingSession, Session
from dispatcher.console.chart import throughput_chart
from dispatcher.console.forms import settings_from_form, stream_patch_body, whatsapp_body
from dispatcher.console.rendering import FormErrors, render
from dispatcher.errors import ApiError
from dispatcher.event_templates import EVENT_STREAM_TYPES
from dispatcher.routes import callbacks as callbacks_api
from dispatcher.routes import events as events_api
from dispatcher.routes import stats as stats_api
from dispatcher.routes import streams as streams_api
from dispatcher.routes import whatsapp as whatsapp_api
from schemas.enums import StreamType
from schemas.event_templates import EventTemplateCreate, EventTemplatePatch
from schemas.streams import StreamOut, StreamPatch
from schemas.whatsapp import TemplateCreate, WhatsAppSetup

router = APIRouter(prefix=f"{CONSOLE_PATH}/streams/{{stream_id}}/panel", include_in_schema=False)
log = structlog.get_logger(__name__)

_TWO_WAY = frozenset({StreamType.two_way, StreamType.whatsapp})
#: Tab key → (title, the stream types it is shown for).
TABS: dict[str, tuple[str, frozenset[StreamType]]] = {
    "info": ("Info", frozenset(StreamType)),
    "settings": ("Settings", frozenset(StreamType)),
    "events": ("Events", EVENT_STREAM_TYPES),
    "whatsapp": ("WhatsApp", frozenset({StreamType.whatsapp})),
    "webhooks": ("Webhooks", _TWO_WAY),
    "request": ("Request API", frozenset(StreamType)),
}
CHANGED = {"HX-Trigger": "streams-changed"}


def tabs_for(stream_type: StreamType) -> list[tuple[str, str]]:
    """The (key, title) of the tabs a stream of this type shows, in order."""
    return [(key, title) for key, (title, types) in TABS.items() if stream_type in types]


def _tab_data(
    request: Request,
    account_id: uuid.UUID,
    stream: StreamOut,
    tab: str,
    editing: str | None = None,
) -> dict[str, Any]:
    """What the tab shows, read through the API's functions. ``editing`` is the key of the
    event template whose edit form is open, when there is one."""
    stream_id = stream.id
    if tab == "info":
        stats = stats_api.stream_stats(stream_id, request, account_id, from_=None, to=None)
        chart = throughput_chart(
            stats.throughput_per_minute.points,
            stats.from_,
            stats.to,
            stats.throughput_per_minute.bucket_seconds,
        )
        return {"stats": stats, "chart": chart}
    if tab == "events":
        events = events_api.list_events(stream_id, request, account_id).items
        return {"events": events, "editing": next((e for e in events if e.key == editing), None)}
    if tab == "whatsapp":
        return {
            "setup": whatsapp_api.get_whatsapp(stream_id, request, account_id),
            "templates": whatsapp_api.list_templates(stream_id, request, account_id),
        }
    if tab == "webhooks":
        return {"webhooks": callbacks_api.webhooks_tab(stream_id, request, account_id)}
    if tab == "request":
        return {"request_api": streams_api.request_api(stream_id, request, account_id)}
    return {}


def _panel(
    request: Request,
    account_id: uuid.UUID,
    stream_id: str,
    tab: str,
    *,
    errors: FormErrors | None = None,
    values: dict[str, str] | None = None,
    saved: str | None = None,
    status_code: int = 200,
    editing: str | None = None,
) -> Response:
    stream = streams_api.get_stream(stream_id, request, account_id)
    tabs = tabs_for(stream.type)
    if tab not in dict(tabs):
        tab = "info"
    return render(
        request,
        "fragments/panel.html",
        status_code,
        stream=stream,
        tabs=tabs,
        tab=tab,
        errors=errors or FormErrors(),
        values=values,
        saved=saved,
        **_tab_data(request, account_id, stream, tab, editing),
    )


@router.get("")
def panel(
    request: Request,
    signed_in: Session,
    stream_id: str,
    tab: Annotated[str, Query(max_length=20)] = "info",
    edit: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    return _panel(request, signed_in.account_id, stream_id, tab, editing=edit)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: str(v) for k, v in form.items() if k != "csrf_token"}


def _saved(response: Response) -> Response:
    response.headers.update(CHANGED)
    return response


@router.post("/info")
async def save_info(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    values = await _form(request)
    return await run_in_threadpool(_save_info, request, signed_in.account_id, stream_id, values)


def _save_info(
    request: Request, account_id: uuid.UUID, stream_id: str, values: dict[str, str]
) -> Response:
    try:
        body = StreamPatch.model_validate(stream_patch_body(values))
        streams_api.patch_stream(stream_id, body, request, account_id)
    except (ApiError, ValidationError) as exc:
        return _panel(
            request,
            account_id,
            stream_id,
            "info",
            errors=FormErrors.of(exc),
            values=values,
            status_code=422,
        )
    return _saved(_panel(request, account_id, stream_id, "info", saved="Details saved."))


@router.post("/settings")
async def save_settings(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    values = await _form(request)
    return await run_in_threadpool(_save_settings, request, signed_in.account_id, stream_id, values)


def _save_settings(
    request: Request, account_id: uuid.UUID, stream_id: str, values: dict[str, str]
) -> Response:
    """Settings merge into the stream's (``PATCH`` with ``settings``): an emptied input
    clears its setting, the others keep theirs."""
    try:
        body = StreamPatch.model_validate(
            {"settings": settings_from_form(values, clear_missing=True)}
        )
        streams_api.patch_stream(stream_id, body, request, account_id)
    except (ApiError, ValidationError) as exc:
        errors = FormErrors.of(exc)
        return _panel(
            request,
            account_id,
            stream_id,
            "settings",
            errors=errors,
            values=values,
            status_code=422,
        )
    return _saved(_panel(request, account_id, stream_id, "settings", saved="Settings saved."))


@router.post("/events")
async def add_event(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    values = await _form(request)
    return await run_in_threadpool(
        _save_event, request, signed_in.account_id, stream_id, values, None
    )


def _event_fields(values: dict[str, str], *names: str) -> dict[str, str]:
    return {name: values.get(f"event.{name}", "").strip() for name in names}


def _save_event(
    request: Request,
    account_id: uuid.UUID,
    stream_id: str,
    values: dict[str, str],
    key: str | None,
) -> Response:
    """Create an event template (``key`` None) or change one's name and template (the key
    stays, as in the API). A refusal reopens the same form with the errors by their fields."""
    try:
        if key is None:
            created = EventTemplateCreate.model_validate(
                _event_fields(values, "key", "name", "template")
            )
            events_api.create_event(stream_id, created, request, account_id)
            saved = f"Event {created.key} added."
        else:
            patch = EventTemplatePatch.model_validate(_event_fields(values, "name", "template"))
            events_api.patch_event(stream_id, key, patch, request, account_id)
            saved = f"Event {key} saved."
    except (ApiError, ValidationError) as exc:
        return _panel(
            request,
            account_id,
            stream_id,
            "events",
            errors=FormErrors.of(exc, "event."),
            values=values,
            status_code=422,
            editing=key,
        )
    return _panel(request, account_id, stream_id, "events", saved=saved)


@router.post("/events/{key}")
async def change_event(
    request: Request, signed_in: ChangingSession, stream_id: str, key: str
) -> Response:
    values = await _form(request)
    return await run_in_threadpool(
        _save_event, request, signed_in.account_id, stream_id, values, key
    )


@router.post("/events/{key}/delete")
def delete_event(
    request: Request, signed_in: ChangingSession, stream_id: str, key: str
) -> Response:
    events_api.delete_event(stream_id, key, request, signed_in.account_id)
    return _panel(request, signed_in.account_id, stream_id, "events", saved=f"Event {key} deleted.")


@router.post("/whatsapp")
async def save_whatsapp(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    values = await _form(request)
    return await run_in_threadpool(_save_whatsapp, request, signed_in.account_id, stream_id, values)


def _save_whatsapp(
    request: Request, account_id: uuid.UUID, stream_id: str, values: dict[str, str]
) -> Response:
    """Ids as typed; the access token and app secret only when a new one is typed."""
    try:
        body = WhatsAppSetup.model_validate(whatsapp_body(values, clear_blank_ids=True))
        whatsapp_api.put_whatsapp(stream_id, body, request, account_id)
    except (ApiError, ValidationError) as exc:
        return _panel(
            request,
            account_id,
            stream_id,
            "whatsapp",
            errors=FormErrors.of(exc, "whatsapp."),
            values=values,
            status_code=422,
        )
    return _saved(
        _panel(request, account_id, stream_id, "whatsapp", saved="WhatsApp set-up saved.")
    )


@router.post("/whatsapp/templates")
async def add_template(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    values = await _form(request)
    return await run_in_threadpool(_add_template, request, signed_in.account_id, stream_id, values)


def _add_template(
    request: Request, account_id: uuid.UUID, stream_id: str, values: dict[str, str]
) -> Response:
    fields = ("name", "language", "category", "body")
    try:
        body = TemplateCreate.model_validate(
            {k: values.get(f"template.{k}", "").strip() for k in fields}
        )
        whatsapp_api.create_template(stream_id, body, request, account_id)
    except (ApiError, ValidationError) as exc:
        return _panel(
            request,
            account_id,
            stream_id,
            "whatsapp",
            errors=FormErrors.of(exc, "template."),
            values=values,
            status_code=422,
        )
    return _panel(request, account_id, stream_id, "whatsapp", saved=f"Template {body.name} added.")
