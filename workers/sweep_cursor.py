"""A sweep that reads an append-only table once, in id order, behind a cursor kept in the
database (``sweep_cursors``): each run starts after the cursor's ``position``, reads rows
old enough to be settled, and moves the cursor past them in its own transaction. The
cursor's row is locked for the run (``SKIP LOCKED``), so two relays never read the same
rows, and neither waits for the other."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.database import insert_ignoring_duplicates
from schemas.tables import SweepCursor

log = structlog.get_logger(__name__)


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
