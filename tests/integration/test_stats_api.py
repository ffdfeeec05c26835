"""``GET /api/v1/streams/{id}/stats``: read from the rollup, equal to a count over the
messages, validated, and walled off between accounts (invariant 4)."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from core.message_states import transition
from core.settings import SandboxSettings
from core.stats_rollup import (
    DAY,
    HOUR,
    MINUTE,
    Retraction,
    add_to_rollup,
    bucket_start,
    read_stats,
    retract_from_rollup,
    rollup_increments,
)
from schemas.enums import FINAL_MESSAGE_STATUSES, MessageStatus
from schemas.events import StatusChange
from schemas.tables import Message, MessageEvent, StreamStat
from tests.conftest import auth, message
from tests.deliveries import delivery_with
from tests.processes import wait_until
from workers.pool import start_worker
from workers.providers.sandbox import SandboxProvider


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def stats(client, key, stream_id, **params):
    return client.get(f"/api/v1/streams/{stream_id}/stats", params=params, headers=auth(key))


def settle(runtime, stream_id: str, count: int) -> None:
    def all_final() -> bool:
        with runtime.session_factory() as session:
            done = session.scalar(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.stream_id == uuid.UUID(stream_id),
                    Message.status.in_([s.value for s in FINAL_MESSAGE_STATUSES]),
                )
            )
        return done == count

    assert wait_until(all_final, timeout=30, interval=0.1)


def test_stats_from_the_rollup_match_a_count_over_messages(
    client, runtime, settings, make_stream, account_key
):
    stream = make_stream(demo=True)
    bodies = ["short", "ж" * 100, "x" * 400]  # 1, 2 (UCS-2) and 3 segments
    sent = client.post(
        "/v1/messages",
        json={"messages": [message(message_content=bodies[i % 3]) for i in range(45)]},
        headers=auth(stream["token"]),
    )
    assert sent.json()["accepted"] == 45
    runtime.settings = settings.model_copy(
        update={
            "sandbox": settings.sandbox.model_copy(
                update={"failure_rate": 0.2, "undelivered_rate": 0.2}
            )
        }
    )
    worker = start_worker(runtime, ["transactional"], threads=4)
    try:
        settle(runtime, stream["id"], 45)
    finally:
        worker.stop(timeout=5_000)

    now = runtime.clock()
    response = stats(
        client,
        account_key,
        stream["id"],
        **{"from": iso(now - timedelta(hours=1)), "to": iso(now + timedelta(minutes=2))},
    )
    assert response.status_code == 200, response.text
    body = response.json()

    key = uuid.UUID(stream["id"])
    with runtime.session_factory() as session:
        created = session.execute(
            select(func.count(), func.sum(Message.segments)).where(Message.stream_id == key)
        ).one()
        by_event = dict(
            session.execute(
                select(MessageEvent.status, func.count())
                .join(Message, Message.id == MessageEvent.message_id)
                .where(Message.stream_id == key)
                .group_by(MessageEvent.status)
            ).all()
        )
        by_final_status = dict(
            session.execute(
                select(Message.status, func.count())
                .where(Message.stream_id == key)
                .group_by(Message.status)
            ).all()
        )
        sent_segments = session.scalar(
            select(func.sum(Message.segments)).where(
                Message.stream_id == key,
                Message.status.in_(["sent", "delivered", "undelivered"]),
            )
        )
    assert body["accepted"] == created[0] == 45
    assert body["segments"]["accepted"] == created[1] == 15 * (1 + 2 + 3)
    assert body["counts"] == {s.value: by_event.get(s.value, 0) for s in MessageStatus}
    for final in ("delivered", "undelivered", "failed"):
        assert body["counts"][final] == by_final_status.get(final, 0)
    assert body["segments"]["sent"] == sent_segments
    assert by_final_status.get("failed", 0) > 0 and by_final_status.get("delivered", 0) > 0
    settled = sum(by_final_status.get(s, 0) for s in ("delivered", "undelivered", "failed"))
    assert body["delivery_rate"] == round(by_final_status["delivered"] / settled, 4)
    series = body["throughput_per_minute"]
    assert series["bucket_seconds"] == MINUTE
    assert sum(p["sent"] for p in series["points"]) == body["counts"]["sent"]
    assert sum(p["accepted"] for p in series["points"]) == 45
    assert body["last_activity_at"] is not None
    assert body["from"].endswith(":00Z") and body["to"].endswith(":00Z")


def test_the_rollup_written_with_the_claim_and_the_record_matches_the_history(
    client, runtime, make_stream
):
    """On PostgreSQL the delivery path's claim and record write their rollup in SQL
    (``rollup_upsert_sql``); every bucket of every granularity must equal what
    ``rollup_increments`` makes of the history rows, "accepted" included."""
    stream = make_stream(demo=True)
    bodies = ["short", "ж" * 100, "x" * 400]
    ids = [
        client.post(
            "/v1/messages",
            json={"messages": [message(message_content=bodies[i % 3]) for i in range(30)]},
            headers=auth(stream["token"]),
        ).json()["results"]
    ][0]
    carrier = SandboxProvider(SandboxSettings(receipt_delay_seconds=0), runtime.redis)
    result = delivery_with(runtime, carrier).deliver_many([item["message_id"] for item in ids])
    assert result.failed == [] and result.handed_back == []

    key = uuid.UUID(stream["id"])
    with runtime.session_factory() as session:
        events = session.execute(
            select(MessageEvent.status, MessageEvent.at, MessageEvent.detail, Message)
            .join(Message, Message.id == MessageEvent.message_id)
            .where(Message.stream_id == key)
        ).all()
        stored = {
            (row.bucket_seconds, row.bucket_start, row.status): (row.messages, row.segments)
            for row in session.scalars(select(StreamStat).where(StreamStat.stream_id == key))
        }
    assert {status for status, *_ in events} == {"queued", "sending", "sent", "delivered"}
    expected = {
        (row["bucket_seconds"], row["bucket_start"], row["status"]): (
            row["messages"],
            row["segments"],
        )
        for row in rollup_increments(
            StatusChange(
                message_id=m.id,
                stream_id=m.stream_id,
                account_id=m.account_id,
                stream_type=m.stream_type,
                status=MessageStatus(status),
                at=at,
                segments=m.segments,
                detail=detail,
            )
            for status, at, detail, m in events
        )
    }
    assert stored == expected
    assert stored[(DAY, bucket_start(events[0].at, DAY), "delivered")] == (30, 60)


def test_a_rolled_back_change_is_not_counted(client, runtime, make_stream):
    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    with runtime.session_factory() as session:
        transition(
            session,
            uuid.UUID(message_id),
            to=MessageStatus.canceled,
            allowed_from=[MessageStatus.queued],
            at=runtime.clock(),
        )
        session.rollback()
    now = runtime.clock()
    with runtime.session_factory() as session:
        totals = read_stats(
            session,
            uuid.UUID(stream["id"]),
            now.replace(second=0, microsecond=0) - timedelta(hours=1),
            now.replace(second=0, microsecond=0) + timedelta(minutes=1),
        )
    assert totals.counts == {"queued": 1, "accepted": 1}


def test_the_rollup_stays_exact_under_concurrent_writers(client, runtime, make_stream):
    """Many transactions increment the same rows at once: none is lost, none deadlocks."""
    stream = make_stream()
    ids = [
        r["message_id"]
        for r in client.post(
            "/v1/messages",
            json={"messages": [message() for _ in range(200)]},
            headers=auth(stream["token"]),
        ).json()["results"]
    ]
    errors: list[BaseException] = []

    def move(chunk: list[str]) -> None:
        try:
            for message_id in chunk:
                for to, allowed in (
                    (MessageStatus.sending, MessageStatus.queued),
                    (MessageStatus.sent, MessageStatus.sending),
                ):
                    with runtime.session_factory() as session:
                        transition(
                            session,
                            uuid.UUID(message_id),
                            to=to,
                            allowed_from=[allowed],
                            at=runtime.clock(),
                        )
                        session.commit()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(ids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with runtime.session_factory() as session:
        rollup = dict(
            session.execute(
                select(StreamStat.status, func.sum(StreamStat.messages))
                .where(
                    StreamStat.stream_id == uuid.UUID(stream["id"]),
                    StreamStat.bucket_seconds == HOUR,
                )
                .group_by(StreamStat.status)
            ).all()
        )
    assert rollup == {"accepted": 200, "queued": 200, "sending": 200, "sent": 200}


def test_long_ranges_read_hours_with_minutes_at_the_ragged_ends(
    client, runtime, make_stream, account_key
):
    stream = make_stream()
    key = uuid.UUID(stream["id"])
    day = datetime(2026, 3, 1, tzinfo=UTC)

    def at(hours: float) -> StatusChange:
        return StatusChange(
            message_id=uuid.uuid4(),
            stream_id=key,
            account_id=uuid.uuid4(),
            stream_type="transactional",
            status=MessageStatus.sent,
            at=day + timedelta(hours=hours),
            segments=2,
        )

    moments = [0.2, 0.26, 1.0, 5.5, 30.0, 24 * 9 + 0.1, 24 * 9 + 0.49, 24 * 9 + 0.5]
    with runtime.session_factory() as session:
        add_to_rollup(session, [at(h) for h in moments])
        session.commit()
    start = day + timedelta(minutes=15)  # 00:15, inside the first hour
    end = day + timedelta(days=9, minutes=30)  # 9 days later at 00:30
    body = stats(client, account_key, stream["id"], **{"from": iso(start), "to": iso(end)}).json()
    # 0.2 h = 00:12 is before the range; 9 d + 0.5 h = 00:30 is its excluded end.
    assert body["counts"]["sent"] == 6
    assert body["segments"]["sent"] == 12
    series = body["throughput_per_minute"]
    assert series["bucket_seconds"] == 86400
    assert [p["sent"] for p in series["points"]] == [3, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    with runtime.session_factory() as session:
        whole = read_stats(session, key, day, day + timedelta(days=10))
        assert whole.counts["sent"] == len(moments)


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"from": "yesterday"}, "from", "invalid_timestamp"),
        ({"to": "2026-13-01T00:00:00Z"}, "to", "invalid_timestamp"),
        ({"from": "2026-05-01T00:00:00"}, "from", "invalid_timestamp"),
        ({"from": "2026-05-02T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "from", "invalid_range"),
        ({"from": "2026-05-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "from", "invalid_range"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "from", "range_too_long"),
        ({"from": "2026-05-01T00:00:00Z" + " " * 40}, "from", "invalid_field"),
        (
            {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"},
            "from",
            "invalid_timestamp",
        ),
        (
            {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
            "from",
            "invalid_timestamp",
        ),
    ],
)
def test_invariant_7_bad_ranges_are_refused_naming_the_field(
    client, make_stream, account_key, params, field, code
):
    stream = make_stream()
    response = stats(client, account_key, stream["id"], **params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert response.json()["error"]["code"] == code


def test_an_unescaped_plus_in_the_offset_is_understood(client, make_stream, account_key):
    stream = make_stream()
    response = client.get(
        f"/api/v1/streams/{stream['id']}/stats?from=2026-05-01T00:00:00+02:00&to=2026-05-01T06:00:00+02:00",
        headers=auth(account_key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["from"] == "2026-04-30T22:00:00Z"
    assert len(response.json()["throughput_per_minute"]["points"]) == 360


def test_invariant_4_another_accounts_stats_answer_404(
    client, runtime, make_stream, account_key, other_account_key
):
    stream = make_stream()
    client.post("/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"]))
    for stream_id in (stream["id"], str(uuid.uuid4()), "not-a-uuid"):
        response = stats(client, other_account_key, stream_id)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert stats(client, account_key, stream["id"]).json()["accepted"] == 1
    client.delete(f"/api/v1/streams/{stream['id']}", headers=auth(account_key))
    assert stats(client, account_key, stream["id"]).status_code == 404


def test_stats_need_an_account_key(client, make_stream, runtime):
    stream = make_stream()
    assert stats(client, stream["token"], stream["id"]).status_code == 401


def test_the_stats_query_never_reads_messages(client, runtime, make_stream, account_key):
    """The endpoint's SQL names stream_stats and streams only (the messages table can hold
    ten million rows; see bench/stats.py for the latency)."""
    from sqlalchemy import event

    stream = make_stream()
    statements: list[str] = []

    def capture(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", capture)
    try:
        assert stats(client, account_key, stream["id"]).status_code == 200
    finally:
        event.remove(runtime.engine, "before_cursor_execute", capture)
    assert any("stream_stats" in s for s in statements)
    assert not any(re.search(r"(FROM|JOIN)\s+messages\b", s) for s in statements)


def test_stats_work_on_sqlite(tmp_path):
    """``streams dev`` runs on SQLite: the same upsert and the same reads."""
    from core.database import build_engine, build_session_factory
    from core.migrate import upgrade
    from core.stats_rollup import install_stats_rollup

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    engine = build_engine(url)
    factory = build_session_factory(engine)
    install_stats_rollup(factory)
    stream_id, account_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO accounts (id, name, key_digest, created_at) VALUES (:a, 'a', 'd', :t)"
            ),
            {"a": account_id.hex, "t": datetime.now(UTC)},
        )
        connection.execute(
            text(
                "INSERT INTO streams (id, account_id, name, type, status, disabled, allowed_ips,"
                " demo, settings, created_at, updated_at) VALUES (:s, :a, 'x', 'otp', 'ready', 0,"
                " '[]', 1, '{}', :t, :t)"
            ),
            {"s": stream_id.hex, "a": account_id.hex, "t": datetime.now(UTC)},
        )
    now = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    change = StatusChange(
        message_id=uuid.uuid4(),
        stream_id=stream_id,
        account_id=account_id,
        stream_type="otp",
        status=MessageStatus.queued,
        at=now,
        segments=1,
    )
    for _ in range(2):
        with factory() as session:
            add_to_rollup(session, [change])
            session.commit()
    with factory() as session:
        totals = read_stats(session, stream_id, now - timedelta(days=2), now + timedelta(minutes=1))
    engine.dispose()
    assert totals.counts == {"queued": 2, "accepted": 2}


def test_a_retraction_is_written_only_by_the_commit_of_its_own_transaction(runtime, make_stream):
    """A retraction waits for its transaction's commit, and goes with a rollback: a
    receipt whose transaction failed takes nothing out of the stats, now or later."""
    key = uuid.UUID(make_stream()["id"])
    at = runtime.clock()

    def failed_rows() -> list[tuple[int, int]]:
        with runtime.session_factory() as session:
            return sorted(
                session.execute(
                    select(StreamStat.messages, StreamStat.segments).where(
                        StreamStat.stream_id == key, StreamStat.status == "failed"
                    )
                ).all()
            )

    with runtime.session_factory() as session:
        session.execute(select(1))  # in a transaction, as a receipt's look-up is
        retract_from_rollup(session, Retraction(key, MessageStatus.failed, at, 2))
        session.rollback()
        session.commit()
        assert failed_rows() == []
        retract_from_rollup(session, Retraction(key, MessageStatus.failed, at, 2))
        assert failed_rows() == [], "written with the commit, not before"
        session.commit()
    assert failed_rows() == [(-1, -2)] * 3
