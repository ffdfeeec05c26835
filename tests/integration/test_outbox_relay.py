"""Invariant 1: nothing accepted is lost. A 202 means the message is in PostgreSQL; if Redis
is down at enqueue time the relay puts it on the queue later, and it is delivered once."""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import event, func, insert, select, text
from structlog.testing import capture_logs

import dispatcher.intake as intake
from core.metrics import render_metrics
from core.runtime import build_runtime
from dispatcher.app import create_app
from schemas.tables import STREAM_PAUSED_HOLD as PARKED
from schemas.tables import Message, Stream
from tests.conftest import CLIENT_IP, auth, message
from tests.deliveries import delivery_with
from tests.message_rows import account_of, message_rows, write_then_pause
from tests.processes import MovableClock, private_redis, wait_until
from tests.query_plans import statements_run
from tests.queued_jobs import delayed_jobs_on, jobs_on
from tests.scrape import parse, value
from workers.pool import start_worker
from workers.providers.base import ProviderError
from workers.providers.sandbox import SandboxProvider
from workers.queueing import enqueue_delivery
from workers.relay import DELETED_STREAM_SETTLE, RELEASE_STEP_MS, Relay


def statuses(runtime) -> dict[str, int]:
    with runtime.session_factory() as session:
        rows = session.execute(select(Message.status, func.count()).group_by(Message.status)).all()
    return dict(rows)


def test_invariant_1_accepted_while_redis_is_down_is_delivered_once_after_relay(
    settings, runtime, account_key
):
    with private_redis() as (redis_url, stop_redis, start_redis):
        own = settings.model_copy(update={"redis_url": redis_url})
        rt = build_runtime(own)
        client = TestClient(create_app(own, runtime=rt), client=(CLIENT_IP, 1))
        created = client.post(
            "/api/v1/streams",
            json={"name": "Receipts", "type": "transactional", "default_sender": "Acme"},
            headers=auth(account_key),
        ).json()
        token = client.get(
            f"/api/v1/streams/{created['id']}/token", headers=auth(account_key)
        ).json()["token"]

        stop_redis()
        singles = [
            client.post(
                "/v1/messages",
                json={"messages": [message(internal_id=f"s{i}")]},
                headers=auth(token),
            )
            for i in range(10)
        ]
        batch = client.post(
            "/v1/messages",
            json={"messages": [message(internal_id=f"b{i}") for i in range(40)]},
            headers=auth(token),
        )
        assert [r.status_code for r in singles] == [202] * 10
        assert batch.status_code == 202 and batch.json()["accepted"] == 40
        with rt.session_factory() as session:
            outbox = session.scalar(select(func.count()).where(Message.enqueued_at.is_(None)))
        assert outbox == 50, "every accepted message is stored and waits in the outbox"

        sweep_while_down = Relay(rt).sweep()
        assert sweep_while_down.relayed == 0

        start_redis()
        assert Relay(rt).sweep().relayed == 50
        assert Relay(rt).sweep().relayed == 0, "a second sweep finds nothing left to relay"

        worker = start_worker(rt, ["transactional"], threads=4)
        try:
            assert wait_until(lambda: statuses(rt).get("delivered") == 50, timeout=30), statuses(rt)
        finally:
            worker.stop(timeout=5_000)
        sandbox = SandboxProvider(own.sandbox, rt.redis)
        assert sandbox.submissions() == 50, "each message reached the carrier exactly once"
        client.close()
        rt.close()


def test_invariant_1_a_late_enqueue_mark_never_hides_a_held_message(runtime, client, make_stream):
    """The ingress marks messages enqueued after the fact. If a worker has meanwhile taken
    the message off the broker (held for a rate limit, quiet hours, a retry), the mark must
    not land, or the relay would never bring the message back."""
    import uuid as uuid_lib
    from datetime import timedelta

    from sqlalchemy import update

    from core.enqueue_marks import mark_enqueued

    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    key = uuid_lib.UUID(message_id)
    runtime.enqueue_marks.flush()
    held_until = runtime.clock() + timedelta(seconds=1)
    with runtime.session_factory() as session:  # what a worker's hold does
        session.execute(
            update(Message)
            .where(Message.id == key)
            .values(enqueued_at=None, not_before=held_until, hold_reason="rate_limited")
        )
        session.commit()
    mark_enqueued(runtime.session_factory, runtime.clock, [key])  # the late mark
    with runtime.session_factory() as session:
        assert session.get(Message, key).enqueued_at is None
    runtime.clock = lambda: held_until + timedelta(seconds=1)
    assert Relay(runtime).sweep().held_released == 1


