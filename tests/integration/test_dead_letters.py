"""Message dead letters: replayed once and only once (invariant 2)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from core.dead_letters import ReplayRefused, record_dead_letter, replay_dead_letter
from core.message_states import transition
from schemas.enums import MessageStatus
from schemas.tables import DeadLetter, Message, MessageEvent
from tests.conftest import auth, message


def send(client, token: str, *items: dict) -> list[str]:
    response = client.post("/v1/messages", json={"messages": list(items)}, headers=auth(token))
    assert response.status_code == 202, response.text
    return [r["message_id"] for r in response.json()["results"]]


def status_of(runtime, message_id: str) -> str:
    with runtime.session_factory() as session:
        found = session.get(Message, uuid.UUID(message_id))
        assert found is not None
        return found.status


def fail_as_dead_letter(runtime, message_id: str) -> uuid.UUID:
    """Put a queued message where exhausted retries leave it: failed, with a dead letter."""
    now = runtime.clock()
    with runtime.session_factory() as session:
        assert transition(
            session,
            uuid.UUID(message_id),
            to=MessageStatus.failed,
            allowed_from=[MessageStatus.queued],
            at=now,
            values={"error_code": "provider_unavailable", "error_message": "HTTP 503"},
        )
        letter = record_dead_letter(
            session,
            uuid.UUID(message_id),
            reason="retries_exhausted",
            error_message="HTTP 503",
            at=now,
        )
        assert letter is not None
        session.commit()
        return letter.id


# --------------------------------------------------------------- replay, once (invariant 2)


def test_a_stale_concurrent_replay_is_refused_as_already_replayed(
    runtime, client, make_stream, account_key
):
    """Two replays race and the second read the letter before the first committed; the
    first replay's send then fails again. The second must still be refused: the claim on
    ``replayed_at`` is conditional, not a check of a stale read."""
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    letter_id = fail_as_dead_letter(runtime, message_id)

    slow = runtime.session_factory()
    try:
        stale = slow.scalars(select(DeadLetter).where(DeadLetter.id == letter_id)).one()
        assert stale.replayed_at is None
        first = client.post(f"/api/v1/dead-letters/{letter_id}/replay", headers=auth(account_key))
        assert first.status_code == 202, first.text
        with runtime.session_factory() as session:
            assert transition(
                session,
                uuid.UUID(message_id),
                to=MessageStatus.failed,
                allowed_from=[MessageStatus.queued],
                at=runtime.clock(),
                values={"error_code": "provider_rejected"},
            )
            session.commit()

        with pytest.raises(ReplayRefused) as refused:
            replay_dead_letter(slow, stale, runtime.clock())
        assert refused.value.code == "already_replayed"
    finally:
        slow.rollback()
        slow.close()

    assert status_of(runtime, message_id) == "failed"
    with runtime.session_factory() as session:
        requeued = session.scalars(
            select(MessageEvent.status).where(
                MessageEvent.message_id == uuid.UUID(message_id),
                MessageEvent.detail == "replayed from dead letters",
            )
        ).all()
    assert len(requeued) == 1
