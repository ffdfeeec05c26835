"""Message status changes. Each change is a conditional update plus a history row, so two
processes racing on one message cannot both move it (invariant 2). Every change is also
queued on the session and published by ``core.status_feed`` once committed."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.database import bulk_insert
from core.status_feed import pending_changes
from schemas.enums import MessageStatus
from schemas.events import StatusChange
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
) -> StatusChange | None:
    """Move a message to ``to`` if its status is one of ``allowed_from``.

    Returns the change, or None (changing nothing) when another process moved it first.
    The caller commits.
    """
    statement = (
        update(Message)
        .where(Message.id == message_id, Message.status.in_([s.value for s in allowed_from]))
        .values(status=to.value, updated_at=at, **(values or {}))
        .returning(Message.stream_id, Message.account_id, Message.stream_type, Message.segments)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(statement).first()
    if row is None:
        return None
    change = StatusChange(
        message_id=message_id,
        stream_id=row.stream_id,
        account_id=row.account_id,
        stream_type=row.stream_type,
        status=to,
        at=at,
        segments=row.segments,
        detail=detail,
    )
    record_changes(session, [change])
    return change


def record_changes(session: Session, changes: Sequence[StatusChange]) -> None:
    """Append the history rows (one INSERT for all) and queue the changes for publishing."""
    if not changes:
        return
    bulk_insert(
        session,
        MessageEvent.__table__,  # type: ignore[arg-type]
        [
            {"message_id": c.message_id, "status": c.status.value, "at": c.at, "detail": c.detail}
            for c in changes
        ],
    )
    pending_changes(session).extend(changes)
