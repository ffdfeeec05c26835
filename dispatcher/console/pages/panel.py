"""The side panel opened from a stream's name: one tab per concern, shown only for the stream
types it applies to. Each tab reads and writes through the management API's functions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dispatcher.console.access import CONSOLE_PATH, ChangingSession, Session
from dispatcher.console.chart import throughput_chart
from dispatcher.console.forms import settings_from_form, stream_patch_body, whatsapp_body
from dispatcher.console.rendering import STREAMS_CHANGED, FormErrors, render
from dispatcher.console.sessions import SignedIn
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


#: A tab's change, run in a worker thread: reads the form's values, writes through the API,
#: and returns the confirmation to show.
Change = Callable[[dict[str, str]], str]


async def _submit(
    request: Request,
    signed_in: SignedIn,
    stream_id: str,
    tab: str,
    change: Change,
    *,
    prefix: str = "",
    editing: str | None = None,
    changes_row: bool = False,
) -> Response:
    """Apply a tab's form through the API, off the event loop. A refusal reopens the tab
    with the values as typed and the errors by their fields (422); ``changes_row`` tells the
    streams table to refresh after a success."""
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    account_id = signed_in.account_id

    def apply() -> Response:
        try:
            saved = change(values)
        except (ApiError, ValidationError) as exc:
            return _panel(
                request,
                account_id,
                stream_id,
                tab,
                errors=FormErrors.of(exc, prefix),
                values=values,
                status_code=422,
                editing=editing,
            )
        response = _panel(request, account_id, stream_id, tab, saved=saved)
        if changes_row:
            response.headers.update(STREAMS_CHANGED)
        return response

    return await run_in_threadpool(apply)


@router.post("/info")
async def save_info(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    def change(values: dict[str, str]) -> str:
        body = StreamPatch.model_validate(stream_patch_body(values))
        streams_api.patch_stream(stream_id, body, request, signed_in.account_id)
        return "Details saved."

    return await _submit(request, signed_in, stream_id, "info", change, changes_row=True)


@router.post("/settings")
async def save_settings(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    """Settings merge into the stream's (``PATCH`` with ``settings``): an emptied input
    clears its setting, the others keep theirs."""

    def change(values: dict[str, str]) -> str:
        body = StreamPatch.model_validate(
            {"settings": settings_from_form(values, clear_missing=True)}
        )
        streams_api.patch_stream(stream_id, body, request, signed_in.account_id)
        return "Settings saved."

    return await _submit(request, signed_in, stream_id, "settings", change, changes_row=True)


def _fields(values: dict[str, str], prefix: str, *names: str) -> dict[str, str]:
    """The inputs ``prefix.name`` of a tab's add/edit form, as a request body by ``name``."""
    return {name: values.get(f"{prefix}.{name}", "").strip() for name in names}


@router.post("/events")
async def add_event(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    def change(values: dict[str, str]) -> str:
        body = EventTemplateCreate.model_validate(
            _fields(values, "event", "key", "name", "template")
        )
        events_api.create_event(stream_id, body, request, signed_in.account_id)
        return f"Event {body.key} added."

    return await _submit(request, signed_in, stream_id, "events", change, prefix="event.")


@router.post("/events/{key}")
async def change_event(
    request: Request, signed_in: ChangingSession, stream_id: str, key: str
) -> Response:
    """Name and template change; the key stays, as in the API."""

    def change(values: dict[str, str]) -> str:
        body = EventTemplatePatch.model_validate(_fields(values, "event", "name", "template"))
        events_api.patch_event(stream_id, key, body, request, signed_in.account_id)
        return f"Event {key} saved."

    return await _submit(
        request, signed_in, stream_id, "events", change, prefix="event.", editing=key
    )


@router.post("/events/{key}/delete")
def delete_event(
    request: Request, signed_in: ChangingSession, stream_id: str, key: str
) -> Response:
    saved = _removing(
        lambda: events_api.delete_event(stream_id, key, request, signed_in.account_id),
        done=f"Event {key} deleted.",
        gone=f"Event {key} was already deleted.",
    )
    return _panel(request, signed_in.account_id, stream_id, "events", saved=saved)


@router.post("/whatsapp")
async def save_whatsapp(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    """Ids as typed; the access token and app secret only when a new one is typed."""

    def change(values: dict[str, str]) -> str:
        body = WhatsAppSetup.model_validate(whatsapp_body(values, clear_blank_ids=True))
        whatsapp_api.put_whatsapp(stream_id, body, request, signed_in.account_id)
        return "WhatsApp set-up saved."

    return await _submit(
        request, signed_in, stream_id, "whatsapp", change, prefix="whatsapp.", changes_row=True
    )


@router.post("/whatsapp/templates")
async def add_template(request: Request, signed_in: ChangingSession, stream_id: str) -> Response:
    def change(values: dict[str, str]) -> str:
        body = TemplateCreate.model_validate(
            _fields(values, "template", "name", "language", "category", "body")
        )
        whatsapp_api.create_template(stream_id, body, request, signed_in.account_id)
        return f"Template {body.name} added."

    return await _submit(request, signed_in, stream_id, "whatsapp", change, prefix="template.")


@router.post("/whatsapp/templates/{template_id}/delete")
def delete_template(
    request: Request, signed_in: ChangingSession, stream_id: str, template_id: str
) -> Response:
    saved = _removing(
        lambda: whatsapp_api.delete_template(stream_id, template_id, request, signed_in.account_id),
        done="Template removed.",
        gone="That template was already removed.",
    )
    return _panel(request, signed_in.account_id, stream_id, "whatsapp", saved=saved)


def _removing(remove: Callable[[], object], done: str, gone: str) -> str:
    """Remove something a tab lists; what to tell. A row removed meanwhile (in another tab
    or by the API) is said to be gone, and the tab is shown again without it: a 404 would
    leave the stale row on screen with nothing said (htmx swaps no error answers). The
    stream itself is looked up again by the tab, so another account's stays a 404."""
    try:
        remove()
    except ApiError as exc:
        if exc.status != 404:
            raise
        return gone
    return done
