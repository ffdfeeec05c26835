"""Message status changes. Each change is a conditional update plus a history row, so two
processes racing on one message cannot both move it (invariant 2). Every change is also
queued on the session and published by ``core.status_feed`` once committed.

Statements go to the ``messages`` table through SQLAlchemy Core, not the ORM's bulk-update
path: these run several times per message sent, and the ORM's per-statement bookkeeping cost
more than the database work (``bench/throughput.py --profile``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from core.database import bulk_insert
from core.stats_rollup import rollup_upsert_sql
from core.status_feed import pending_changes
from core.status_kinds import ENTRY_STATUSES
from schemas.enums import MessageStatus
from schemas.events import StatusChange
from schemas.tables import Message, MessageEvent

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
EVENTS: Table = MessageEvent.__table__  # type: ignore[assignment]
_CHANGE_COLUMNS = (
    MESSAGES.c.id,
    MESSAGES.c.stream_id,
    MESSAGES.c.account_id,
    MESSAGES.c.stream_type,
    MESSAGES.c.segments,
)


def transition(
    session: Session,
    message_id: uuid.UUID,
    *,
    to: MessageStatus,
    allowed_from: Iterable[MessageStatus],
    at: datetime,
    detail: str | None = None,
    values: dict[str, Any] | None = None,
    claim: int | None = None,
) -> StatusChange | None:
    """Move a message to ``to`` if its status is one of ``allowed_from`` (and, with
    ``claim``, the attempt number of the caller's claim, if the message is still on that
    attempt: a claim another worker has taken since counted one more).

    Returns the change, or None (changing nothing) when another process moved it first.
    The caller commits.
    """
    conditions = [
        MESSAGES.c.id == message_id,
        MESSAGES.c.status.in_([s.value for s in allowed_from]),
    ]
    if claim is not None:
        conditions.append(MESSAGES.c.attempts == claim)
    statement = (
        update(MESSAGES)
        .where(*conditions)
        .values(status=to.value, updated_at=at, **(values or {}))
        .returning(*_CHANGE_COLUMNS)
    )
    row = session.execute(statement).first()
    if row is None:
        return None
    change = _change(row, to, at, detail)
    record_changes(session, [change])
    return change


def _change(
    row: Any,
    status: MessageStatus,
    at: datetime,
    detail: str | None,
    follow_up: bool = True,
    in_rollup: bool = False,
) -> StatusChange:
    """The change of the message in ``row`` (the columns of ``_CHANGE_COLUMNS``)."""
    return StatusChange(
        message_id=row.id,
        stream_id=row.stream_id,
        account_id=row.account_id,
        stream_type=row.stream_type,
        status=status,
        at=at,
        segments=row.segments,
        detail=detail,
        follow_up=follow_up,
        in_rollup=in_rollup,
    )


@dataclass(frozen=True, slots=True)
class Move:
    """One message's part in ``move_many``."""

    message_id: uuid.UUID
    #: The statuses the message goes through, in order, each with its history detail; the
    #: row ends in the last one. ``((sent, None), (delivered, None))`` records a send and its
    #: receipt at once.
    steps: tuple[tuple[MessageStatus, str | None], ...]
    #: Other columns to set on this row. A None value leaves the column as it is.
    values: Mapping[str, Any] = field(default_factory=dict)
    #: Passed on to the changes (``StatusChange.follow_up``).
    follow_up: bool = True
    #: The attempt number of the caller's claim: the row moves only while it is still on
    #: that attempt (no other worker has claimed it since). None: any.
    claim: int | None = None


def move_many(
    session: Session,
    moves: Sequence[Move],
    *,
    allowed_from: Iterable[MessageStatus],
    at: datetime,
    columns: Sequence[str] = (),
) -> list[StatusChange]:
    """Move each message whose status is one of ``allowed_from`` through its steps, with one
    UPDATE for all of them on PostgreSQL (one per message elsewhere). ``columns`` names the
    ``values`` keys the moves may carry. On PostgreSQL the same statement writes the history
    rows and the stats rollup of the messages it moved; no step may be an entry status.

    Returns the changes made, in the order of ``moves``; a message another process moved
    first is left out. The caller commits.
    """
    if not moves:
        return []
    if any(status in ENTRY_STATUSES for move in moves for status, _ in move.steps):
        # The rollup written with the move has no "accepted" row (rollup_upsert_sql).
        raise ValueError("move_many does not move messages into an entry status")
    allowed = tuple(sorted(s.value for s in allowed_from))
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        # One statement moves the rows and writes the history of those it moved.
        statement = _move_many_statement(dialect, tuple(columns), allowed)
        steps = [(m.message_id, status, detail) for m in moves for status, detail in m.steps]
        params: dict[str, Any] = {
            "at": at,
            "ids": [m.message_id for m in moves],
            "claims": [m.claim for m in moves],
            "statuses": [m.steps[-1][0].value for m in moves],
            **{f"c_{name}": [m.values.get(name) for m in moves] for name in columns},
            "h_ids": [step[0] for step in steps],
            "h_statuses": [step[1].value for step in steps],
            "h_details": [step[2] for step in steps],
        }
        rows = {row.id: row for row in session.execute(statement, params)}
        changes = _changes_of(moves, rows, at, in_rollup=True)
        queue_changes(session, changes)
        return changes
    else:
        rows = {}
        for move in moves:
            row = session.execute(
                update(MESSAGES)
                .where(
                    MESSAGES.c.id == move.message_id,
                    MESSAGES.c.status.in_(allowed),
                    *([MESSAGES.c.attempts == move.claim] if move.claim is not None else []),
                )
                .values(
                    status=move.steps[-1][0].value,
                    updated_at=at,
                    **{k: v for k, v in move.values.items() if v is not None},
                )
                .returning(*_CHANGE_COLUMNS)
            ).first()
            if row is not None:
                rows[row.id] = row
    changes = _changes_of(moves, rows, at)
    record_changes(session, changes)
    return changes


