"""``core.database.bulk_insert`` on PostgreSQL: JSON columns, conflicts, counter upserts."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from core.database import bulk_insert
from schemas.tables import Message, Stream, StreamStat


def stream_row(runtime, make_stream) -> Stream:
    stream = make_stream()
    with runtime.session_factory() as session:
        return session.get(Stream, uuid.UUID(stream["id"]))


def message_rows(stream: Stream, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        rows.append(
            {
                "id": uuid.uuid4(),
                "account_id": stream.account_id,
                "stream_id": stream.id,
                "stream_type": "whatsapp",
                "internal_id": None,
                "recipient": "+972524265292",
                "body": "",
                "segments": 1,
                "encoding": "GSM-7",
                "status": "queued",
                "content": {"kind": "template", "name": "order_shipped", "n": index}
                if index % 2 == 0
                else None,
                "attempts": 0,
                "created_at": stream.created_at,
                "updated_at": stream.created_at,
            }
        )
    return rows


def test_json_columns_go_in_whatever_the_row_count(runtime, make_stream):
    """WhatsApp content (a JSON column) in batches of one row and of several."""
    stream = stream_row(runtime, make_stream)
    for count in (1, 5):
        rows = message_rows(stream, count)
        with runtime.session_factory() as session:
            inserted = bulk_insert(session, Message.__table__, rows, returning="id")
            session.commit()
            stored = dict(
                session.execute(
                    select(Message.id, Message.content).where(Message.id.in_(inserted))
                ).all()
            )
        assert stored == {row["id"]: row["content"] for row in rows}


def test_counter_upsert_adds_to_the_existing_row(runtime, make_stream):
    stream = stream_row(runtime, make_stream)
    key = {
        "stream_id": stream.id,
        "bucket_seconds": 60,
        "bucket_start": stream.created_at,
    }
    table = StreamStat.__table__
    for messages in (2, 3):
        with runtime.session_factory() as session:
            bulk_insert(
                session,
                table,
                [
                    {**key, "status": "probe", "messages": messages, "segments": 2 * messages},
                    {**key, "status": "other", "messages": 1, "segments": 1},
                ],
                add_on_conflict=(
                    ["stream_id", "bucket_seconds", "bucket_start", "status"],
                    ["messages", "segments"],
                ),  # fmt: skip
            )
            session.commit()
    with runtime.session_factory() as session:
        rows = session.execute(
            select(StreamStat.status, StreamStat.messages, StreamStat.segments).where(
                StreamStat.stream_id == key["stream_id"], StreamStat.status.in_(["probe", "other"])
            )
        ).all()
    assert sorted(tuple(r) for r in rows) == [("other", 2, 2), ("probe", 5, 10)]
