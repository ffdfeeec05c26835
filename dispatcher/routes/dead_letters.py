"""Dead letters (account key): messages that kept failing after their retries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import func, select

from core import metrics
from core.clock import as_utc
from core.dead_letters import ReplayRefused, replay_dead_letter
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from schemas.errors import ErrorBody
from schemas.tables import DeadLetter, Message
from workers.queueing import enqueue_committed

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
Account = Annotated[uuid.UUID, Depends(require_account)]


class DeadLetterOut(BaseModel):
    id: str
    message_id: str
    stream_id: str
    queue: str
    reason: str
    error_message: str | None
    attempts: int
    created_at: datetime
    replayed_at: datetime | None
    #: The message's status now (None once the message is gone): a letter whose message
    #: moved on, because the carrier reported on it after all, needs no replay.
    message_status: str | None


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    total: int
    page: int
    per_page: int


def _view(letter: DeadLetter, message_status: str | None) -> DeadLetterOut:
    return DeadLetterOut(
        id=str(letter.id),
        message_id=str(letter.message_id),
        stream_id=str(letter.stream_id),
        queue=letter.queue,
        reason=letter.reason,
        error_message=letter.error_message,
        attempts=letter.attempts,
        created_at=as_utc(letter.created_at),
        replayed_at=as_utc(letter.replayed_at) if letter.replayed_at else None,
        message_status=message_status,
    )


@router.get("", response_model=DeadLetterPage, responses=_ERRORS)
def list_dead_letters(
    request: Request,
    account_id: Account,
    stream_id: uuid.UUID | None = None,
    replayed: bool | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeadLetterPage:
    """The account's dead letters, newest first; filter by ``stream_id`` and ``replayed``."""
    conditions = [DeadLetter.account_id == account_id]
    if stream_id is not None:
        conditions.append(DeadLetter.stream_id == stream_id)
    if replayed is not None:
        conditions.append(
            DeadLetter.replayed_at.is_not(None) if replayed else DeadLetter.replayed_at.is_(None)
        )
    with runtime_of(request).session_factory() as session:
        total = session.scalar(select(func.count()).select_from(DeadLetter).where(*conditions))
        rows = session.execute(
            select(DeadLetter, Message.status)
            .outerjoin(Message, Message.id == DeadLetter.message_id)
            .where(*conditions)
            .order_by(DeadLetter.created_at.desc(), DeadLetter.id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        return DeadLetterPage(
            items=[_view(letter, status) for letter, status in rows],
            total=total or 0,
            page=page,
            per_page=per_page,
        )


@router.post(
    "/{letter_id}/replay", status_code=202, response_model=DeadLetterOut, responses=_ERRORS
)
def replay(letter_id: str, request: Request, account_id: Account) -> DeadLetterOut:
    """Send the message again with a fresh retry budget. 409 if already replayed."""
    runtime = runtime_of(request)
    try:
        key = uuid.UUID(letter_id)
    except ValueError:
        raise not_found("dead letter") from None
    with runtime.session_factory() as session:
        letter = session.scalars(
            select(DeadLetter).where(DeadLetter.id == key, DeadLetter.account_id == account_id)
        ).first()
        if letter is None:
            raise not_found("dead letter")
        try:
            message = replay_dead_letter(session, letter, runtime.clock())
        except ReplayRefused as refused:
            raise ApiError(409, refused.code, str(refused)) from None
        session.commit()
        session.refresh(letter)
        view = _view(letter, message.status)
        queue, message_id = message.stream_type, message.id
    metrics.DEAD_LETTER_REPLAYS.labels(queue).inc()
    log.info(
        "dead_letter_replayed",
        dead_letter_id=view.id,
        message_id=view.message_id,
        stream_id=view.stream_id,
        queue=queue,
    )
    enqueue_committed(runtime, queue, [message_id])
    return view
