"""Status changes, published after commit to whoever listens (metrics, and later customer
callbacks, the realtime feed and the stats rollup).

``message_states`` records each change on the session; ``StatusFeed`` hooks the session
factory so that a commit hands the changes to every listener and a rollback drops them.
A listener that fails is logged and never undoes the commit or stops the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session

from core import metrics
from core.database import SessionFactory
from schemas.events import StatusChange

log = structlog.get_logger(__name__)

StatusListener = Callable[[Sequence[StatusChange]], None]
PENDING_KEY = "streams.pending_status_changes"


def pending_changes(session: Session) -> list[StatusChange]:
    """The changes recorded in this session's transaction, to be published on commit."""
    return session.info.setdefault(PENDING_KEY, [])  # type: ignore[no-any-return]


def count_in_metrics(changes: Sequence[StatusChange]) -> None:
    """``streams_messages_total{type,status}``: one per change, added once per label pair
    (a commit's changes share a few pairs; looking a labelled child up costs more than the
    increment)."""
    counts = Counter((change.stream_type, change.status.value) for change in changes)
    for (stream_type, status), count in counts.items():
        metrics.MESSAGES.labels(stream_type, status).inc(count)


class StatusFeed:
    def __init__(self, listeners: Sequence[StatusListener] = (count_in_metrics,)) -> None:
        self._listeners: list[StatusListener] = list(listeners)

    def subscribe(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def install(self, session_factory: SessionFactory) -> None:
        """Publish every session's status changes when it commits."""
        event.listen(session_factory, "after_commit", self._after_commit)
        event.listen(session_factory, "after_rollback", self._after_rollback)

    def publish(self, changes: Sequence[StatusChange]) -> None:
        for listener in self._listeners:
            try:
                listener(changes)
            except Exception:
                log.exception("status_listener_failed", listener=getattr(listener, "__name__", "?"))

    def _after_commit(self, session: Session) -> None:
        changes = session.info.pop(PENDING_KEY, None)
        if changes:
            self.publish(changes)

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(PENDING_KEY, None)
