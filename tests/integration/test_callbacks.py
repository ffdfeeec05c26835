"""Customer callbacks: signed with the stream's webhook secret, retried with backoff until
the customer answers, dead letters after the retry window, replay, the SSRF guard, and a
slow customer that never slows sending."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from sqlalchemy import event, func, select, text, update

from core.callback_events import status_event_id
from core.logs import configure_logging
from core.runtime import build_runtime
from core.settings import CallbackSettings
from core.signatures import SIGNATURE_HEADER, verify_streams_signature
from schemas.enums import MessageStatus
from schemas.tables import CallbackDelivery, Message, Stream, WaitingFollowUp
from tests.conftest import auth, message
from tests.deliveries import move
from tests.fakes.customer import FakeCustomer, dripping_customer
from tests.fakes.server import serve
from tests.processes import MovableClock, private_redis_server, wait_until
from tests.two_way import post_signed_inbound, signing_secret
from workers import callback_sweep, status_followup
from workers.callback_sweep import CallbackSweep
from workers.callbacks import CallbackSender
from workers.missed_callbacks import MissedCallbacks
from workers.pool import start_worker
from workers.queueing import subscribe_status_followups
from workers.relay import Relay, relay_runtime
from workers.status_followup import StatusFollowUp


@pytest.fixture
def customer():
    fake = FakeCustomer()
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake


def callback_settings(**extra) -> CallbackSettings:
    values = {
        "allow_private_addresses": True,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "connect_timeout_seconds": 1,
        "timeout_seconds": 1,
        **extra,
    }
    return CallbackSettings(_env_file=None, **values)


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"callbacks": callback_settings()})


@pytest.fixture
def callbacks_worker(runtime):
    worker = start_worker(runtime, ["callbacks"], threads=2)
    yield worker
    worker.stop(timeout=5_000)


def two_way_stream(make_stream, customer, **settings):
    return make_stream(
        name="Support",
        type="two_way",
        settings={"callback_url": f"{customer.base_url}/hooks/streams", **settings},
    )


def deliveries(runtime):
    with runtime.session_factory() as session:
        return session.scalars(select(CallbackDelivery).order_by(CallbackDelivery.created_at)).all()


def sent_with_its_job_lost(client, runtime, stream) -> str:
    """A message of ``stream`` moved to ``sent``, its follow-up job lost with Redis."""
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    move(runtime, message_id, MessageStatus.sending, MessageStatus.sent)
    runtime.broker.flush_all()
    return message_id


def test_inbound_callback_is_retried_until_the_customer_answers(
    client, runtime, make_stream, account_key, customer, callbacks_worker
):
    stream = two_way_stream(make_stream, customer, callback_headers={"X-Customer-Key": "abc"})
    secret = signing_secret(client, account_key, stream["id"])
    customer.fail_next(3)
    accepted = post_signed_inbound(
        client, stream["id"], secret, {"from": "+972524265292", "to": "Acme", "text": "Hello"}
    )
    assert accepted.status_code == 200, accepted.text
    assert wait_until(lambda: len(customer.received) == 1, 15)
    assert customer.attempts == 4
    request = customer.received[0]
    assert request["method"] == "POST" and request["path"] == "/hooks/streams"
    assert request["headers"]["x-customer-key"] == "abc"
    assert verify_streams_signature(
        request["headers"][SIGNATURE_HEADER.lower()], request["body"], secret, time.time()
    )
    assert not verify_streams_signature(
        request["headers"][SIGNATURE_HEADER.lower()], request["body"] + b" ", secret, time.time()
    )
    payload = json.loads(request["body"])
    assert payload["event"] == "message.inbound"
    assert payload["from"] == "+972524265292" and payload["text"] == "Hello"
    assert payload["inbound_id"] == accepted.json()["inbound_id"]
    # The customer records the request before it answers; the worker marks the row
    # delivered only after reading that answer, in its own commit: wait for it.
    assert wait_until(lambda: [r.state for r in deliveries(runtime)] == ["delivered"], 15)
    [row] = deliveries(runtime)
    assert row.attempts == 4 and row.last_status_code == 200


def test_invariant_8_a_callback_urls_credentials_never_reach_a_log_line(
    restore_logging, client, runtime, make_stream, account_key, customer, capfd
):
    """Customers often authenticate their webhook receiver with a token in the URL. httpx
    logs each request's full URL at INFO, which the production logging passed on."""
    configure_logging("DEBUG", "json")  # here, so it writes to this phase's captured stderr
    token = "cust-hook-token-7f3a9c2e51d04b6a"
    stream = make_stream(
        name="Support",
        type="two_way",
        settings={"callback_url": f"{customer.base_url}/hooks?token={token}"},
    )
    secret = signing_secret(client, account_key, stream["id"])
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
    [row] = deliveries(runtime)
    CallbackSender(runtime).deliver(str(row.id))
    assert len(customer.received) == 1
    assert customer.received[0]["query"] == f"token={token}"
    logged = capfd.readouterr().err
    assert '"event"' in logged, "the log is captured"
    assert token not in logged


