"""Event templates of transactional and OTP streams (account key).

``/api/v1/streams/{id}/events``: a template has a ``key`` (unique per stream, ``[a-z0-9_.-]``),
a ``name`` and a ``template`` with ``{variable}`` placeholders, checked when saved. Sends use
them by ``event_key`` (``dispatcher.event_templates``). Another account's ids answer 404.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.clock import as_utc
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from dispatcher.event_templates import EVENT_STREAM_TYPES, MAX_EVENTS_PER_STREAM
from dispatcher.ownership import owned_stream
from schemas.enums import StreamType
from schemas.errors import ErrorBody
from schemas.event_templates import (
    EVENT_KEY_PATTERN,
    EventTemplateCreate,
    EventTemplateList,
    EventTemplateOut,
    EventTemplatePatch,
)
from schemas.tables import EventTemplate, Stream
from schemas.templates import template_placeholders

router = APIRouter(prefix="/api/v1/streams/{stream_id}/events", tags=["events"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
_KEY = re.compile(EVENT_KEY_PATTERN)
Account = Annotated[uuid.UUID, Depends(require_account)]


def _event_stream(session: Session, account_id: uuid.UUID, stream_id: str) -> Stream:
    """The account's stream, which must be of a type that has events (409 otherwise)."""
    stream = owned_stream(session, account_id, stream_id)
    if StreamType(stream.type) not in EVENT_STREAM_TYPES:
        raise ApiError(
            409,
            "wrong_stream_type",
            f"Event templates are for transactional and OTP streams; this is a {stream.type} "
            "stream.",
        )
    return stream


def _one(session: Session, stream: Stream, key: str) -> EventTemplate:
    if not _KEY.fullmatch(key):
        raise not_found("event")
    event = session.scalars(
        select(EventTemplate).where(EventTemplate.stream_id == stream.id, EventTemplate.key == key)
    ).first()
    if event is None:
        raise not_found("event")
    return event


def event_view(event: EventTemplate) -> EventTemplateOut:
    return EventTemplateOut(
        key=event.key,
        name=event.name,
        template=event.template,
        variables=list(template_placeholders(event.template)),
        created_at=as_utc(event.created_at),
        updated_at=as_utc(event.updated_at),
    )


@router.get("", response_model=EventTemplateList, responses=_ERRORS)
def list_events(stream_id: str, request: Request, account_id: Account) -> EventTemplateList:
    """The stream's event templates, by key."""
    with runtime_of(request).session_factory() as session:
        stream = _event_stream(session, account_id, stream_id)
        events = session.scalars(
            select(EventTemplate)
            .where(EventTemplate.stream_id == stream.id)
            .order_by(EventTemplate.key)
        ).all()
        return EventTemplateList(items=[event_view(e) for e in events])


@router.post("", status_code=201, response_model=EventTemplateOut, responses=_ERRORS)
def create_event(
    stream_id: str, body: EventTemplateCreate, request: Request, account_id: Account
) -> EventTemplateOut:
    """409 ``duplicate_event_key`` when the stream already has the key."""
    runtime = runtime_of(request)
    now = runtime.clock()
    with runtime.session_factory() as session:
        stream = _event_stream(session, account_id, stream_id)
        existing = session.scalar(
            select(func.count())
            .select_from(EventTemplate)
            .where(EventTemplate.stream_id == stream.id)
        )
        if (existing or 0) >= MAX_EVENTS_PER_STREAM:
            raise ApiError(
                409,
                "too_many_events",
                f"A stream holds at most {MAX_EVENTS_PER_STREAM} event templates.",
            )
        event = EventTemplate(
            id=uuid.uuid4(),
            stream_id=stream.id,
            key=body.key,
            name=body.name,
            template=body.template,
            created_at=now,
            updated_at=now,
        )
        session.add(event)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise ApiError(
                409,
                "duplicate_event_key",
                f"The stream already has an event with key {body.key!r}.",
                field="key",
            ) from None
        log.info("event_template_created", stream_id=stream_id, event_key=body.key)
        return event_view(event)


@router.patch("/{key}", response_model=EventTemplateOut, responses=_ERRORS)
def patch_event(
    stream_id: str, key: str, body: EventTemplatePatch, request: Request, account_id: Account
) -> EventTemplateOut:
    """Change the name or the template; the key stays."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        event = _one(session, _event_stream(session, account_id, stream_id), key)
        if body.name is not None:
            event.name = body.name
        if body.template is not None:
            event.template = body.template
        event.updated_at = runtime.clock()
        session.commit()
        log.info("event_template_changed", stream_id=stream_id, event_key=key)
        return event_view(event)


@router.delete("/{key}", status_code=204, responses=_ERRORS)
def delete_event(stream_id: str, key: str, request: Request, account_id: Account) -> Response:
    with runtime_of(request).session_factory() as session:
        session.delete(_one(session, _event_stream(session, account_id, stream_id), key))
        session.commit()
    log.info("event_template_deleted", stream_id=stream_id, event_key=key)
    return Response(status_code=204)
