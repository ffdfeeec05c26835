"""Where the evidence is read: message statuses and history in PostgreSQL, and what reached
the carrier, counted in the sandbox's ledger in Redis."""

from __future__ import annotations

import redis
from sqlalchemy import func, select

from schemas.tables import Message, MessageEvent
from workers.providers.sandbox import LEDGER_PREFIX, REPEATS_KEY, SUBMISSIONS_KEY


def status_counts(session_factory) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        rows = session.execute(select(Message.status, func.count()).group_by(Message.status))
        return {status: count for status, count in rows}


def messages_with_more_than_one(session_factory, status: str) -> int:  # type: ignore[no-untyped-def]
    """How many messages reached ``status`` more than once in their history."""
    with session_factory() as session:
        repeated = (
            select(MessageEvent.message_id)
            .where(MessageEvent.status == status)
            .group_by(MessageEvent.message_id)
            .having(func.count() > 1)
            .subquery()
        )
        return int(session.scalar(select(func.count()).select_from(repeated)) or 0)


def carrier_ledger(client: redis.Redis) -> tuple[int, int]:
    """``(submissions, repeats)`` at the sandbox carrier: distinct references it took, and
    repeated offers of a reference it already had (answered with the first id, not sent)."""
    return int(client.get(SUBMISSIONS_KEY) or 0), int(client.get(REPEATS_KEY) or 0)


def carrier_references(client: redis.Redis) -> int:
    """How many distinct references the sandbox carrier holds (one ledger key each)."""
    return sum(1 for _ in client.scan_iter(match=LEDGER_PREFIX + "*", count=1000))
