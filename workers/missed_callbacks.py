"""Status changes whose callbacks were never written, found in the status history.

A change's callbacks are written by a follow-up job enqueued after its commit
(``workers.queueing``). Nothing in the database says that job is owed, so it was lost when
the process died between the commit and the enqueue, or when Redis lost the job before a
worker took it (a restart without persistence, a failover). This sweep (run by ``streams
relay``, with the callback sweep) reads the status history (``message_events``) once, in id
order, behind a cursor kept in the database (``sweep_cursors``). Each change a customer is
told about, older than the callbacks' sweep grace and of a message that wants callbacks,
whose callback row (named after the change: ``core.callback_events.status_event_id``) is
missing is followed up again. The follow-up is idempotent, so a change the job did
handle is never called back twice.

Its limits: a change is read as old by its own ``at``, the clock of the host that made
it, so a transaction that commits more than the grace after it wrote its history rows, or
a host whose clock runs more than the grace behind the relay's, can slip behind the cursor
(every path that changes a status commits within milliseconds). A job that is only late (a
callbacks backlog longer than the grace) is written by the sweep first; the ids are the
same, so nothing goes out twice. A change of a stream whose ``callback_url`` changed since
(``streams.callbacks_changed_at``; other edits do not count) is left alone unless the
message has its own ``callback_url``: whether it wanted callbacks then is unknown. The
first run starts at the end of the history: it recovers nothing from before it existed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core import metrics
from core.callback_events import status_event_id
from core.clock import as_utc
from core.message_states import EVENTS, MESSAGES
from core.runtime import Runtime
from schemas.tables import CallbackDelivery, Stream
from workers.queueing import NOTIFIED_STATUSES
from workers.status_followup import CALLBACK_STREAM_TYPES, StatusFollowUp, wants_callbacks
from workers.sweep_cursor import read_behind_cursor

log = structlog.get_logger(__name__)

CURSOR = "status_history_callbacks"


class MissedCallbacks:
    def __init__(self, runtime: Runtime, page: int = 2000, max_span: int = 500_000) -> None:
        """``page``: history rows of interest read per query; ``max_span``: history ids one
        run reads at most, so a run after a long stop catches up in steps."""
        self.runtime = runtime
        self.page = page
        self.max_span = max_span
        self._follow_up = StatusFollowUp(runtime)

    def sweep(self) -> int:
        """Write and enqueue the callbacks of every change of the history read this run
        that wants them and has none; returns how many were written. The cursor moves past
        those changes in the same transaction. Reads nothing while another relay's run
        holds the cursor."""
        created = (
            read_behind_cursor(
                self.runtime, CURSOR, EVENTS.c.id, EVENTS.c.at, self.max_span, self._read
            )
            or []
        )
        self._follow_up.enqueue(created)
        if created:
            metrics.CALLBACK_CHANGES_RECOVERED.inc(len(created))
            log.warning("missed_callbacks_recovered", changes=len(created))
        return len(created)

    def _read(self, session: Session, after: int, upto: int) -> list[uuid.UUID]:
        """Write the missing callbacks of the history rows in ``(after, upto]``, a page at a
        time; returns their ids."""
        created: list[uuid.UUID] = []
        position = after
        while position < upto:
            rows = session.execute(
                select(EVENTS.c.id, EVENTS.c.message_id, EVENTS.c.status, EVENTS.c.at)
                .add_columns(EVENTS.c.detail, MESSAGES.c.stream_id, MESSAGES.c.callback_url)
                .join(MESSAGES, MESSAGES.c.id == EVENTS.c.message_id)
                .where(
                    EVENTS.c.id > position,
                    EVENTS.c.id <= upto,
                    EVENTS.c.status.in_(sorted(NOTIFIED_STATUSES)),
                    or_(
                        MESSAGES.c.stream_type.in_(sorted(CALLBACK_STREAM_TYPES)),
                        MESSAGES.c.callback_url.is_not(None),
                    ),
                )
                .order_by(EVENTS.c.id)
                .limit(self.page)
            ).all()
            position = rows[-1].id if len(rows) == self.page else upto
            created += self._write_missing(session, rows)
        return created

    def _write_missing(self, session: Session, rows: Sequence[Any]) -> list[uuid.UUID]:
        """Write, in ``session``, the callbacks of the changes in ``rows`` that want them
        and have none; returns their ids."""
        if not rows:
            return []
        streams = {
            stream.id: stream
            for stream in session.scalars(
                select(Stream).where(Stream.id.in_({row.stream_id for row in rows}))
            )
        }
        owed: dict[uuid.UUID, list[Any]] = {}
        for row in rows:
            stream = streams.get(row.stream_id)
            if stream is None or stream.deleted_at is not None:
                continue
            if not wants_callbacks(stream.type, stream.settings, row.callback_url):
                continue
            set_up_at = stream.callbacks_changed_at or stream.updated_at
            if row.callback_url is None and as_utc(set_up_at) > as_utc(row.at):
                # The stream's callback_url changed since: whether it wanted callbacks then
                # is unknown, and a customer who just configured them is not sent the past.
                continue
            at = as_utc(row.at).astimezone(UTC)
            owed[status_event_id(row.message_id, row.status, at)] = [
                str(row.message_id),
                row.status,
                at.isoformat(),
                row.detail,
            ]
        if not owed:
            return []
        written = set(
            session.scalars(select(CallbackDelivery.id).where(CallbackDelivery.id.in_(owed)))
        )
        missing = [change for event_id, change in owed.items() if event_id not in written]
        return self._follow_up.write(session, missing) if missing else []