@pytest.mark.parametrize(
    ("breakage", "error"),
    [
        ("non_ascii_header", "the request could not be made (UnicodeEncodeError)"),
        ("blank_ended_header", "the request could not be made (LocalProtocolError)"),
        ("no_secret", "the stream's webhook secret cannot be read"),
    ],
)
def test_a_callback_whose_request_cannot_be_made_is_retried_then_dead(
    client, runtime, settings, make_stream, account_key, customer, breakage, error
):
    """A header value stored before the API refused non-ASCII ones (httpx cannot encode
    it), or a webhook secret that cannot be opened (none stored, or sealed under a rotated
    STREAMS_SECRET_KEY). Each attempt raised, so none was counted: the row stayed pending,
    swept up again for ever, and never became a dead letter. It is a failed attempt now."""
    windowed = callback_settings(retry_window_seconds=0.5)
    runtime.settings = settings.model_copy(update={"callbacks": windowed})
    # A clock of the test's own: a slow machine must not spend the window before the first
    # attempt (the row would be dead at once).
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    stream = two_way_stream(make_stream, customer)
    secret = signing_secret(client, account_key, stream["id"])
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
    [row] = deliveries(runtime)
    with runtime.session_factory() as session:
        found = session.get(Stream, uuid.UUID(stream["id"]))
        assert found is not None
        if breakage == "non_ascii_header":
            found.settings = {**found.settings, "callback_headers": {"X-Customer": "Müller"}}
        elif breakage == "blank_ended_header":  # h11's refusal quotes the value: not kept
            found.settings = {**found.settings, "callback_headers": {"X-Key": "cust-key-9d4 "}}
        else:
            found.webhook_secret_sealed = None
        session.commit()
    sender = CallbackSender(runtime)

    sender.deliver(str(row.id))
    [row] = deliveries(runtime)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, error)
    clock.advance(0.6)  # the retry window has passed
    sender.deliver(str(row.id))
    [row] = deliveries(runtime)
    assert (row.state, row.attempts, row.last_error) == ("dead", 2, error)
    assert customer.received == []


def test_status_changes_reach_the_callback_with_get_and_signed_query(
    client, runtime, make_stream, account_key, customer
):
    stream = two_way_stream(make_stream, customer, callback_method="GET")
    secret = signing_secret(client, account_key, stream["id"])
    message_id = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id="ask-1")]},
        headers=auth(stream["token"]),
    ).json()["results"][0]["message_id"]
    worker = start_worker(runtime, ["two_way", "callbacks"], threads=2)
    try:
        assert wait_until(
            lambda: (
                {parse_qs(r["query"])["status"][0] for r in customer.received}
                >= {"sent", "delivered"}
            ),
            20,
        )
    finally:
        worker.stop(timeout=5_000)
    for request in customer.received:
        assert request["method"] == "GET" and request["body"] == b""
        query = request["query"].encode()
        assert verify_streams_signature(
            request["headers"][SIGNATURE_HEADER.lower()], query, secret, time.time()
        )
        fields = parse_qs(request["query"])
        assert fields["message_id"] == [message_id] and fields["internal_id"] == ["ask-1"]
        assert fields["event"] == ["message.status"]


