"""The status searches on ``messages`` read partial indexes over the few messages in the
state they search (migration 0011), with the status spelled as a constant, so that neither a
custom nor a generic plan walks the table of delivered messages. And a delivered message is
in none of them: its status changes add no entries there."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import insert, text

from core.runtime import build_runtime
from dispatcher.realtime_feed import FeedFilters, load_feed_streams
from schemas.tables import STREAM_PAUSED_HOLD, Message
from tests.conftest import auth
from tests.message_rows import account_of, message_rows, write_then_pause
from tests.query_plans import generic_plan, run_plans, statements_run
from workers.relay import Relay

STATUS_INDEXES = {
    "ix_messages_in_flight_stream",
    "ix_messages_scheduled_send_at",
    "ix_messages_sending_claimed",
    "ix_messages_outbox_not_before",
    "ix_messages_queued_type_enqueued",
    "ix_messages_parked_expires",
    "ix_messages_scheduled_stream",
}


def _reads_of_messages_by_status(engine, work) -> list[tuple[str, dict]]:
    """The SELECTs on messages with a status condition that ``work`` ran on ``engine``."""
    return statements_run(
        engine,
        work,
        lambda statement: (
            statement.lstrip().upper().startswith("SELECT") and "messages.status" in statement
        ),
    )


def test_status_searches_read_partial_indexes_with_the_status_as_a_constant(
    runtime, client, account_key, make_stream
):
    orders = make_stream()
    account_id = account_of(runtime, orders)
    now = runtime.clock()
    lease = timedelta(seconds=runtime.settings.claim_lease_seconds)
    delivered = message_rows(orders, account_id, 20_000, now, status="delivered")

    def rows(status: str, **fields):
        return message_rows(orders, account_id, 3, now, status=status, **fields)

    waiting = (
        rows("scheduled", send_at=now, enqueued_at=None)
        + rows("sending", claimed_at=now - 2 * lease)
        + rows("queued", enqueued_at=None, not_before=now)  # held
        + rows("queued", enqueued_at=None)  # not yet marked
    )
    paused = make_stream(name="Paused")
    parked = [
        *message_rows(paused, account_id, 3, now, status="queued", enqueued_at=None,
                      hold_reason=STREAM_PAUSED_HOLD),
        *message_rows(paused, account_id, 3, now, status="queued", enqueued_at=None,
                      hold_reason=STREAM_PAUSED_HOLD, expires_at=now + lease),
    ]  # fmt: skip
    gone = make_stream(name="Gone")
    left = [
        *message_rows(gone, account_id, 3, now, status="scheduled", send_at=now + lease,
                      enqueued_at=None),
        *message_rows(gone, account_id, 3, now, status="queued", enqueued_at=None,
                      hold_reason="quiet_hours", not_before=now + lease),
    ]  # fmt: skip
    deleted = client.delete(f"/api/v1/streams/{gone['id']}", headers=auth(account_key))
    assert deleted.status_code == 204, deleted.text
    write_then_pause(runtime, client, account_key, paused, delivered + waiting + parked + left)

    relay_runtime = build_runtime(runtime.settings.model_copy(update={"relay_batch": 50}))
    try:
        reads = _reads_of_messages_by_status(
            relay_runtime.engine, lambda: Relay(relay_runtime).sweep()
        )
    finally:
        relay_runtime.close()

    def console() -> None:
        for status in ("sending", "ready"):
            listed = client.get(f"/api/v1/streams?status={status}", headers=auth(account_key))
            assert listed.status_code == 200, listed.text
        load_feed_streams(runtime, account_id, FeedFilters(), now)

    reads += _reads_of_messages_by_status(runtime.engine, console)

    # The relay's follow-up by id (``id IN (...)``) may as well read the primary key.
    reads = [(st, params) for st, params in reads if "messages.id IN" not in st]
    assert {_expected_index(st) for st, _ in reads} == STATUS_INDEXES, reads
    with runtime.engine.connect() as connection:
        for statement, parameters in reads:
            assert "messages.status = %(" not in statement, statement
            assert "messages.status IN (%(" not in statement, statement
            plan = generic_plan(connection, statement, parameters)
            assert "Seq Scan on messages" not in plan, plan
            assert _expected_index(statement) in plan, plan


def _expected_index(statement: str) -> str:
    """The status index meant for a status search, told by the condition it searches on."""
    for fragment, index in (
        ("messages.expires_at <=", "ix_messages_parked_expires"),
        ("messages.claimed_at <", "ix_messages_sending_claimed"),
        ("messages.send_at <=", "ix_messages_scheduled_send_at"),
        ("messages.enqueued_at <", "ix_messages_queued_type_enqueued"),
        ("messages.enqueued_at IS NULL", "ix_messages_outbox_not_before"),
        ("messages.status = 'scheduled' AND messages.stream_id", "ix_messages_scheduled_stream"),
        ("messages.stream_id", "ix_messages_in_flight_stream"),
    ):
        if fragment in statement:
            return index
    raise AssertionError(f"a status search the test does not know: {statement}")


def _busy_and_idle(runtime, make_stream):
    """Two streams of one account: one with 5,000 messages queued (nearly every message of
    the table in flight), one with none; the table analyzed. Returns both and the account."""
    busy, idle = make_stream(), make_stream(name="Codes", type="otp")
    account_id = account_of(runtime, busy)
    with runtime.session_factory() as session:
        now = runtime.clock()
        session.execute(
            insert(Message), message_rows(busy, account_id, 5_000, now, status="queued")
        )
        session.commit()
    with runtime.engine.connect() as connection:
        connection.execute(text("ANALYZE messages"))
        connection.commit()
    return busy, idle, account_id


def test_the_streams_list_probes_each_stream_once_behind_a_large_backlog(
    runtime, client, account_key, make_stream
):
    """Whether a stream has messages in flight (the list's status, its status filter) costs
    one index probe per stream: it neither reads a busy stream's whole backlog nor, for an
    idle stream, walks the table, which the planner is tempted to do when nearly every
    message is in flight and it expects a match within a few rows."""
    busy, idle, account_id = _busy_and_idle(runtime, make_stream)

    def console() -> None:
        for query in ("", "?status=sending", "?status=ready"):
            listed = client.get(f"/api/v1/streams{query}", headers=auth(account_key))
            assert listed.status_code == 200, listed.text
            shown = {s["id"]: s["status"] for s in listed.json()["items"]}
            assert shown.get(busy["id"], "sending") == "sending", shown
            assert shown.get(idle["id"], "ready") == "ready", shown

    reads = _reads_of_messages_by_status(runtime.engine, console)
    assert len(reads) >= 3, reads
    with runtime.engine.connect() as connection:
        for statement, parameters in reads:
            for plan in run_plans(connection, statement, parameters):
                assert "Seq Scan on messages" not in plan, plan
                read = re.findall(r"ix_messages_in_flight_stream .*actual rows=(\d+)", plan)
                assert read, plan
                assert max(int(rows) for rows in read) <= 1, plan


def _entries(connection, index: str) -> int:
    """Leaf items of a small B-tree index (one leaf page), dead rows' included."""
    root = connection.execute(text("SELECT root FROM bt_metap(:i)"), {"i": index}).scalar_one()
    if root == 0:
        return 0
    return connection.execute(
        text("SELECT count(*) FROM bt_page_items(:i, :root)"), {"i": index, "root": root}
    ).scalar_one()


def test_a_message_enters_a_status_index_only_in_the_states_it_searches(runtime, make_stream):
    """Queued (marked) → sending → sent → delivered, each change a new row version: the
    status indexes gain an entry only where the new version is in their state."""
    orders = make_stream()
    now = runtime.clock()
    account_id = account_of(runtime, orders)
    with runtime.session_factory() as session:
        [row] = message_rows(orders, account_id, 1, now, status="queued")
        session.execute(insert(Message), [row])
        session.commit()
    changes = [
        {"status": "sending", "claimed_at": now},
        {"status": "sent", "provider": "sandbox", "provider_message_id": "sbx-1"},
        {"status": "delivered"},
    ]
    with runtime.engine.connect() as connection:
        for change in changes:
            connection.execute(
                Message.__table__.update().where(Message.id == row["id"]).values(**change)
            )
            connection.commit()
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pageinspect"))
        entries = {
            name: _entries(connection, name)
            for name in sorted(
                STATUS_INDEXES
                | {"ix_messages_provider_message_id_present", "ix_messages_parked_stream"}
            )
        }
    assert entries == {
        "ix_messages_in_flight_stream": 2,  # queued, sending
        "ix_messages_provider_message_id_present": 2,  # sent, delivered
        "ix_messages_queued_type_enqueued": 1,  # queued (marked)
        "ix_messages_scheduled_send_at": 0,
        "ix_messages_scheduled_stream": 0,
        "ix_messages_sending_claimed": 1,  # sending
        "ix_messages_outbox_not_before": 0,
        "ix_messages_parked_stream": 0,
        "ix_messages_parked_expires": 0,
    }


def test_the_realtime_feed_counts_in_flight_messages_from_their_index(runtime, make_stream):
    """The realtime feed counts each stream's in-flight messages (up to its cap) once a
    second per open feed. It walks the in-flight index of each stream; it does not read the
    table, which the planner is tempted to do when nearly every message is in flight and it
    expects the cap within a few rows: for an idle stream that is the whole table."""
    busy, idle, account_id = _busy_and_idle(runtime, make_stream)

    def feed() -> None:
        counted = load_feed_streams(runtime, account_id, FeedFilters(), runtime.clock())
        assert {str(s.id): s.in_flight for s in counted} == {busy["id"]: 5_000, idle["id"]: 0}

    reads = _reads_of_messages_by_status(runtime.engine, feed)
    assert len(reads) == 1, reads
    statement, parameters = reads[0]
    with runtime.engine.connect() as connection:
        for plan in run_plans(connection, statement, parameters):
            assert "Seq Scan on messages" not in plan, plan
            # Two probes, one per stream, reading the busy stream's 5,000 entries in all.
            read = re.findall(
                r"Index (?:Only )?Scan using ix_messages_in_flight_stream .*"
                r"actual rows=(\d+) loops=(\d+)",
                plan,
            )
            assert [(int(rows), int(loops)) for rows, loops in read] == [(2_500, 2)], plan


def test_a_quiet_hours_change_reads_only_the_messages_they_held(
    runtime, client, account_key, make_stream
):
    """Changing a stream's quiet hours releases what they held in the request's own
    transaction: its search reads ``ix_messages_quiet_held_stream``, not the stream's history
    or its other waiting messages, under a custom plan and a generic one alike."""
    window = {"start": "09:00", "end": "20:00", "timezone": "UTC"}
    promos = make_stream(type="marketing", settings={"quiet_hours": window})
    account_id = account_of(runtime, promos)
    now = runtime.clock()
    rows = [
        *message_rows(promos, account_id, 20_000, now, status="delivered"),
        *message_rows(promos, account_id, 2_000, now, status="queued"),
        *message_rows(promos, account_id, 3, now, status="queued", enqueued_at=None,
                      hold_reason="quiet_hours", not_before=now + timedelta(hours=12)),
    ]  # fmt: skip
    with runtime.session_factory() as session:
        session.execute(insert(Message), rows)
        session.commit()
    with runtime.engine.connect() as connection:
        connection.execute(text("ANALYZE messages"))
        connection.commit()

    def change() -> None:
        changed = client.patch(
            f"/api/v1/streams/{promos['id']}",
            json={"settings": {"quiet_hours": None}},
            headers=auth(account_key),
        )
        assert changed.status_code == 200, changed.text

    [(statement, parameters)] = statements_run(
        runtime.engine,
        change,
        lambda statement: statement.lstrip().upper().startswith("UPDATE MESSAGES"),
    )
    with runtime.engine.connect() as connection:
        custom = "\n".join(connection.exec_driver_sql("EXPLAIN " + statement, parameters).scalars())
        for plan in (custom, generic_plan(connection, statement, parameters)):
            assert "Seq Scan on messages" not in plan, plan
            assert "ix_messages_quiet_held_stream" in plan, plan
