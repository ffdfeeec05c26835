"""The management API for streams (account key). Another account's ids answer 404."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.credentials import digest, new_stream_token, new_webhook_secret
from core.network import parse_network
from core.phones import normalize_sender
from core.quiet_hours_changes import quiet_window, release_quiet_holds
from core.runtime import Runtime
from core.stream_rules import ACTIVITY_WINDOW, missing_steps, shown_status, stored_status
from core.whatsapp_setup import whatsapp_steps
from dispatcher.auth import StreamAccess, ensure_accepts_sends, require_account, runtime_of
from dispatcher.errors import ApiError, invalid_field
from dispatcher.intake import accept_messages
from dispatcher.no_store import NO_STORE
from dispatcher.ownership import owned_stream
from dispatcher.query_params import NameFilter, TagFilter
from schemas.enums import IN_FLIGHT_MESSAGE_STATUSES, StreamStatus, StreamType
from schemas.errors import ErrorBody
from schemas.messages import SendResult
from schemas.streams import (
    CALLBACK_SETTINGS,
    OTP_DEFAULTS,
    OTP_ONLY_SETTINGS,
    RestrictBody,
    SettingsOut,
    StreamCreate,
    StreamOut,
    StreamPage,
    StreamPatch,
    StreamSettings,
    TestSend,
    TokenOut,
    TokenReset,
    patched_settings,
)
from schemas.tables import Message, Stream, StreamTag, status_is

router = APIRouter(prefix="/api/v1/streams", tags=["streams"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
Account = Annotated[uuid.UUID, Depends(require_account)]

TEST_MESSAGE = "Test message from Streams"


# ---------------------------------------------------------------- validation


def checked_allowed_ips(values: list[str]) -> list[str]:
    """Normalised CIDRs; 422 naming ``allowed_ips[i]`` for the first bad one."""
    normalised: list[str] = []
    for index, value in enumerate(values):
        try:
            normalised.append(str(parse_network(value)))
        except ValueError as exc:
            raise ApiError(422, "invalid_cidr", str(exc), field=f"allowed_ips[{index}]") from None
    return list(dict.fromkeys(normalised))


def checked_sender(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return normalize_sender(value)
    except ValueError as exc:
        raise ApiError(
            422, "invalid_sender", f"default_sender: {exc}", field="default_sender"
        ) from None


#: Settings that only some stream types take; the rest apply to every type.
_SETTING_TYPES: dict[str, tuple[StreamType, ...]] = {
    **{key: (StreamType.otp,) for key in OTP_ONLY_SETTINGS},
    **{key: (StreamType.two_way, StreamType.whatsapp) for key in CALLBACK_SETTINGS},
    "quiet_hours": (StreamType.marketing,),
}


def checked_settings(
    stream_type: StreamType, settings: dict[str, Any], prefix: str = "settings."
) -> dict[str, Any]:
    """Settings valid for this type, with the type's defaults filled in (JSON-ready).

    ``prefix`` is how the settings object is reached in the request body, so errors name
    the field as the caller wrote it (``settings.template`` on create, ``template`` on PUT).
    """
    given = {k: v for k, v in settings.items() if v is not None}
    for key in given:
        types = _SETTING_TYPES.get(key)
        if types is not None and stream_type not in types:
            names = " and ".join(t.value for t in types)
            raise ApiError(
                422,
                "setting_not_applicable",
                f"{prefix}{key} applies to {names} streams only",
                field=f"{prefix}{key}",
            )
    if stream_type is StreamType.otp:
        given = {**OTP_DEFAULTS, **given}
    try:
        checked = StreamSettings.model_validate(given)
    except ValidationError as exc:
        # The body passed its own model; what fails here is the whole of the settings (a
        # PATCH merges the stored ones, which rules made since may refuse).
        raise invalid_field(exc, within=prefix.rstrip(".")) from None
    # Unset settings are left out; a window keeps its keys ("timezone": null included).
    return {k: v for k, v in checked.model_dump(mode="json").items() if v is not None}


def _set_settings(
    session: Session, stream: Stream, settings: dict[str, Any], now: datetime
) -> None:
    """Replace the stream's settings, noting when its callback set-up changes. A change of
    its quiet hours (on, off, or another window or zone) makes what they held due now, in
    ``session``'s transaction: the relay's next sweep releases those messages, and the gate
    holds each again, until the new window opens, if it must."""
    if settings.get("callback_url") != stream.settings.get("callback_url"):
        stream.callbacks_changed_at = now
    if quiet_window(settings) != quiet_window(stream.settings):
        release_quiet_holds(session, stream.id, now)
    stream.settings = settings


def _normalised_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tag.strip() for tag in tags))


# ---------------------------------------------------------------- views


def _has_in_flight() -> ColumnElement[bool]:
    """The stream (correlated) has a queued or sending message.

    Asked as the oldest such message's ``created_at``, which PostgreSQL reads as the first
    entry of ``ix_messages_in_flight_stream`` for the stream: one index probe, with or
    without messages. ``EXISTS`` reads the same, but only when the planner expects few
    matches; behind a large backlog it expects a match within a few rows of any scan, and
    for a stream with none walked the whole table (18 ms per stream on 200,000 rows)."""
    oldest = (
        select(func.min(Message.created_at))
        .where(Message.stream_id == Stream.id, status_is(*IN_FLIGHT_MESSAGE_STATUSES))
        .correlate(Stream)
        .scalar_subquery()
    )
    return oldest.is_not(None)


def _in_flight(session: Session, stream_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``stream_ids`` have messages in flight (a probe per stream, not a walk of
    their backlogs)."""
    if not stream_ids:
        return set()
    rows = session.execute(
        select(Stream.id).where(Stream.id.in_(stream_ids), _has_in_flight())
    ).scalars()
    return set(rows)