def test_a_follow_up_job_delivered_twice_makes_one_callback(
    client, runtime, make_stream, account_key, customer
):
    """Queues deliver at least once: a follow-up job redelivered after its commit (its
    worker died before the ack) wrote a second callback for the same change, with a new
    ``event_id``, so the customer could not tell it was a repeat. A change's callback is now
    named after the change, and written and sent once."""
    stream = two_way_stream(make_stream, customer)
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    job = [[message_id, "sent", "2026-12-06T20:00:00.123456+00:00", None]]
    follow_up = StatusFollowUp(runtime)
    follow_up.follow(job)
    follow_up.follow(job)  # the same job again
    follow_up.follow([[message_id, "sent", "2026-12-06T22:00:00.123456+02:00", None]])
    [row] = deliveries(runtime)
    assert row.payload["event_id"] == str(row.id)
    later = [[message_id, "delivered", "2026-12-06T20:00:01+00:00", None]]
    follow_up.follow(later)
    assert len(deliveries(runtime)) == 2, "another change is another callback"


def test_callbacks_the_broker_refuses_are_tried_once_and_left_to_the_sweep(
    client, runtime, make_stream, monkeypatch, customer
):
    """With Redis unreachable, each enqueue waits out a connection error: a follow-up of
    many callbacks tried them all, one after the other. It stops at the first refusal;
    the rows are pending and the callback sweep enqueues them."""
    stream = two_way_stream(make_stream, customer)
    ids = [
        client.post(
            "/v1/messages",
            json={"messages": [message(internal_id=f"down-{n}")]},
            headers=auth(stream["token"]),
        ).json()["results"][0]["message_id"]
        for n in range(3)
    ]
    tried = []

    def unreachable(_broker, delivery_id):
        tried.append(delivery_id)
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(status_followup, "enqueue_callback", unreachable)
    StatusFollowUp(runtime).follow(
        [[message_id, "sent", "2026-12-06T20:00:00+00:00", None] for message_id in ids]
    )
    assert len(tried) == 1
    assert [row.state for row in deliveries(runtime)] == ["pending"] * 3


def test_two_jobs_for_one_callback_call_the_customer_once(
    client, runtime, make_stream, account_key, customer
):
    """A redelivered job, or the sweep's re-enqueue of a row whose attempt is slow, runs
    beside the first job: both read the row pending and due. The attempt is claimed before
    the call, so only one calls the customer."""
    stream = two_way_stream(make_stream, customer)
    secret = signing_secret(client, account_key, stream["id"])
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
    [row] = deliveries(runtime)
    customer.fail_next(1, status=200, delay_seconds=0.5)  # answers 200, slowly
    sender = CallbackSender(runtime)
    jobs = [threading.Thread(target=sender.deliver, args=(str(row.id),)) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(10)
    [row] = deliveries(runtime)
    assert (row.state, row.attempts) == ("delivered", 1)
    assert customer.attempts == 1, "the customer was called once"


def test_an_attempt_is_held_to_its_deadline_however_the_customer_drips(
    client, runtime, make_stream, account_key
):
    """httpx's timeouts limit each read: a customer sending one header line every 0.3 s,
    for ever, held a worker thread for as long as it liked (dramatiq's ten-minute limit),
    and the row never counted the attempt. The attempt now ends at connect + read timeout
    (2 s here) as a timed-out attempt."""
    with dripping_customer() as base:
        stream = make_stream(
            name="Support", type="two_way", settings={"callback_url": f"{base}/hook"}
        )
        secret = signing_secret(client, account_key, stream["id"])
        post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
        [row] = deliveries(runtime)
        attempt = threading.Thread(target=CallbackSender(runtime).deliver, args=(str(row.id),))
        attempt.start()
        attempt.join(15)
        assert not attempt.is_alive(), "the attempt was still running after 15 s"
    [row] = deliveries(runtime)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "timed out")


