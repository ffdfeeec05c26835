"""Sending (stream token) and reading messages (stream token or account key)."""

from __future__ import annotations

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core.clock import as_utc
from core.message_states import transition
from dispatcher.auth import StreamAccess, require_account, require_stream, runtime_of
from dispatcher.errors import ApiError, not_found
from dispatcher.intake import accept_messages, accept_single, is_plain_single
from dispatcher.query_params import QueryText
from schemas.enums import MessageStatus
from schemas.errors import ErrorBody
from schemas.messages import ItemError, MessageOut, SendRequest, SendResponse, StatusEventOut
from schemas.tables import Message, MessageEvent

log = structlog.get_logger(__name__)
router = APIRouter()
_ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 422, 429)}


@router.post(
    "/v1/messages",
    status_code=202,
    response_model=SendResponse,
    responses=_ERRORS,
    tags=["send"],
)
async def send_messages(
    body: SendRequest, request: Request, access: Annotated[StreamAccess, Depends(require_stream)]
) -> SendResponse:
    """Accept one message or a batch. A 202 means every accepted item is stored. Over the
    stream's ingress quota (messages a second, a batch counting each message): 429
    ``rate_limited`` with ``Retry-After``, and nothing of the request is stored."""
    runtime = runtime_of(request)
    if len(body.messages) > runtime.settings.max_batch:
        raise ApiError(
            413,
            "batch_too_large",
            f"A batch holds at most {runtime.settings.max_batch} messages; "
            f"this one has {len(body.messages)}.",
            field="messages",
        )
    touch = request.app.state.activity_touch
    if is_plain_single(access, body.messages):
        # The group committer asks the stream's quota for its whole group, in one call.
        return await accept_single(
            runtime, access, body.messages[0], request.app.state.group_committer
        )
    # Before any database work: a request over the stream's quota stores nothing.
    await request.app.state.ingress_gate.admit_async(access, len(body.messages))
    return await run_in_threadpool(accept_messages, runtime, access, body.messages, touch)


@router.get(
    "/v1/messages/{message_id}", response_model=MessageOut, responses=_ERRORS, tags=["send"]
)
def get_stream_message(
    message_id: str, request: Request, access: Annotated[StreamAccess, Depends(require_stream)]
) -> MessageOut:
    with runtime_of(request).session_factory() as session:
        message = _find(session, message_id, Message.stream_id == access.stream_id)
        return message_view(session, message)


@router.get("/v1/messages", response_model=MessageOut, responses=_ERRORS, tags=["send"])
def get_stream_message_by_internal_id(
    request: Request,
    access: Annotated[StreamAccess, Depends(require_stream)],
    internal_id: Annotated[QueryText, Query(min_length=1, max_length=128)],
) -> MessageOut:
    with runtime_of(request).session_factory() as session:
        message = session.scalars(
            select(Message).where(
                Message.stream_id == access.stream_id, Message.internal_id == internal_id
            )
        ).first()
        if message is None:
            raise not_found("message")
        return message_view(session, message)


@router.get(
    "/api/v1/messages/{message_id}", response_model=MessageOut, responses=_ERRORS, tags=["messages"]
)
def get_account_message(
    message_id: str, request: Request, account_id: Annotated[uuid.UUID, Depends(require_account)]
) -> MessageOut:
    with runtime_of(request).session_factory() as session:
        message = _find(session, message_id, Message.account_id == account_id)
        return message_view(session, message)


@router.post(
    "/api/v1/messages/{message_id}/cancel",
    response_model=MessageOut,
    responses=_ERRORS,
    tags=["messages"],
)
def cancel_message(
    message_id: str, request: Request, account_id: Annotated[uuid.UUID, Depends(require_account)]
) -> MessageOut:
    """Cancel a message that waits (``scheduled`` or ``queued``, also for a retry) →
    ``canceled``. 409 ``not_cancelable`` once it is being sent or done. Canceled while a
    retry waited, it may have reached the carrier on an earlier attempt: a receipt saying
    so moves it on (``core.receipts``)."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        message = _find(session, message_id, Message.account_id == account_id)
        left = message.status  # as read: scheduled or queued, which the log tells apart
        change = transition(
            session,
            message.id,
            to=MessageStatus.canceled,
            allowed_from=[MessageStatus.scheduled, MessageStatus.queued],
            at=runtime.clock(),
            detail="canceled by the account",
            values={"not_before": None, "hold_reason": None},
        )
        if change is None:
            # A worker may have claimed it since it was read: name the status it has now.
            session.refresh(message)
            log.info(
                "message_cancel_refused",
                message_id=str(message.id),
                stream_id=str(message.stream_id),
                status=message.status,
            )
            raise ApiError(
                409,
                "not_cancelable",
                f"The message is {message.status}; only scheduled or queued messages can be "
                "canceled.",
            )
        session.commit()
        log.info(
            "message_canceled",
            message_id=str(message.id),
            stream_id=str(message.stream_id),
            from_status=left,
        )
        session.refresh(message)
        return message_view(session, message)


def _find(session: Session, message_id: str, scope) -> Message:  # type: ignore[no-untyped-def]
    try:
        key = uuid.UUID(message_id)
    except ValueError:
        raise not_found("message") from None
    message = session.scalars(select(Message).where(Message.id == key, scope)).first()
    if message is None:
        raise not_found("message")
    return message


def message_view(session: Session, message: Message) -> MessageOut:
    events = session.scalars(
        select(MessageEvent)
        .where(MessageEvent.message_id == message.id)
        .order_by(MessageEvent.at, MessageEvent.id)
    ).all()
    error = (
        ItemError(code=message.error_code, message=message.error_message or message.error_code)
        if message.error_code
        else None
    )
    return MessageOut(
        message_id=str(message.id),
        stream_id=str(message.stream_id),
        internal_id=message.internal_id,
        sender=message.sender,
        recipient_phone=message.recipient,
        message_content=message.body,
        segments=message.segments,
        encoding=message.encoding,
        status=message.status,  # type: ignore[arg-type]
        error=error,
        send_at=as_utc(message.send_at) if message.send_at else None,
        expires_at=as_utc(message.expires_at) if message.expires_at else None,
        hold_reason=message.hold_reason,
        not_before=as_utc(message.not_before) if message.not_before else None,
        attempts=message.attempts,
        provider=message.provider,
        provider_message_id=message.provider_message_id,
        created_at=as_utc(message.created_at),
        updated_at=as_utc(message.updated_at),
        history=[
            StatusEventOut(status=e.status, at=as_utc(e.at), detail=e.detail)  # type: ignore[arg-type]
            for e in events
        ],
    )
