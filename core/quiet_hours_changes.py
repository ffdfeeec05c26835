"""A change of a stream's quiet hours, and the holds written under the window it replaced.

A settings change makes the stream's quiet-hours holds due at once (the gate decides each
again), but a worker may have read the stream's settings before the change and write its
hold after the change's release: that hold would wait for a window that no longer exists.
So the two take a PostgreSQL advisory lock of the stream, for their transaction: the change
exclusively, before it releases what is held; a hold shared, before it reads the stream's
window as it is now. Whichever comes second sees what the first committed: the release
finds the hold, or the hold finds the new window and is written due now. Advisory locks
live in memory: holds write nothing on the stream's row, however many are written at once.
SQLite (``streams dev``) has no such locks and one process: there the lock is a no-op.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from schemas.tables import Message, Stream, is_quiet_held

log = structlog.get_logger(__name__)

#: The first key of the advisory locks taken here; the second is drawn from the stream id.
_LOCK_SPACE = 0x51E7  # "quiet"


def quiet_window(settings: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """What of a stream's settings decides its quiet hours: start, end and zone, or None."""
    quiet = settings.get("quiet_hours")
    return (quiet["start"], quiet["end"], quiet.get("timezone")) if quiet else None


def _lock_quiet_hours(session: Session, stream_id: uuid.UUID, *, exclusive: bool) -> None:
    """Take the stream's quiet-hours lock until ``session``'s transaction ends: exclusive
    to change the window, shared to hold a message under it."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(stream_id.bytes[:4], "big", signed=True)
    lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    session.execute(select(lock(_LOCK_SPACE, key)))


def window_changed(session: Session, stream_id: uuid.UUID, loaded: dict[str, Any]) -> bool:
    """Whether the stream's quiet hours differ now from those in ``loaded`` (the settings a
    worker gated a message with). Takes the shared lock first, so a change committed after
    this answer releases what the caller then holds."""
    _lock_quiet_hours(session, stream_id, exclusive=False)
    settings = session.scalar(select(Stream.settings).where(Stream.id == stream_id))
    return quiet_window(settings or {}) != quiet_window(loaded)


def release_quiet_holds(session: Session, stream_id: uuid.UUID, now: datetime) -> int:
    """Make the stream's quiet-hours holds due at ``now``, in ``session``'s transaction (a
    change of its window; the caller commits); returns how many. They are read off
    ``ix_messages_quiet_held_stream``, none of the stream's other messages; the relay then
    enqueues them in its batches (``ix_messages_outbox_not_before``), as any hold come due.
    The exclusive lock, taken first and kept until the commit, makes a worker's hold under
    the old window either come before (and be found here) or after (and see the new window:
    ``window_changed``)."""
    _lock_quiet_hours(session, stream_id, exclusive=True)
    released = session.execute(
        update(Message)
        .where(Message.stream_id == stream_id, is_quiet_held())
        .values(not_before=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    log.info("quiet_holds_released", stream_id=str(stream_id), count=released)
    return released