def test_the_sweep_sends_a_callback_whose_attempt_died_once_its_claim_runs_out(
    client, runtime, settings, make_stream, account_key, customer
):
    """A worker died mid-attempt: the row stays pending, claimed until its claim runs out,
    and no job is left for it. The sweep leaves it alone while the claim holds, then
    enqueues it, and the customer gets it."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    stream = two_way_stream(make_stream, customer)
    secret = signing_secret(client, account_key, stream["id"])
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
    [row] = deliveries(runtime)
    runtime.broker.flush_all()  # the job is gone, as with a worker killed mid-attempt
    claimed_until = runtime.clock() + timedelta(seconds=30)
    with runtime.session_factory() as session:
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id == row.id)
            .values(next_attempt_at=claimed_until)
        )
        session.commit()
    sweep = CallbackSweep(runtime)
    assert sweep.sweep() == 0, "a claim still running is left alone"
    with runtime.session_factory() as session:  # the claim ran out a grace period ago
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id == row.id)
            .values(next_attempt_at=runtime.clock() - timedelta(seconds=2))
        )
        session.commit()
    assert sweep.sweep() == 1
    worker = start_worker(runtime, ["callbacks"], threads=2)
    try:
        assert wait_until(lambda: len(customer.received) == 1, 15)
    finally:
        worker.stop(timeout=5_000)
    [row] = deliveries(runtime)
    assert (row.state, row.attempts) == ("delivered", 1)


def test_status_callbacks_outlive_a_redis_outage_at_their_commit(
    client, settings, make_stream, account_key, customer
):
    """A status change's callbacks are written by a follow-up job enqueued after its
    commit. With Redis down at that moment the job was dropped, and with it the callbacks:
    no row anywhere for the sweep to find. The changes now wait in the database, and the
    sweep enqueues them once Redis is back."""
    stream = two_way_stream(make_stream, customer)
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    with private_redis_server() as server:
        own = build_runtime(settings.model_copy(update={"redis_url": server.url}))
        try:
            subscribe_status_followups(own)
            server.halt()
            move(own, message_id, MessageStatus.sending, MessageStatus.sent)  # the send
            with own.session_factory() as session:
                assert session.scalar(select(func.count()).select_from(WaitingFollowUp)) == 1

            server.start()  # back, and empty
            assert CallbackSweep(own).sweep() == 0
            worker = start_worker(own, ["callbacks"], threads=2)
            try:
                assert wait_until(lambda: len(customer.received) == 1, 15)
            finally:
                worker.stop(timeout=5_000)
            with own.session_factory() as session:
                assert session.scalar(select(func.count()).select_from(WaitingFollowUp)) == 0
        finally:
            own.close()
    payload = json.loads(customer.received[0]["body"])
    assert (payload["message_id"], payload["status"]) == (message_id, "sent")


def test_status_callbacks_outlive_a_follow_up_job_that_redis_lost(
    client, runtime, settings, make_stream, account_key, customer
):
    """After the commit, the follow-up job is the only record that a change owes the
    customer a callback. When Redis lost it (a restart without persistence, a failover) or
    the process died before the enqueue, the callback was lost with it. The history sweep
    now finds the change in the status history, once it is older than the grace, and
    writes and sends its callback; a change already called back, and a stream without
    callbacks, get nothing more."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    history = MissedCallbacks(runtime, page=2)  # pages of two: the paging is exercised too
    assert history.sweep() == 0  # the first run starts at the end of the history
    stream = two_way_stream(make_stream, customer)
    plain = make_stream(name="Receipts", type="transactional")
    ids = [
        client.post(
            "/v1/messages",
            json={"messages": [message(internal_id=f"lost-{n}")]},
            headers=auth(stream["token"]),
        ).json()["results"][0]["message_id"]
        for n in range(3)
    ]
    plain_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(plain["token"])
    ).json()["results"][0]["message_id"]
    for message_id in [*ids, plain_id]:
        move(runtime, message_id, MessageStatus.sending, MessageStatus.sent)
    runtime.broker.flush_all()  # Redis lost the follow-up jobs (and the sends' own jobs)
    assert deliveries(runtime) == []

    assert history.sweep() == 0, "changes within the grace may still have their job coming"
    time.sleep(1.2)
    assert history.sweep() == 3
    assert history.sweep() == 0, "the cursor has moved past them"
    worker = start_worker(runtime, ["callbacks"], threads=2)
    try:
        assert wait_until(lambda: len(customer.received) == 3, 15)
        move(runtime, ids[0], MessageStatus.delivered, start=MessageStatus.sent)
        assert wait_until(lambda: len(customer.received) == 4, 15)  # its job was not lost
        time.sleep(1.2)
        assert history.sweep() == 0, "a change its job called back is not called back again"
    finally:
        worker.stop(timeout=5_000)
    told = sorted(
        (json.loads(r["body"])["message_id"], json.loads(r["body"])["status"])
        for r in customer.received
    )
    assert told == sorted([*((i, "sent") for i in ids), (ids[0], "delivered")])
    assert {row.stream_id for row in deliveries(runtime)} == {uuid.UUID(stream["id"])}