def test_the_lost_sweep_finds_lost_messages_by_index_not_by_walking_the_backlog(
    runtime, make_stream, redis_client
):
    """A long transactional backlog is on its queue; the other queues are empty, and three
    otp messages marked enqueued long ago are not on theirs (Redis lost them). The lost-job
    sweep requeues those three, and each of its queries reads the partial index on queued,
    marked messages by type, rather than walking the queued backlog row by row."""
    orders, codes = make_stream(), make_stream(name="Codes", type="otp")
    account_id = account_of(runtime, orders)
    Relay(runtime).sweep()  # a relay watches this Redis: its sentinel is there throughout
    now = runtime.clock()
    lost_after = timedelta(seconds=runtime.settings.relay_lost_after_seconds)

    def rows(stream, count, status, enqueued_at):
        return message_rows(stream, account_id, count, now, status=status, enqueued_at=enqueued_at)

    history = [
        row
        for stream in (orders, codes)
        for row in rows(stream, 8000, "delivered", now - timedelta(days=1))
    ]
    lost = rows(codes, 3, "queued", now - 2 * lost_after)
    backlog = rows(orders, 2000, "queued", now - 2 * lost_after)
    with runtime.session_factory() as session:
        session.execute(insert(Message), history + backlog + lost)
        session.commit()
    enqueue_delivery(runtime.broker, "transactional", str(backlog[-1]["id"]))  # still queued
    with runtime.engine.connect() as connection:
        connection.execute(text("ANALYZE messages"))
        connection.commit()

    queries: list[tuple[str, dict]] = []

    def keep_the_lost_query(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "messages.enqueued_at <" in statement:
            queries.append((statement, parameters))

    # A batch well below the rows the planner expects (the otp history is large): the kind
    # of query where walking some index in order and stopping early looks cheap to it.
    relay_runtime = build_runtime(runtime.settings.model_copy(update={"relay_batch": 50}))
    event.listen(relay_runtime.engine, "before_cursor_execute", keep_the_lost_query)
    try:
        assert Relay(relay_runtime).sweep().lost_requeued == len(lost)
    finally:
        relay_runtime.close()
    assert queries
    with runtime.engine.connect() as connection:
        for statement, parameters in queries:
            explain = connection.exec_driver_sql("EXPLAIN " + statement, parameters)
            plan = "\n".join(explain.scalars())
            assert "ix_messages_queued_type_enqueued" in plan, plan


def test_invariant_1_a_released_message_taken_at_once_is_delivered(
    settings, runtime, client, make_stream, monkeypatch
):
    """The relay releases a due scheduled message and an idle worker takes its job the
    moment it is on the queue, before the relay's sweep has ended. The worker must read the
    release, not ``scheduled`` (it would drop the job, and the relay would then mark the
    row enqueued with no job anywhere: lost)."""
    from datetime import UTC, datetime

    import workers.relay as relay_module
    from tests.deliveries import delivery_with
    from tests.processes import MovableClock

    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    stream = make_stream()
    send_at = clock() + timedelta(seconds=5)
    message_id = client.post(
        "/v1/messages",
        json={"messages": [message(send_at=send_at.isoformat())]},
        headers=auth(stream["token"]),
    ).json()["results"][0]["message_id"]
    worker = delivery_with(runtime, SandboxProvider(settings.sandbox, runtime.redis))
    takers: list[threading.Thread] = []

    def taken_at_once(broker, queue, message_ids, delay_ms=None):
        # One id goes as an ordinary delivery job (``enqueue_deliveries``).
        [job_id] = message_ids
        taker = threading.Thread(target=worker.deliver, args=(job_id,))
        takers.append(taker)
        taker.start()
        # Give the worker time to read the row before the sweep goes on (on a relay that
        # still holds the row locked, the worker's claim waits for it instead).
        taker.join(timeout=1)

    monkeypatch.setattr(relay_module, "enqueue_deliveries", taken_at_once)
    clock.advance(6)  # the relay sweeps after send_at (it was down, say)
    assert Relay(runtime).sweep().released == 1
    for taker in takers:
        taker.join(timeout=10)
    with runtime.session_factory() as session:
        assert session.get(Message, uuid.UUID(message_id)).status == "delivered"


def test_invariant_1_a_release_the_broker_refused_is_enqueued_by_the_next_sweep(
    runtime, client, make_stream, monkeypatch
):
    """The release is committed before its job is enqueued. When the enqueue fails (Redis
    down, or the relay dies in between), the row waits unmarked with ``not_before`` at its
    ``send_at``, and the next sweep enqueues it, with no earlier delivery."""
    from datetime import UTC, datetime

    import workers.relay as relay_module
    from tests.processes import MovableClock

    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    stream = make_stream()
    send_at = clock() + timedelta(seconds=5)
    message_id = uuid.UUID(
        client.post(
            "/v1/messages",
            json={"messages": [message(send_at=send_at.isoformat())]},
            headers=auth(stream["token"]),
        ).json()["results"][0]["message_id"]
    )
    enqueued: list[tuple[list[str], int | None]] = []

    def broker_down(broker, queue, message_ids, delay_ms=None):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(relay_module, "enqueue_deliveries", broker_down)
    clock.advance(4.5)  # within the look-ahead: released, due in half a second
    assert Relay(runtime).sweep().released == 0
    with runtime.session_factory() as session:
        waiting = session.get(Message, message_id)
        assert (waiting.status, waiting.enqueued_at) == ("queued", None)
        assert (
            waiting.not_before is not None
            and abs((waiting.not_before - send_at).total_seconds()) < 0.001
        )

    monkeypatch.setattr(
        relay_module,
        "enqueue_deliveries",
        lambda broker, queue, message_ids, delay_ms=None: enqueued.append((message_ids, delay_ms)),
    )
    assert Relay(runtime).sweep().held_released == 1
    assert enqueued == [([str(message_id)], 500)]
    with runtime.session_factory() as session:
        assert session.get(Message, message_id).enqueued_at is not None


def test_a_scheduled_campaign_is_released_in_batch_jobs_never_early_and_otp_one_by_one(
    runtime, make_stream, redis_client
):
    """The relay enqueues as the ingress does single sends: batch jobs of up to
    ``enqueue_chunk_size`` on the packed queues, delayed to their time rounded up, never
    down (``tests/unit/test_relay_jobs.py`` checks the rounding); a job per message on the
    others (OTP: invariant 6). Each message is in one job."""
    orders, codes = make_stream(), make_stream(name="Codes", type="otp")
    account_id = account_of(runtime, orders)
    # A look-ahead of 5 s, so that messages due in 3 s are released now as delayed jobs
    # however slow the machine is between here and the sweep.
    relay_runtime = build_runtime(
        runtime.settings.model_copy(update={"relay_lookahead_seconds": 5})
    )
    now = runtime.clock()
    later = now + timedelta(seconds=3)

    def scheduled(stream, count, send_at):
        return message_rows(
            stream, account_id, count, now, status="scheduled", send_at=send_at, enqueued_at=None
        )

    due_now, due_later, otps = (
        scheduled(orders, 45, now),
        scheduled(orders, 25, later),
        scheduled(codes, 3, now),
    )
    with runtime.session_factory() as session:
        session.execute(insert(Message), due_now + due_later + otps)
        session.commit()

    try:
        assert Relay(relay_runtime).sweep().released == 73
    finally:
        relay_runtime.close()

    batches = jobs_on(redis_client, "transactional")
    assert sorted(len(ids) for _, ids in batches) == [5, 20, 20]
    assert {actor for actor, _ in batches} == {"deliver_batch_transactional"}
    delayed = delayed_jobs_on(redis_client, "transactional")
    assert sorted(len(ids) for _, ids in delayed) == [5, 20]
    later_ms = later.timestamp() * 1000
    for eta, _ in delayed:
        assert later_ms <= eta <= later_ms + RELEASE_STEP_MS + 500, eta - later_ms
    singles = jobs_on(redis_client, "otp")
    assert sorted(len(ids) for _, ids in singles) == [1, 1, 1]
    assert {actor for actor, _ in singles} == {"deliver_otp"}

    enqueued = [i for _, ids in batches + singles for i in ids] + [
        i for _, ids in delayed for i in ids
    ]
    assert sorted(enqueued) == sorted(str(r["id"]) for r in due_now + due_later + otps)
    with runtime.session_factory() as session:
        unmarked = session.scalar(
            select(func.count()).select_from(Message).where(Message.enqueued_at.is_(None))
        )
    assert unmarked == 0

    # Invariants 1 and 2 on that path: a worker delivers every message of those jobs,
    # the delayed batches too, and the carrier takes each once.
    worker = start_worker(runtime, ["transactional", "otp"], threads=4)
    try:
        assert wait_until(lambda: statuses(runtime).get("delivered") == 73, timeout=30), statuses(
            runtime
        )
    finally:
        worker.stop(timeout=5_000)
    assert SandboxProvider(runtime.settings.sandbox, runtime.redis).submissions() == 73


def test_a_paused_streams_backlog_is_parked_once_then_costs_each_sweep_one_probe(
    runtime, client, make_stream, account_key, redis_client
):
    """A disabled stream's messages are parked: by the worker, or by the relay when
    scheduled ones fall due or held ones come due. After that, each sweep (once a second)
    leaves them be at the cost of one index probe, not a walk of the backlog; once the stream
    is enabled, they are all enqueued."""
    paused = make_stream()
    account_id = account_of(runtime, paused)
    now = runtime.clock()

    def rows(count, **fields):
        return message_rows(paused, account_id, count, now, enqueued_at=None, **fields)

    parked = rows(3_000, status="queued", hold_reason=PARKED)
    due = rows(5, status="scheduled", send_at=now)
    held = rows(500, status="queued", hold_reason="rate_limit", not_before=now)
    write_then_pause(runtime, client, account_key, paused, parked + due + held)

    assert Relay(runtime).sweep().total == 0  # the due and held ones parked, not released
    with runtime.session_factory() as session:
        kept = session.execute(
            select(Message.status, Message.hold_reason, Message.enqueued_at, func.count())
            .where(Message.stream_id == uuid.UUID(paused["id"]))
            .group_by(Message.status, Message.hold_reason, Message.enqueued_at)
        ).all()
    assert kept == [("queued", PARKED, None, 3_505)]
    assert jobs_on(redis_client, "transactional") == []

    statements: list[tuple[str, dict]] = []

    def keep(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", keep)
    try:
        assert Relay(runtime).sweep().total == 0
    finally:
        event.remove(runtime.engine, "before_cursor_execute", keep)
    outbox = [s for s in statements if "messages.enqueued_at IS NULL" in s[0]]
    finding = [s for s in statements if "WITH RECURSIVE parked" in s[0]]
    assert len(outbox) >= 2 and len(finding) == 1, statements
    with runtime.engine.connect() as connection:
        for statement, parameters in outbox + finding:
            explain = "EXPLAIN (ANALYZE, TIMING OFF) " + statement
            plan = "\n".join(connection.exec_driver_sql(explain, parameters).scalars())
            assert "Seq Scan on messages" not in plan, plan
            read = re.findall(r"Scan using ix_messages_\w+ .*actual rows=(\d+)", plan)
            assert all(int(rows) <= 1 for rows in read), plan  # a probe, never the backlog

    enabled = client.post(f"/api/v1/streams/{paused['id']}/enable", headers=auth(account_key))
    assert enabled.status_code == 200, enabled.text
    released = 0
    while batch := Relay(runtime).sweep().unparked:
        released += batch
    assert released == 3_505
    waiting = {i for _, ids in jobs_on(redis_client, "transactional") for i in ids}
    assert waiting == {str(row["id"]) for row in parked + due + held}


def test_a_parked_message_expires_when_its_validity_ends_not_when_its_stream_is_back(
    runtime, client, make_stream, account_key, redis_client
):
    """A disabled stream's parked messages whose validity has ended are expired by the next
    sweep, while the stream is still disabled: the customer learns it then, not once the
    stream is enabled again. Finding them costs one probe of their index, however many
    other messages are parked; those still valid, or with no validity, stay parked."""
    paused = make_stream()
    account_id = account_of(runtime, paused)
    now = runtime.clock()

    def rows(count, **fields):
        return message_rows(
            paused, account_id, count, now, enqueued_at=None, status="queued",
            hold_reason=PARKED, **fields,
        )  # fmt: skip

    lapsed = rows(3, expires_at=now - timedelta(seconds=1))
    valid = rows(2_000, expires_at=now + timedelta(minutes=5))
    endless = rows(1_000)
    write_then_pause(runtime, client, account_key, paused, lapsed + valid + endless)

    assert Relay(runtime).sweep().parked_expired == 3
    for row in lapsed:
        found = client.get(f"/api/v1/messages/{row['id']}", headers=auth(account_key)).json()
        assert (found["status"], found["error"]["code"]) == ("expired", "expired")
        assert found["hold_reason"] is None  # it waits no more
        assert found["history"][-1]["status"] == "expired"
    with runtime.session_factory() as session:
        left = session.execute(
            select(Message.status, Message.hold_reason, func.count())
            .where(Message.stream_id == uuid.UUID(paused["id"]))
            .group_by(Message.status, Message.hold_reason)
        ).all()
    assert sorted(left, key=str) == [("expired", None, 3), ("queued", PARKED, 3_000)]
    assert jobs_on(redis_client, "transactional") == []

    statements = statements_run(
        runtime.engine,
        lambda: Relay(runtime).sweep(),
        lambda statement: "messages.expires_at <=" in statement,
    )
    assert len(statements) == 1, statements
    with runtime.engine.connect() as connection:
        explain = "EXPLAIN (ANALYZE, TIMING OFF) " + statements[0][0]
        plan = "\n".join(connection.exec_driver_sql(explain, statements[0][1]).scalars())
    assert "Seq Scan on messages" not in plan, plan
    read = re.findall(r"Scan using ix_messages_parked_expires .*actual rows=(\d+)", plan)
    assert read == ["0"], plan  # one probe, not a walk of the 2,000 still valid


def _delete(client, account_key, stream) -> None:
    deleted = client.delete(f"/api/v1/streams/{stream['id']}", headers=auth(account_key))
    assert deleted.status_code == 204, deleted.text


def _ended_as_deleted(client, account_key, message_id: str) -> dict:
    found = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert (found["status"], (found["error"] or {}).get("code")) == ("failed", "stream_deleted")
    assert found["hold_reason"] is None and found["not_before"] is None
    assert found["history"][-1]["status"] == "failed"
    return found


def _held_then_ended_by_the_delete(runtime, client, account_key, stream, result, hold_reason):
    """The message of ``result`` waits with ``hold_reason``; ``stream`` is deleted, and the
    next sweep fails it."""
    held = client.get(f"/api/v1/messages/{result['message_id']}", headers=auth(account_key))
    assert held.json()["hold_reason"] == hold_reason
    _delete(client, account_key, stream)

    report = Relay(runtime).sweep()
    _ended_as_deleted(client, account_key, result["message_id"])
    assert report.deleted_ended == 1


def test_a_deleted_streams_scheduled_message_fails_at_the_next_sweep_not_at_its_time(
    runtime, client, make_stream, account_key
):
    """A message scheduled a month ahead of a stream then deleted is ``failed`` with
    ``stream_deleted`` by the next sweep, its ``send_at`` kept as the customer set it. Once
    the stream has nothing waiting, and no send begun before the delete can still store
    rows, the relay marks it and looks at it no more."""
    clock = MovableClock(runtime.clock())
    runtime.clock = clock
    stream = make_stream()
    send_at = runtime.clock() + timedelta(days=30)
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(send_at=send_at.isoformat())]},
        headers=auth(stream["token"]),
    )
    [result] = answer.json()["results"]
    assert result["status"] == "scheduled"
    _delete(client, account_key, stream)

    report = Relay(runtime).sweep()
    found = _ended_as_deleted(client, account_key, result["message_id"])
    assert report.deleted_ended == 1
    assert found["send_at"] is not None
    assert datetime.fromisoformat(found["send_at"]) == send_at

    def drained() -> bool:
        with runtime.session_factory() as session:
            done = session.get(Stream, uuid.UUID(stream["id"]))
            assert done is not None
            return done.waiting_ended_at is not None

    Relay(runtime).sweep()
    assert not drained()
    clock.advance(DELETED_STREAM_SETTLE.total_seconds())
    Relay(runtime).sweep()
    assert drained()


