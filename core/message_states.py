"""Message status changes. Each change is a conditional update plus a history row, so two
processes racing on one message cannot both move it (invariant 2)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from schemas.enums import MessageStatus
from schemas.tables import Message, MessageEvent


def transition(
    session: Session,
    message_id: uuid.UUID,
    *,
    to: MessageStatus,
    allowed_from: Iterable[MessageStatus],
    at: datetime,
    detail: str | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move a message to ``to`` if its status is one of ``allowed_from``.

    Returns False (and changes nothing) when another process moved it first. The caller
    commits.
    """
    statement = (
        update(Message)
        .where(Message.id == message_id, Message.status.in_([s.value for s in allowed_from]))
        .values(status=to.value, updated_at=at, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
        return False
    record_events(session, [message_id], status=to, at=at, detail=detail)
    return True


def record_events(
    session: Session,
    message_ids: Iterable[uuid.UUID],
    *,
    status: MessageStatus,
    at: datetime,
    detail: str | None = None,
) -> None:
    """Append one history row per message (one INSERT for all of them)."""
    rows = [
        {"message_id": mid, "status": status.value, "at": at, "detail": detail}
        for mid in message_ids
    ]
    if rows:
        session.execute(insert(MessageEvent), rows)
