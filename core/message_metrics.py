"""Message metrics counted from committed status changes (``StatusFeed`` listeners)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from core import metrics
from core.status_kinds import is_acceptance
from schemas.events import StatusChange


def count_acceptances(changes: Sequence[StatusChange]) -> None:
    """``streams_messages_accepted_total{type}``: messages entering the system.

    ``streams_messages_total{status="queued"}`` counts retries and releases as well; this
    counts each message once.
    """
    counts = Counter(change.stream_type for change in changes if is_acceptance(change))
    for stream_type, count in counts.items():
        metrics.MESSAGES_ACCEPTED.labels(stream_type).inc(count)