def stream_view(stream: Stream, *, in_flight: bool, now: datetime) -> StreamOut:
    last = as_utc(stream.last_activity_at) if stream.last_activity_at else None
    stored = StreamStatus(stream.status)
    return StreamOut(
        id=str(stream.id),
        name=stream.name,
        type=StreamType(stream.type),
        status=shown_status(stored, last_activity_at=last, in_flight=in_flight, now=now),
        description=stream.description,
        tags=[t.tag for t in stream.tags],
        allowed_ips=list(stream.allowed_ips),
        default_sender=stream.default_sender,
        demo=stream.demo,
        settings=dict(stream.settings),
        restricted_reason=stream.restricted_reason,
        missing_steps=_missing(stream),
        last_activity_at=last,
        created_at=as_utc(stream.created_at),
        updated_at=as_utc(stream.updated_at),
    )


def _missing(stream: Stream) -> list[str]:
    return missing_steps(
        StreamType(stream.type),
        default_sender=stream.default_sender,
        demo=stream.demo,
        settings=stream.settings,
        whatsapp=whatsapp_steps(stream),
    )


def _refresh_status(stream: Stream) -> None:
    stream.status = stored_status(
        missing=_missing(stream),
        disabled=stream.disabled,
        restricted=stream.restricted_reason is not None,
    ).value


def _one_view(session: Session, stream: Stream, now: datetime) -> StreamOut:
    return stream_view(stream, in_flight=stream.id in _in_flight(session, [stream.id]), now=now)


def _owned(session: Session, account_id: uuid.UUID, stream_id: str) -> Stream:
    """The account's live stream with that id, or 404 (also for other accounts' ids)."""
    return owned_stream(session, account_id, stream_id)


def _forget(request: Request, stream_id: uuid.UUID) -> None:
    request.app.state.token_cache.forget_stream(stream_id)


# ---------------------------------------------------------------- routes


@router.post("", status_code=201, response_model=StreamOut, responses=_ERRORS)
def create_stream(body: StreamCreate, request: Request, account_id: Account) -> StreamOut:
    runtime = runtime_of(request)
    now = runtime.clock()
    token = new_stream_token()
    stream = Stream(
        id=uuid.uuid4(),
        account_id=account_id,
        name=body.name,
        type=body.type.value,
        description=body.description,
        disabled=False,
        restricted_reason=None,
        allowed_ips=checked_allowed_ips(body.allowed_ips),
        default_sender=checked_sender(body.default_sender),
        demo=body.demo,
        settings=checked_settings(body.type, body.settings.model_dump(exclude_none=True)),
        token_digest=digest(token),
        token_sealed=runtime.secret_box.seal(token),
        webhook_secret_sealed=runtime.secret_box.seal(new_webhook_secret()),
        created_at=now,
        updated_at=now,
        callbacks_changed_at=now,
    )
    stream.tags = [StreamTag(tag=t, position=i) for i, t in enumerate(_normalised_tags(body.tags))]
    _refresh_status(stream)
    with runtime.session_factory() as session:
        session.add(stream)
        session.commit()
    log.info(
        "stream_created", stream_id=str(stream.id), stream_type=stream.type, status=stream.status
    )
    return stream_view(stream, in_flight=False, now=now)


def _status_condition(status: StreamStatus, now: datetime):  # type: ignore[no-untyped-def]
    # Spelled so that a NULL last_activity_at is false, not unknown (NOT NULL is NULL).
    active = or_(
        and_(
            Stream.last_activity_at.is_not(None), Stream.last_activity_at >= now - ACTIVITY_WINDOW
        ),
        _has_in_flight(),
    )
    if status is StreamStatus.sending:
        return and_(Stream.status == StreamStatus.ready.value, active)
    if status is StreamStatus.ready:
        return and_(Stream.status == StreamStatus.ready.value, not_(active))
    return Stream.status == status.value