def test_a_change_the_relay_makes_is_called_back_at_once(
    client, runtime, settings, make_stream, customer
):
    """``streams relay`` never subscribed the follow-up listener: a message it failed (a
    claim whose worker died after the last attempt) was never called back; the history
    sweep would only make up for it a grace later."""
    stream = two_way_stream(make_stream, customer)
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    with runtime.session_factory() as session:  # its last attempt's worker died long ago
        session.execute(
            update(Message)
            .where(Message.id == uuid.UUID(message_id))
            .values(
                status="sending",
                claimed_at=runtime.clock() - timedelta(hours=1),
                attempts=settings.max_send_attempts,
            )
        )
        session.commit()
    relay_side = relay_runtime(runtime.settings)
    worker = start_worker(runtime, ["callbacks"], threads=1)
    try:
        Relay(relay_side).sweep()
        assert wait_until(lambda: len(customer.received) == 1, 10)
    finally:
        worker.stop(timeout=5_000)
        relay_side.close()
    payload = json.loads(customer.received[0]["body"])
    assert (payload["message_id"], payload["status"]) == (message_id, "failed")


def test_changes_called_back_by_their_jobs_are_not_written_again_by_the_history_sweep(
    client, runtime, settings, make_stream, customer
):
    """Sends go through the worker's one-statement move (``move_many``), whose moment
    reaches PostgreSQL as a bind parameter; read back, it must name the same callbacks."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    history = MissedCallbacks(runtime)
    assert history.sweep() == 0
    stream = two_way_stream(make_stream, customer)
    worker = start_worker(runtime, ["two_way", "callbacks"], threads=2)
    try:
        for n in range(3):
            client.post(
                "/v1/messages",
                json={"messages": [message(internal_id=f"sent-{n}")]},
                headers=auth(stream["token"]),
            )
        assert wait_until(lambda: len(customer.received) == 6, 20)  # sent and delivered
        time.sleep(1.2)
        assert history.sweep() == 0
    finally:
        worker.stop(timeout=5_000)
    assert len(deliveries(runtime)) == 6


def test_the_history_sweep_crosses_a_gap_of_unused_ids(
    client, runtime, settings, make_stream, customer
):
    """Ids a rolled-back insert took are never used: a gap wider than one run's span
    (``max_span``) stopped the cursor for good."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    with runtime.engine.begin() as connection:  # ids from 1 (TRUNCATE keeps the sequence)
        connection.execute(text("ALTER SEQUENCE message_events_id_seq RESTART WITH 1"))
    history = MissedCallbacks(runtime, max_span=10)
    assert history.sweep() == 0
    stream = two_way_stream(make_stream, customer)
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    with runtime.engine.connect() as connection:  # a failing batch used up 30 ids
        connection.execute(
            text("SELECT nextval('message_events_id_seq') FROM generate_series(1, 30)")
        )
        connection.rollback()
    move(runtime, message_id, MessageStatus.sending, MessageStatus.sent)
    runtime.broker.flush_all()  # its job was lost
    time.sleep(1.2)
    assert sum(history.sweep() for _ in range(6)) == 1


