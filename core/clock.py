"""Time, passed in rather than read globally, so tests can move it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC. A naive one is taken as UTC already: SQLite hands back naive
    datetimes, and everything we store is UTC. An aware one is converted: SQLite stores a
    datetime's wall time and drops its offset, so a client's ``10:00-05:00`` must become
    ``15:00+00:00`` before it is stored or compared."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