def test_a_send_that_stores_its_rows_after_the_delete_is_still_ended(
    runtime, client, make_stream, account_key, monkeypatch
):
    """A send authenticated before the delete (or on an ingress whose token cache has not
    caught up) stores its rows after it, with a sweep in between that found nothing waiting.
    Those rows are failed too: the stream is not marked done so soon after its deletion."""
    stream = make_stream()
    send_at = runtime.clock() + timedelta(days=30)
    store = intake.store_prepared

    def delete_and_sweep_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        _delete(client, account_key, stream)
        assert Relay(runtime).sweep().deleted_ended == 0
        return store(*args, **kwargs)

    monkeypatch.setattr(intake, "store_prepared", delete_and_sweep_first)
    results = client.post(
        "/v1/messages",
        json={"messages": [message(send_at=send_at.isoformat())] * 2},
        headers=auth(stream["token"]),
    ).json()["results"]
    monkeypatch.setattr(intake, "store_prepared", store)
    assert [r["status"] for r in results] == ["scheduled", "scheduled"]

    assert Relay(runtime).sweep().deleted_ended == 2
    for result in results:
        _ended_as_deleted(client, account_key, result["message_id"])


def test_a_deleted_streams_message_held_for_quiet_hours_fails_at_the_next_sweep(
    runtime, client, make_stream, account_key
):
    """A marketing message held for quiet hours until tomorrow morning, its stream then
    deleted, is ``failed`` with ``stream_deleted`` by the next sweep."""
    runtime.clock = MovableClock(datetime(2026, 1, 15, 21, 0, tzinfo=UTC))
    stream = make_stream(
        type="marketing",
        settings={"quiet_hours": {"start": "09:00", "end": "20:00", "timezone": "UTC"}},
    )
    [result] = client.post(
        "/v1/messages",
        json={"messages": [message(message_content="Sale!")]},
        headers=auth(stream["token"]),
    ).json()["results"]
    delivery = delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis))
    delivery.deliver(result["message_id"], "marketing")
    _held_then_ended_by_the_delete(runtime, client, account_key, stream, result, "quiet_hours")


