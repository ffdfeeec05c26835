"""Rows of ``messages`` written straight to the table, for tests that need many of them in
given states (a delivered history, a backlog) faster than the API would make them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, text

from schemas.tables import Message, Stream
from tests.conftest import auth


def account_of(runtime: Any, stream: dict[str, Any]) -> uuid.UUID:
    """The account that owns ``stream`` (an API body)."""
    with runtime.session_factory() as session:
        return session.scalar(select(Stream.account_id).where(Stream.id == uuid.UUID(stream["id"])))


def message_rows(
    stream: dict[str, Any], account_id: uuid.UUID, count: int, now: datetime, **fields: Any
) -> list[dict[str, Any]]:
    """``count`` one-segment messages of ``stream`` (an API body), made and marked enqueued
    a day before ``now``; ``fields`` override any column (``status`` is required)."""
    return [
        {
            "id": uuid.uuid4(),
            "account_id": account_id,
            "stream_id": uuid.UUID(stream["id"]),
            "stream_type": stream["type"],
            "recipient": "+972524265292",
            "body": "Your parcel is on its way",
            "segments": 1,
            "encoding": "GSM-7",
            "attempts": 1,
            "created_at": now - timedelta(days=1),
            "updated_at": now - timedelta(days=1),
            "enqueued_at": now - timedelta(days=1),
            **fields,
        }
        for _ in range(count)
    ]


def write_then_pause(
    runtime: Any,
    client: Any,
    account_key: str,
    stream: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    """Write ``rows`` straight to ``messages``, disable ``stream`` through the API, and
    ANALYZE the table, so the plans that follow see the rows."""
    with runtime.session_factory() as session:
        session.execute(insert(Message), rows)
        session.commit()
    disabled = client.post(f"/api/v1/streams/{stream['id']}/disable", headers=auth(account_key))
    assert disabled.status_code == 200, disabled.text
    with runtime.engine.connect() as connection:
        connection.execute(text("ANALYZE messages"))
        connection.commit()