@router.get("", response_model=StreamPage, responses=_ERRORS)
def list_streams(
    request: Request,
    account_id: Account,
    name: NameFilter = None,
    status: StreamStatus | None = None,
    tag: TagFilter = None,
    type: StreamType | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> StreamPage:
    """Newest first. ``name`` matches a case-insensitive substring; each ``tag`` narrows."""
    runtime = runtime_of(request)
    now = runtime.clock()
    conditions = [Stream.account_id == account_id, Stream.deleted_at.is_(None)]
    if name:
        escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(Stream.name).like(f"%{escaped}%", escape="\\"))
    if status is not None:
        conditions.append(_status_condition(status, now))
    for wanted in tag or []:
        conditions.append(
            exists().where(StreamTag.stream_id == Stream.id, StreamTag.tag == wanted.strip())
        )
    if type is not None:
        conditions.append(Stream.type == type.value)
    with runtime.session_factory() as session:
        total = session.scalar(select(func.count()).select_from(Stream).where(*conditions)) or 0
        streams = session.scalars(
            select(Stream)
            .where(*conditions)
            .order_by(Stream.created_at.desc(), Stream.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        busy = _in_flight(session, [s.id for s in streams])
        items = [stream_view(s, in_flight=s.id in busy, now=now) for s in streams]
    return StreamPage(items=items, total=total, page=page, per_page=per_page)


@router.get("/{stream_id}", response_model=StreamOut, responses=_ERRORS)
def get_stream(stream_id: str, request: Request, account_id: Account) -> StreamOut:
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        return _one_view(session, _owned(session, account_id, stream_id), runtime.clock())


@router.patch("/{stream_id}", response_model=StreamOut, responses=_ERRORS)
def patch_stream(
    stream_id: str, body: StreamPatch, request: Request, account_id: Account
) -> StreamOut:
    runtime = runtime_of(request)
    now = runtime.clock()
    given = body.model_fields_set
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        if "name" in given and body.name is not None:
            stream.name = body.name
        if "description" in given:
            stream.description = body.description
        if "tags" in given:
            tags = _normalised_tags(body.tags or [])
            stream.tags = [StreamTag(tag=t, position=i) for i, t in enumerate(tags)]
        if "allowed_ips" in given:
            stream.allowed_ips = checked_allowed_ips(body.allowed_ips or [])
        if "default_sender" in given:
            stream.default_sender = checked_sender(body.default_sender)
        if "demo" in given and body.demo is not None:
            stream.demo = body.demo
        if "settings" in given and body.settings is not None:
            changes = body.settings.model_dump(exclude_unset=True)
            merged = patched_settings(stream.settings, changes)
            _set_settings(session, stream, checked_settings(StreamType(stream.type), merged), now)
        stream.updated_at = now
        _refresh_status(stream)
        session.commit()
        _forget(request, stream.id)
        return _one_view(session, stream, now)


@router.delete("/{stream_id}", status_code=204, responses=_ERRORS)
def delete_stream(stream_id: str, request: Request, account_id: Account) -> Response:
    """The token stops working at once; the stream's messages stay readable."""
    runtime = runtime_of(request)
    now = runtime.clock()
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        stream.deleted_at = now
        stream.updated_at = now
        stream.token_digest = None
        stream.previous_token_digest = None
        stream.tags = []
        session.commit()
        _forget(request, stream.id)
    log.info("stream_deleted", stream_id=stream_id)
    return Response(status_code=204)


@router.get(
    "/{stream_id}/token", response_model=TokenOut, responses=_ERRORS, dependencies=[NO_STORE]
)
def show_token(stream_id: str, request: Request, account_id: Account) -> TokenOut:
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        return TokenOut(token=runtime.secret_box.open(stream.token_sealed or ""))


@router.post(
    "/{stream_id}/token/reset",
    response_model=TokenOut,
    responses=_ERRORS,
    dependencies=[NO_STORE],
)
def reset_token(
    stream_id: str,
    request: Request,
    account_id: Account,
    body: Annotated[TokenReset | None, Body()] = None,
) -> TokenOut:
    """A new token. The old one stops at once, or after ``grace_seconds``; every ingress
    process sees it within ``auth_cache_seconds`` (≤ 1 s)."""
    runtime = runtime_of(request)
    now = runtime.clock()
    grace = (body or TokenReset()).grace_seconds
    token = new_stream_token()
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        if grace > 0:
            stream.previous_token_digest = stream.token_digest
            stream.previous_token_expires_at = now + timedelta(seconds=grace)
        else:
            stream.previous_token_digest = None
            stream.previous_token_expires_at = None
        stream.token_digest = digest(token)
        stream.token_sealed = runtime.secret_box.seal(token)
        stream.updated_at = now
        session.commit()
        _forget(request, stream.id)
    log.info("stream_token_reset", stream_id=stream_id, grace_seconds=grace)
    return TokenOut(token=token)


def _set_hold(request: Request, account_id: uuid.UUID, stream_id: str, **changes: Any) -> StreamOut:
    runtime = runtime_of(request)
    now = runtime.clock()
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        for name, value in changes.items():
            setattr(stream, name, value)
        stream.updated_at = now
        _refresh_status(stream)
        session.commit()
        _forget(request, stream.id)
        log.info("stream_hold_changed", stream_id=stream_id, status=stream.status)
        return _one_view(session, stream, now)


@router.post("/{stream_id}/disable", response_model=StreamOut, responses=_ERRORS)
def disable_stream(stream_id: str, request: Request, account_id: Account) -> StreamOut:
    """The customer's pause: sends answer 403 ``stream_disabled``; queued messages wait."""
    return _set_hold(request, account_id, stream_id, disabled=True)


@router.post("/{stream_id}/enable", response_model=StreamOut, responses=_ERRORS)
def enable_stream(stream_id: str, request: Request, account_id: Account) -> StreamOut:
    return _set_hold(request, account_id, stream_id, disabled=False)


@router.post("/{stream_id}/restrict", response_model=StreamOut, responses=_ERRORS)
def restrict_stream(
    stream_id: str, body: RestrictBody, request: Request, account_id: Account
) -> StreamOut:
    return _set_hold(request, account_id, stream_id, restricted_reason=body.reason)


@router.post("/{stream_id}/unrestrict", response_model=StreamOut, responses=_ERRORS)
def unrestrict_stream(stream_id: str, request: Request, account_id: Account) -> StreamOut:
    return _set_hold(request, account_id, stream_id, restricted_reason=None)


@router.get("/{stream_id}/settings", response_model=SettingsOut, responses=_ERRORS)
def get_settings(stream_id: str, request: Request, account_id: Account) -> dict[str, Any]:
    with runtime_of(request).session_factory() as session:
        return dict(_owned(session, account_id, stream_id).settings)


@router.put("/{stream_id}/settings", response_model=SettingsOut, responses=_ERRORS)
def put_settings(
    stream_id: str, body: StreamSettings, request: Request, account_id: Account
) -> dict[str, Any]:
    """Replace the settings (OTP streams get their defaults for what is left out)."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        now = runtime.clock()
        settings = checked_settings(
            StreamType(stream.type), body.model_dump(exclude_none=True), prefix=""
        )
        _set_settings(session, stream, settings, now)
        stream.updated_at = now
        _refresh_status(stream)
        session.commit()
        _forget(request, stream.id)
        return dict(stream.settings)


@router.post(
    "/{stream_id}/test",
    status_code=202,
    response_model=SendResult,
    responses={**_ERRORS, 403: {"model": ErrorBody}},
)
def test_stream(
    stream_id: str, body: TestSend, request: Request, account_id: Account
) -> SendResult:
    """Send one test message through the stream, as its token would."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        access = _access_of(stream)
    ensure_accepts_sends(access.status)
    item = {
        "recipient_phone": body.recipient_phone,
        "message_content": body.message_content or TEST_MESSAGE,
    }
    response = accept_messages(runtime, access, [item], request.app.state.activity_touch)
    result = response.results[0]
    if result.status == "rejected" and result.error is not None:
        field = (result.error.field or "").replace("messages[0].", "") or None
        raise ApiError(
            422, result.error.code, result.error.message.replace("messages[0].", ""), field=field
        )
    return result


def _access_of(stream: Stream) -> StreamAccess:
    return StreamAccess(
        stream_id=stream.id,
        account_id=stream.account_id,
        type=StreamType(stream.type),
        status=StreamStatus(stream.status),
        allowed_networks=(),
        default_sender=stream.default_sender,
        demo=stream.demo,
        settings=dict(stream.settings),
    )


@router.get("/{stream_id}/request-api", responses=_ERRORS)
def request_api(stream_id: str, request: Request, account_id: Account) -> dict[str, Any]:
    """The ingress endpoint and a ready example body for this stream's type."""
    runtime: Runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        sender = stream.default_sender or "Streams"
        stream_type = StreamType(stream.type)
    example: dict[str, Any] = {
        "internal_id": "order-1003",
        "sender": sender,
        "recipient_phone": "+972524265292",
        "message_content": "Your parcel is on its way",
        "send_at": None,
        "callback_url": None,
    }
    if stream_type is StreamType.otp:
        example["message_content"] = "Your code is 48213"
    return {
        "endpoint": f"{runtime.settings.public_url.rstrip('/')}/v1/messages",
        "method": "POST",
        "headers": {"Authorization": "Bearer <stream token>", "Content-Type": "application/json"},
        "body": {"messages": [example]},
    }