class _ThrottlesForAnHour(SandboxProvider):
    """Answers every call with a 429 asking for an hour."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def send(self, message):
        self.calls += 1
        raise ProviderError("provider_throttled", "HTTP 429", transient=True, retry_after=3600)


def test_a_deleted_streams_message_waiting_out_a_retry_fails_at_the_next_sweep(
    runtime, client, make_stream, account_key
):
    """A message waiting out the carrier's hour-long Retry-After, its stream then deleted,
    is ``failed`` with ``stream_deleted`` by the next sweep, and never offered again."""
    carrier = _ThrottlesForAnHour(runtime.settings.sandbox, runtime.redis)
    stream = make_stream()
    [result] = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"]
    delivery_with(runtime, carrier).deliver(result["message_id"], "transactional")
    _held_then_ended_by_the_delete(runtime, client, account_key, stream, result, "retry")
    delivery_with(runtime, carrier).deliver(result["message_id"], "transactional")
    assert carrier.calls == 1


def _relay_samples() -> dict:
    return parse(render_metrics()[0].decode())


def _run_relay(relay: Relay, until) -> None:  # type: ignore[no-untyped-def]
    """Run ``relay`` in a thread until ``until()`` holds, then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(until, timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_relay_whose_sweeps_fail_moves_a_metric(runtime, monkeypatch):
    """When every sweep raises (the database refuses it, a migration is missing, a bug),
    ``Relay.run`` logs ``relay_sweep_failed`` and tries again. Prometheus must see it:
    ``streams_relay_enqueued_total`` standing still reads the same as "nothing was due",
    while scheduled releases, held releases, reclaims and lost-job recovery (invariant 1)
    have all stopped. The failures are counted and the last success stays where it was,
    for the alert on its age."""

    def broken(*args, **kwargs):
        raise RuntimeError("the database refused the sweep")

    relay = Relay(runtime)
    monkeypatch.setattr(relay, "_fail_spent_claims", broken)
    runtime.settings = runtime.settings.model_copy(update={"relay_interval_seconds": 0.05})
    before = _relay_samples()
    with capture_logs() as logs:
        _run_relay(relay, lambda: sum(x["event"] == "relay_sweep_failed" for x in logs) >= 2)
    after = _relay_samples()
    failed = sum(x["event"] == "relay_sweep_failed" for x in logs)
    sweeps = {
        outcome: value(after, "streams_relay_sweeps_total", outcome=outcome)
        - value(before, "streams_relay_sweeps_total", outcome=outcome)
        for outcome in ("ok", "failed")
    }
    assert sweeps == {"ok": 0, "failed": failed}
    last_success = "streams_relay_last_success_timestamp_seconds"
    assert value(after, last_success) == value(before, last_success)


def test_a_relay_sweep_that_succeeds_stamps_its_time(runtime):
    """Each successful sweep is counted and sets the last-success timestamp to now (Unix
    time, as Prometheus' ``time()`` compares it)."""
    runtime.settings = runtime.settings.model_copy(update={"relay_interval_seconds": 0.05})
    started = time.time()
    before = _relay_samples()
    _run_relay(
        Relay(runtime),
        lambda: (
            value(_relay_samples(), "streams_relay_sweeps_total", outcome="ok")
            > value(before, "streams_relay_sweeps_total", outcome="ok")
        ),
    )
    stamped = value(_relay_samples(), "streams_relay_last_success_timestamp_seconds")
    assert started <= stamped <= time.time()