def test_a_recovered_callback_says_its_moment_in_utc(
    client, runtime, settings, make_stream, customer
):
    """PostgreSQL hands a moment back in its session's time zone; the callback the job
    writes says it in UTC, and so must the one the sweep writes."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )

    @event.listens_for(runtime.engine, "connect")
    def local_time(dbapi_connection, _record):  # a server set to local time
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET TIME ZONE 'Asia/Jerusalem'")
        dbapi_connection.autocommit = False

    runtime.engine.dispose()
    history = MissedCallbacks(runtime)
    assert history.sweep() == 0
    stream = two_way_stream(make_stream, customer)
    sent_with_its_job_lost(client, runtime, stream)
    time.sleep(1.2)
    assert history.sweep() == 1
    [row] = deliveries(runtime)
    assert row.payload["at"].endswith("+00:00"), row.payload["at"]


def test_the_history_sweep_leaves_alone_a_stream_set_up_since_the_change(
    client, runtime, settings, make_stream, account_key, customer
):
    """Whether a change of a stream whose set-up changed since wanted callbacks is unknown:
    a customer who configures callbacks now is not sent the past."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    history = MissedCallbacks(runtime)
    assert history.sweep() == 0
    stream = two_way_stream(make_stream, customer)
    sent_with_its_job_lost(client, runtime, stream)
    time.sleep(0.1)
    changed = client.put(
        f"/api/v1/streams/{stream['id']}/settings",
        json={"callback_url": f"{customer.base_url}/hooks/elsewhere"},
        headers=auth(account_key),
    )
    assert changed.status_code == 200, changed.text
    time.sleep(1.2)
    assert history.sweep() == 0
    assert deliveries(runtime) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "", {"name": "Support desk"}),
        ("post", "/disable", None),
        ("post", "/token/reset", None),
        ("patch", "", {"settings": {"callback_method": "GET"}}),
    ],
)
def test_the_history_sweep_still_calls_back_after_an_edit_that_leaves_callbacks_alone(
    client, runtime, settings, make_stream, account_key, customer, method, path, body
):
    """The sweep judged the set-up by ``streams.updated_at``, which every edit moves: a
    rename, a pause or a token rotation in the grace after a job was lost cost the
    customer the callback, with nothing logged."""
    runtime.settings = settings.model_copy(
        update={"callbacks": callback_settings(sweep_grace_seconds=1)}
    )
    history = MissedCallbacks(runtime)
    assert history.sweep() == 0
    stream = two_way_stream(make_stream, customer)
    message_id = sent_with_its_job_lost(client, runtime, stream)
    time.sleep(0.1)
    kwargs = {"json": body} if body is not None else {}
    url = f"/api/v1/streams/{stream['id']}{path}"
    edited = getattr(client, method)(url, headers=auth(account_key), **kwargs)
    assert edited.status_code == 200, edited.text
    time.sleep(1.2)
    assert history.sweep() == 1
    [row] = deliveries(runtime)
    assert (row.payload["message_id"], row.payload["status"]) == (message_id, "sent")


def test_a_job_the_sweep_enqueues_is_attempted_by_a_worker_that_takes_it_at_once(
    client, runtime, make_stream, account_key, customer, monkeypatch
):
    """The sweep enqueues a lost callback's job, then makes its row due. An idle worker
    takes the job at once and reads the row before that update. Its claim must still hold
    (it did not when the claim required the row unchanged since read: the job then ended
    with no attempt, and the row waited for the next sweep)."""
    stream = two_way_stream(make_stream, customer)
    secret = signing_secret(client, account_key, stream["id"])
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
    [row] = deliveries(runtime)
    runtime.broker.flush_all()  # the job is lost; the row is overdue for the sweep
    with runtime.session_factory() as session:
        session.execute(
            update(CallbackDelivery)
            .where(CallbackDelivery.id == row.id)
            .values(next_attempt_at=runtime.clock() - timedelta(seconds=300))
        )
        session.commit()
    sender = CallbackSender(runtime)
    jobs: list[threading.Thread] = []

    def taken_at_once(broker, delivery_id, delay_ms=None):
        jobs.append(threading.Thread(target=sender.deliver, args=(delivery_id,)))
        jobs[-1].start()
        time.sleep(0.5)  # the worker has read the row; the sweep goes on to its update

    monkeypatch.setattr(callback_sweep, "enqueue_callback", taken_at_once)
    assert CallbackSweep(runtime).sweep() == 1
    for job in jobs:
        job.join(10)
    [row] = deliveries(runtime)
    assert (row.state, len(customer.received)) == ("delivered", 1)


