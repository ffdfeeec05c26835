"""Helpers for tests that drive ``workers.delivery.Delivery`` directly: a batch of messages
sent through the API, a delivery bound to a given carrier, the messages' states, and a
message moved through statuses as a worker would move it."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from core.message_states import transition
from schemas.enums import MessageStatus
from schemas.tables import Message
from tests.conftest import auth, message
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider


def send(client, stream, count: int, prefix: str = "b") -> list[str]:  # type: ignore[no-untyped-def]
    """Send ``count`` messages to ``stream`` in one batch; their ids in order."""
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id=f"{prefix}{i}") for i in range(count)]},
        headers=auth(stream["token"]),
    )
    assert answer.status_code == 202, answer.text
    return [item["message_id"] for item in answer.json()["results"]]


def delivery_with(runtime, carrier: SandboxProvider) -> Delivery:  # type: ignore[no-untyped-def]
    return Delivery(
        runtime, ProviderRegistry({"sandbox": carrier}, "sandbox"), RedisAdmission(runtime.redis)
    )


def states(runtime, ids: list[str]) -> dict[str, tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Each message's (status, attempts)."""
    with runtime.session_factory() as session:
        rows = session.execute(
            select(Message.id, Message.status, Message.attempts).where(
                Message.id.in_([uuid.UUID(i) for i in ids])
            )
        ).all()
    return {str(row.id): (row.status, row.attempts) for row in rows}


def move(  # type: ignore[no-untyped-def]
    runtime, message_id: str, *steps: MessageStatus, start=MessageStatus.queued, **values
) -> None:
    """Move a message through ``steps`` (each from the one before, the first from
    ``start``) in one committed transaction."""
    with runtime.session_factory() as session:
        came_from = start
        for to in steps:
            assert transition(
                session,
                uuid.UUID(message_id),
                to=to,
                allowed_from=[came_from],
                at=runtime.clock(),
                values=values or None,
            )
            came_from = to
        session.commit()
