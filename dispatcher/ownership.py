"""Which stream an account key may touch (invariant 4): its own live streams, nothing else."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.errors import not_found
from schemas.tables import Stream


def owned_stream(session: Session, account_id: uuid.UUID, stream_id: str) -> Stream:
    """The account's live stream with that id, or 404 (also for other accounts' ids)."""
    try:
        key = uuid.UUID(stream_id)
    except ValueError:
        raise not_found("stream") from None
    stream = session.scalars(
        select(Stream).where(
            Stream.id == key, Stream.account_id == account_id, Stream.deleted_at.is_(None)
        )
    ).first()
    if stream is None:
        raise not_found("stream")
    return stream