def test_a_messages_own_callback_url_gets_a_signed_post(
    client, runtime, make_stream, account_key, customer
):
    stream = make_stream()  # transactional: no stream callback set-up
    secret = signing_secret_for_any(runtime, stream["id"])
    client.post(
        "/v1/messages",
        json={"messages": [message(callback_url=f"{customer.base_url}/per-message")]},
        headers=auth(stream["token"]),
    )
    worker = start_worker(runtime, ["transactional", "callbacks"], threads=2)
    try:
        assert wait_until(
            lambda: any(json.loads(r["body"])["status"] == "delivered" for r in customer.received),
            20,
        )
    finally:
        worker.stop(timeout=5_000)
    request = customer.received[-1]
    assert request["path"] == "/per-message"
    assert verify_streams_signature(
        request["headers"][SIGNATURE_HEADER.lower()], request["body"], secret, time.time()
    )


def signing_secret_for_any(runtime, stream_id):
    import uuid

    from schemas.tables import Stream

    with runtime.session_factory() as session:
        stream = session.get(Stream, uuid.UUID(stream_id))
        return runtime.secret_box.open(stream.webhook_secret_sealed)


def test_dead_letter_after_the_retry_window_then_replay(
    client, runtime, make_stream, account_key, other_account_key, customer, callbacks_worker
):
    runtime.settings.callbacks.retry_window_seconds = 0.5
    stream = two_way_stream(make_stream, customer)
    secret = signing_secret(client, account_key, stream["id"])
    customer.fail_next(1000)
    post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hello"})
    assert wait_until(lambda: [r.state for r in deliveries(runtime)] == ["dead"], 15)
    dead = client.get(
        f"/api/v1/streams/{stream['id']}/callbacks/dead-letters", headers=auth(account_key)
    ).json()
    assert dead["total"] == 1
    letter = dead["items"][0]
    assert letter["event"] == "message.inbound" and letter["attempts"] >= 2
    assert letter["last_error"] == "HTTP 500" and letter["payload"]["text"] == "Hello"
    attempts_before = customer.attempts

    other = client.get(
        f"/api/v1/streams/{stream['id']}/callbacks/dead-letters", headers=auth(other_account_key)
    )
    assert other.status_code == 404
    stolen = client.post(
        f"/api/v1/streams/{stream['id']}/callbacks/dead-letters/{letter['id']}/replay",
        headers=auth(other_account_key),
    )
    assert stolen.status_code == 404
    time.sleep(0.3)
    assert customer.attempts == attempts_before, "a dead letter is not retried by itself"

    customer.failures.clear()  # the customer fixed their endpoint
    runtime.settings.callbacks.retry_window_seconds = 30
    replay = client.post(
        f"/api/v1/streams/{stream['id']}/callbacks/dead-letters/{letter['id']}/replay",
        headers=auth(account_key),
    )
    assert replay.status_code == 200 and replay.json() == {"replayed": 1}
    assert wait_until(lambda: len(customer.received) == 1, 15)
    assert json.loads(customer.received[0]["body"])["event_id"] == letter["id"]
    # The worker records the delivery once the customer has answered: wait for it.
    assert wait_until(lambda: [r.state for r in deliveries(runtime)] == ["delivered"], 15)
    again = client.post(
        f"/api/v1/streams/{stream['id']}/callbacks/dead-letters/replay", headers=auth(account_key)
    )
    assert again.json() == {"replayed": 0}


def test_callbacks_to_private_addresses_are_refused_by_default(
    client, runtime, make_stream, account_key, customer
):
    runtime.settings.callbacks.allow_private_addresses = False
    worker = start_worker(runtime, ["callbacks"], threads=1)
    try:
        stream = two_way_stream(make_stream, customer)
        secret = signing_secret(client, account_key, stream["id"])
        post_signed_inbound(client, stream["id"], secret, {"from": "+972524265292", "text": "Hi"})
        assert wait_until(lambda: [r.state for r in deliveries(runtime)] == ["dead"], 15)
    finally:
        worker.stop(timeout=5_000)
    [row] = deliveries(runtime)
    assert "non-public address (127.0.0.1)" in row.last_error
    assert customer.attempts == 0