def _changes_of(
    moves: Sequence[Move], rows: Mapping[uuid.UUID, Any], at: datetime, in_rollup: bool = False
) -> list[StatusChange]:
    """The changes of the ``moves`` whose row moved (``rows`` by id), in order."""
    return [
        _change(row, status, at, detail, move.follow_up, in_rollup)
        for move in moves
        if (row := rows.get(move.message_id)) is not None
        for status, detail in move.steps
    ]


@cache
def _move_many_statement(dialect: Dialect, columns: tuple[str, ...], allowed: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """``UPDATE messages ... FROM unnest(arrays)`` and, in the same statement, the history
    rows of the messages it moved (``h_*``: one element per step, in order; the rows get
    their ids in that order, so a send and its receipt read back in the order they
    happened). One statement whatever the row count, its text the same for every batch
    (so the server's prepared plan is reused)."""

    def array(name: str, type_: Any) -> str:
        return f"CAST(:{name} AS {type_.compile(dialect=dialect)}[])"

    def column_array(name: str, column: str) -> str:
        return array(name, MESSAGES.c[column].type)

    arrays = [
        column_array("ids", "id"),
        column_array("claims", "attempts"),
        column_array("statuses", "status"),
    ]
    arrays += [column_array(f"c_{name}", name) for name in columns]
    names = ["id", "claim", "status", *(f"c_{name}" for name in columns)]
    sets = ["status = v.status", "updated_at = :at"]
    sets += [f"{name} = coalesce(v.c_{name}, m.{name})" for name in columns]
    allowed_list = ", ".join(f"'{status}'" for status in allowed)
    history = [
        array("h_ids", EVENTS.c.message_id.type),
        array("h_statuses", EVENTS.c.status.type),
        array("h_details", EVENTS.c.detail.type),
    ]
    rollup = rollup_upsert_sql(
        "SELECT moved.stream_id, steps.status, moved.segments "
        "FROM steps JOIN moved ON moved.id = steps.id",
        "at",
    )
    return text(
        f"WITH moved AS (UPDATE messages AS m SET {', '.join(sets)} "
        f"FROM unnest({', '.join(arrays)}) AS v({', '.join(names)}) "
        f"WHERE m.id = v.id AND m.status IN ({allowed_list}) "
        "AND (v.claim IS NULL OR m.attempts = v.claim) "
        "RETURNING m.id, m.stream_id, m.account_id, m.stream_type, m.segments), "
        "steps AS (SELECT h.id, h.status, h.detail, h.n "
        f"FROM unnest({', '.join(history)}) WITH ORDINALITY AS h(id, status, detail, n) "
        "WHERE h.id IN (SELECT id FROM moved)), "
        "history AS (INSERT INTO message_events (message_id, status, at, detail) "
        "SELECT id, status, :at, detail FROM steps ORDER BY n), "
        f"rollup AS ({rollup}) "
        "SELECT id, stream_id, account_id, stream_type, segments FROM moved"
    ).bindparams(bindparam("at", type_=EVENTS.c.at.type))


def record_changes(session: Session, changes: Sequence[StatusChange]) -> None:
    """Append the history rows (one INSERT for all) and queue the changes for publishing."""
    if not changes:
        return
    bulk_insert(
        session,
        EVENTS,
        [
            {"message_id": c.message_id, "status": c.status.value, "at": c.at, "detail": c.detail}
            for c in changes
        ],
    )
    queue_changes(session, changes)


def queue_changes(session: Session, changes: Sequence[StatusChange]) -> None:
    """Queue changes whose history rows the statement that made them already wrote, for
    publishing after commit (and for the stats rollup before it, unless ``in_rollup``)."""
    pending_changes(session).extend(changes)
