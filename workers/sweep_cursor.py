"""A sweep that reads an append-only table once, in id order, behind a cursor kept in the
database (``sweep_cursors``): each run starts after the cursor's ``position``, reads rows
old enough to be settled, and moves the cursor past them in its own transaction. The
cursor's row is locked for the run (``SKIP LOCKED``), so two relays never read the same
rows, and neither waits for the other."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.database import insert_ignoring_duplicates
from core.runtime import Runtime
from schemas.tables import SweepCursor

log = structlog.get_logger(__name__)

T = TypeVar("T")


def read_behind_cursor(
    runtime: Runtime,
    name: str,
    ids: Any,
    moments: Any,
    max_span: int,
    read: Callable[[Session, int, int], T],
) -> T | None:
    """One run of the sweep behind cursor ``name``: ``read(session, after, upto)`` handles
    the rows with ids in ``(after, upto]`` (``ids``, the table's id column) that are older
    than the callbacks' sweep grace (by ``moments``, its time column), and the cursor moves
    to ``upto`` in the same transaction. Returns what ``read`` returned; None while another
    run holds the cursor, or when there is nothing new to read."""
    now = runtime.clock()
    grace = timedelta(seconds=runtime.settings.callbacks.sweep_grace_seconds)
    with runtime.session_factory() as session:
        cursor = locked_cursor(session, name, ids, now)
        if cursor is None:
            return None
        start = cursor.position
        end = window_end(session, cursor, ids, moments, now - grace, max_span)
        result = read(session, start, end) if end > start else None
        cursor.position = end
        cursor.updated_at = now
        session.commit()
    return result


def locked_cursor(session: Session, name: str, ids: Any, now: datetime) -> SweepCursor | None:
    """Cursor ``name``'s row, locked for this run; made at the end of the table (the last
    of ``ids``, its id column) on the first run. None while another run holds it."""
    locked = select(SweepCursor).where(SweepCursor.name == name).with_for_update(skip_locked=True)
    cursor = session.scalars(locked).first()
    if cursor is not None:
        return cursor
    last = session.scalar(select(func.max(ids))) or 0
    session.execute(
        insert_ignoring_duplicates(session, SweepCursor, ["name"]),
        {"name": name, "position": last, "updated_at": now},
    )
    session.commit()
    return session.scalars(locked).first()


def window_end(
    session: Session,
    cursor: SweepCursor,
    ids: Any,
    moments: Any,
    before: datetime,
    max_span: int,
) -> int:
    """The last id this run reads: the one before the first row whose moment (``moments``,
    a column) is at or after ``before`` (not settled yet), at most ``max_span`` ids past
    the cursor. A span holding no rows (ids a rolled-back insert used up) is passed."""
    start = cursor.position
    limit = start + max_span
    first_recent = session.scalar(
        select(func.min(ids)).where(ids > start, ids <= limit, moments >= before)
    )
    if first_recent is not None:
        return int(first_recent) - 1
    last = session.scalar(select(func.max(ids)).where(ids > start))
    if last is None:
        return start
    if last > limit:  # more to read than one run takes (or a gap of unused ids)
        log.info("sweep_catching_up", cursor=cursor.name, position=limit, last=int(last))
        return limit
    return int(last)