@pytest.mark.slow
def test_a_slow_customer_never_slows_sending(client, runtime, make_stream, account_key, customer):
    """The customer's endpoint hangs past our timeout on every call; messages of the stream
    are delivered all the same, because callbacks have their own queue and pool."""
    from core.runtime import build_runtime

    customer.fail_next(1000, delay_seconds=3)
    stream = two_way_stream(make_stream, customer)
    callbacks_runtime = build_runtime(runtime.settings)  # its own process in production
    callbacks = start_worker(callbacks_runtime, ["callbacks"], threads=1)
    sending = start_worker(runtime, ["two_way"], threads=2)
    try:
        ids = [
            r["message_id"]
            for r in client.post(
                "/v1/messages",
                json={"messages": [message() for _ in range(20)]},
                headers=auth(stream["token"]),
            ).json()["results"]
        ]

        def all_delivered():
            return all(
                client.get(f"/api/v1/messages/{i}", headers=auth(account_key)).json()["status"]
                == "delivered"
                for i in ids
            )

        assert wait_until(all_delivered, 20, interval=0.2)
        assert len(customer.received) == 0
        assert any(r.state == "pending" for r in deliveries(runtime)), "callbacks still trying"
    finally:
        sending.stop(timeout=5_000)
        callbacks.stop(timeout=10_000)
        callbacks_runtime.close()


def test_follow_ups_take_messages_and_callbacks_in_id_order(
    client, runtime, make_stream, customer, monkeypatch
):
    """A late follow-up job and the history sweep can follow up the same changes at once,
    each in its own order, and two transactions taking the same rows in different orders
    deadlock. Both take them in id order: the messages they lock and the callbacks they
    insert."""
    stream = two_way_stream(make_stream, customer)
    ids = sorted(
        uuid.UUID(
            client.post(
                "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
            ).json()["results"][0]["message_id"]
        )
        for _ in range(3)
    )
    at = runtime.clock().isoformat()
    changes = [[str(message_id), "sent", at, None] for message_id in reversed(ids)]
    locked: list[uuid.UUID] = []
    monkeypatch.setattr(
        status_followup,
        "resolve_waiting_receipts",
        lambda _session, message_id, _now: locked.append(message_id),
    )
    inserted: list[list[uuid.UUID]] = []
    with runtime.session_factory() as session:

        @event.listens_for(session, "do_orm_execute")
        def _seen(state) -> None:
            if state.is_insert:
                inserted.append([row["id"] for row in state.parameters])

        assert len(StatusFollowUp(runtime).write(session, changes)) == 3
        session.rollback()
    assert locked == ids
    [callbacks] = inserted
    assert callbacks == sorted(callbacks) and len(callbacks) == 3


def test_a_messages_callbacks_are_enqueued_in_the_order_its_changes_happened(
    client, runtime, make_stream, customer
):
    """Inserting callbacks in id order (against deadlocks) made the follow-up enqueue them
    in that order too: the ids are hashes, so about one message in two had its
    ``delivered`` queued before its ``sent`` (a review helper's finding)."""
    stream = two_way_stream(make_stream, customer)
    sent_at = runtime.clock()
    delivered_at = sent_at + timedelta(seconds=2)
    for _ in range(40):  # a message whose "delivered" id sorts before its "sent" id
        message_id = uuid.UUID(
            client.post(
                "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
            ).json()["results"][0]["message_id"]
        )
        sent_id = status_event_id(message_id, "sent", sent_at)
        delivered_id = status_event_id(message_id, "delivered", delivered_at)
        if delivered_id < sent_id:
            break
    else:
        raise AssertionError("no message's delivered id sorts first")
    changes = [
        [str(message_id), "sent", sent_at.isoformat(), None],
        [str(message_id), "delivered", delivered_at.isoformat(), None],
    ]
    with runtime.session_factory() as session:
        created = StatusFollowUp(runtime).write(session, changes)
        session.rollback()
    assert created == [sent_id, delivered_id]
