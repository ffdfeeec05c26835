"""Invariant 1 when Redis comes back empty (a restart without persistence, a failover to an
empty replica, a flush): messages that were on a queue, and marked enqueued, are gone from
the broker. The relay finds the sentinel it keeps in Redis gone, enqueues them again
whatever else waits on the queue by then, and each is delivered once. A queue that holds
nothing (ready, fetched or delayed) while the database says messages wait on it is evidence
of a lost job too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from cli.main import begin_broker_epoch
from core.broker import NAMESPACE
from core.queue_depth import read_depths
from core.runtime import build_runtime
from dispatcher.app import create_app
from schemas.tables import Message
from tests.conftest import CLIENT_IP, auth, message
from tests.deliveries import delivery_with
from tests.faults.outcomes import carrier_ledger, status_counts
from tests.processes import MovableClock, pipeline, private_redis_server, wait_until
from tests.queued_jobs import delayed_jobs_on, jobs_on
from workers import broker_epoch
from workers.providers.base import ProviderError
from workers.providers.sandbox import SandboxProvider
from workers.relay import Relay

pytestmark = pytest.mark.slow

COUNT = 200


def test_invariant_1_messages_on_a_queue_redis_lost_are_enqueued_again(
    settings, runtime, make_stream
):
    token = make_stream()["token"]
    with private_redis_server() as server:
        own = settings.model_copy(update={"redis_url": server.url, "relay_lost_after_seconds": 1})
        rt = build_runtime(own)
        try:
            with TestClient(create_app(own, runtime=rt), client=(CLIENT_IP, 1)) as client:
                answer = client.post(
                    "/v1/messages",
                    json={"messages": [message(internal_id=f"m{i}") for i in range(COUNT)]},
                    headers=auth(token),
                )
                assert answer.status_code == 202 and answer.json()["accepted"] == COUNT

            def marked() -> int:
                with rt.session_factory() as session:
                    return int(
                        session.scalar(select(func.count()).where(Message.enqueued_at.is_not(None)))
                        or 0
                    )

            # All on the queue and marked: the relay's outbox is empty.
            assert wait_until(lambda: marked() == COUNT, timeout=10)

            server.halt()
            server.start()  # back, and empty
            with pipeline(rt, ["transactional"], threads=8):
                assert wait_until(
                    lambda: status_counts(rt.session_factory).get("delivered") == COUNT,
                    timeout=120,
                    interval=0.5,
                ), status_counts(rt.session_factory)
            ledger = carrier_ledger(redis.Redis.from_url(server.url))
        finally:
            rt.close()
    assert ledger == (COUNT, 0)


def test_invariant_1_a_retry_waiting_out_its_back_off_is_enqueued_again_with_its_delay(
    runtime, client, make_stream, redis_client
):
    """A retry's delayed job is on the broker only (the row is marked enqueued, held for
    ``retry`` until ``not_before``). Redis loses it: the relay enqueues it again, still
    delayed until ``not_before``, and never twice."""
    answer = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(make_stream()["token"])
    )
    message_id = uuid.UUID(answer.json()["results"][0]["message_id"])
    now = runtime.clock()
    with runtime.session_factory() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(
                hold_reason="retry",
                not_before=now + timedelta(seconds=30),
                enqueued_at=now - timedelta(seconds=runtime.settings.relay_lost_after_seconds + 5),
                attempts=1,
            )
        )
        session.commit()
    redis_client.flushdb()  # the broker lost the delayed job

    relay = Relay(runtime)
    assert relay.sweep().lost_requeued == 1
    depth = read_depths(redis_client, NAMESPACE, ["transactional"])["transactional"]
    assert (depth["ready"], depth["delayed"]) == (0, 1)  # still waiting out its back-off
    # On the broker again: another relay (a fresh look) leaves it alone.
    assert Relay(runtime).sweep().lost_requeued == 0


class _ThrottlesForAnHour(SandboxProvider):
    def send(self, message):  # type: ignore[no-untyped-def]
        raise ProviderError("provider_throttled", "HTTP 429", transient=True, retry_after=3600)


def _accepted_and_marked(runtime, client, token: str, count: int):  # type: ignore[no-untyped-def]
    """Ids (``list[str]``) of ``count`` messages accepted, on the transactional queue and
    marked enqueued."""
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(internal_id=f"m{uuid.uuid4().hex}") for _ in range(count)]},
        headers=auth(token),
    )
    ids = [r["message_id"] for r in answer.json()["results"]]
    runtime.enqueue_marks.flush()
    with runtime.session_factory() as session:
        marks = session.scalars(
            select(Message.enqueued_at).where(Message.id.in_([uuid.UUID(i) for i in ids]))
        ).all()
    assert len(marks) == count and None not in marks
    return ids


def _a_retry_waits_an_hour(runtime, client, token: str) -> str:  # type: ignore[no-untyped-def]
    """A new message meets a carrier 429 asking for an hour: its retry's delayed job waits on
    the transactional queue, which is therefore never empty. (Its first job, the ingress',
    stays ready: the delivery here did not take it.)"""
    [busy] = _accepted_and_marked(runtime, client, token, 1)
    carrier = _ThrottlesForAnHour(runtime.settings.sandbox, runtime.redis)
    delivery_with(runtime, carrier).deliver(busy, "transactional")
    assert read_depths(runtime.redis, NAMESPACE, ["transactional"])["transactional"]["delayed"]
    return busy


def _ids_on_queue(redis_client) -> list[str]:  # type: ignore[no-untyped-def]
    return [i for _, ids in jobs_on(redis_client, "transactional") for i in ids]


def test_invariant_1_jobs_redis_lost_are_enqueued_again_while_a_retry_waits_on_the_queue(
    runtime, client, make_stream, redis_client
):
    """Redis is flushed under a relay that watches it, and life goes on: a retry waits out
    a carrier's one-hour Retry-After on the same queue, so that queue never looks empty. The
    relay's next sweep finds its sentinel gone and enqueues the lost messages again (and the
    waiting retry, still delayed: a harmless copy); the sweeps after it enqueue nothing."""
    runtime.clock = MovableClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    token = make_stream()["token"]
    relay = Relay(runtime)
    relay.sweep()
    lost = _accepted_and_marked(runtime, client, token, 3)
    redis_client.flushdb()
    busy = _a_retry_waits_an_hour(runtime, client, token)

    runtime.clock.advance(1)
    assert relay.sweep().lost_requeued == len(lost) + 1
    assert sorted(_ids_on_queue(redis_client)) == sorted([*lost, busy])
    runtime.clock.advance(60)
    assert relay.sweep().lost_requeued == Relay(runtime).sweep().lost_requeued == 0


def test_two_relays_that_notice_one_loss_agree_on_one_epoch_and_share_the_requeue(
    runtime, client, make_stream, redis_client
):
    """Two relays watch one Redis, which is flushed. The first to sweep writes the new
    epoch; the other takes it as it is rather than writing its own. Between them, a page of
    ``relay_batch`` at a time, every lost message is enqueued again once, and the loss is
    then settled: the sentinel stays, with nothing left to recover."""
    token = make_stream()["token"]
    own = build_runtime(runtime.settings.model_copy(update={"relay_batch": 2}))
    try:
        first, second = Relay(own), Relay(own)
        first.sweep()
        second.sweep()
        before = broker_epoch.Epoch.decode(redis_client.get(broker_epoch.KEY))
        lost = _accepted_and_marked(runtime, client, token, 5)
        redis_client.flushdb()
        busy = _a_retry_waits_an_hour(runtime, client, token)

        requeued = [relay.sweep().lost_requeued for _ in range(4) for relay in (first, second)]
        epoch = broker_epoch.Epoch.decode(redis_client.get(broker_epoch.KEY))
    finally:
        own.close()
    assert epoch.id != before.id and epoch.lost_before is None  # settled
    assert requeued[:3] == [2, 2, 2] and sum(requeued) == len(lost) + 1
    assert sorted(_ids_on_queue(redis_client)) == sorted([*lost, busy])  # each once


def test_a_healthy_redis_keeps_its_sentinel_and_nothing_marked_is_enqueued_again(
    runtime, client, make_stream, redis_client
):
    """While the sentinel stays, Redis has kept its data: an hour of sweeps, each by a
    relay that has just started, leaves the messages marked enqueued to their own jobs, and
    the epoch is never replaced."""
    runtime.clock = MovableClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    token = make_stream()["token"]
    Relay(runtime).sweep()
    written = redis_client.get(broker_epoch.KEY)
    assert written is not None
    waiting = _accepted_and_marked(runtime, client, token, 3)

    requeued = 0
    for _ in range(60):
        runtime.clock.advance(60)
        requeued += Relay(runtime).sweep().lost_requeued
    assert requeued == 0
    assert sorted(_ids_on_queue(redis_client)) == sorted(waiting)
    assert redis_client.get(broker_epoch.KEY) == written


def test_migrate_run_after_redis_lost_its_data_does_not_hide_the_loss(
    settings, runtime, client, make_stream, redis_client
):
    """A deployment restarts with a Redis that kept no data (compose down/up, no
    persistence): ``streams migrate`` runs first, then the relay, while traffic resumes (a
    retry waiting out a carrier's Retry-After keeps the queue non-empty). Migrate finds
    neither the sentinel nor the broker's keys while messages are marked enqueued: it
    leaves the sentinel out, and the relay recovers them as after any loss."""
    runtime.clock = MovableClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    token = make_stream()["token"]
    Relay(runtime).sweep()  # a relay watched the old Redis: its sentinel was there
    lost = _accepted_and_marked(runtime, client, token, 3)

    redis_client.flushdb()  # Redis comes back empty
    begin_broker_epoch(settings)  # the release's `streams migrate`, before any process
    assert redis_client.get(broker_epoch.KEY) is None
    busy = _a_retry_waits_an_hour(runtime, client, token)  # traffic resumes

    relay = Relay(runtime)  # the relay starts after migrate
    for _ in range(5):
        runtime.clock.advance(60)
        relay.sweep()
    on_queue = set(_ids_on_queue(redis_client))
    assert busy in on_queue
    assert set(lost) <= on_queue, "messages lost with Redis's data were never enqueued again"


def test_a_scheduled_message_enqueued_again_after_a_data_loss_still_waits_for_its_send_at(
    runtime, client, make_stream, redis_client
):
    """A scheduled message released within the relay's look-ahead (30 s here) is on the
    broker with a delay until its ``send_at``, and its row keeps no hold. Redis then loses
    its data: enqueued again, it is still delayed until its ``send_at``, never sent early."""
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    runtime.settings = runtime.settings.model_copy(update={"relay_lookahead_seconds": 30})
    stream = make_stream()
    send_at = clock() + timedelta(seconds=25)
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(send_at=send_at.isoformat())]},
        headers=auth(stream["token"]),
    )
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["results"][0]["message_id"]
    relay = Relay(runtime)
    relay.sweep()  # released with a 25 s broker delay, and marked
    assert message_id in [
        i for _, ids in delayed_jobs_on(redis_client, "transactional") for i in ids
    ]

    redis_client.flushdb()  # Redis loses its data
    clock.advance(1)
    grace = runtime.settings.relay_grace_seconds
    requeued = relay.sweep().lost_requeued  # finds its sentinel gone: the loss is recorded
    clock.advance(grace + 1)  # past the ingress' grace: the data-loss pass runs
    assert requeued + relay.sweep().lost_requeued == 1
    assert clock() < send_at
    ready = [i for _, ids in jobs_on(redis_client, "transactional") for i in ids]
    assert message_id not in ready, "enqueued ready to go, well before its send_at"


def test_migrate_after_traffic_resumed_on_an_emptied_redis_does_not_hide_the_loss(
    settings, runtime, client, make_stream, redis_client
):
    """Redis comes back empty while no relay runs, and the ingress and workers go on (a
    retry now waits on the queue) before the release's ``streams migrate``: the broker's new
    keys are no evidence that Redis kept its data, so migrate, with messages marked
    enqueued, writes no sentinel, and the relay recovers them."""
    runtime.clock = MovableClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    token = make_stream()["token"]
    Relay(runtime).sweep()
    lost = _accepted_and_marked(runtime, client, token, 3)

    redis_client.flushdb()  # Redis comes back empty; no relay is running
    busy = _a_retry_waits_an_hour(runtime, client, token)  # the web/workers go on
    begin_broker_epoch(settings)  # then the release's `streams migrate`
    sentinel_written = redis_client.get(broker_epoch.KEY) is not None

    relay = Relay(runtime)
    for _ in range(5):
        runtime.clock.advance(60)
        relay.sweep()
    on_queue = set(_ids_on_queue(redis_client))
    assert busy in on_queue
    assert set(lost) <= on_queue, (
        f"sentinel written by migrate: {sentinel_written}; lost messages never enqueued again"
    )


class _CountingCarrier(SandboxProvider):
    """The sandbox, counting the messages it is handed (a single send is a batch of one)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.handed: list[str] = []

    def send_batch(self, messages):  # type: ignore[no-untyped-def]
        self.handed.extend(message.reference for message in messages)
        return super().send_batch(messages)


def test_invariant_2_a_loss_recorded_where_no_job_was_lost_sends_nothing_twice(
    runtime, client, make_stream, redis_client
):
    """The relay meets a Redis without its sentinel whose jobs are all there (a Redis that
    ``streams migrate`` never saw, with messages marked enqueued): it records a loss and
    enqueues each marked message once more. Both jobs of each message run, and the carrier
    is handed each message once: the second job finds it claimed."""
    runtime.clock = MovableClock(datetime.now(UTC))
    token = make_stream()["token"]
    marked = _accepted_and_marked(runtime, client, token, 3)
    redis_client.delete(broker_epoch.KEY)
    runtime.clock.advance(1)
    assert Relay(runtime).sweep().lost_requeued == len(marked)
    on_queue = _ids_on_queue(redis_client)
    assert sorted(on_queue) == sorted(marked * 2)

    carrier = _CountingCarrier(runtime.settings.sandbox, runtime.redis)
    delivery = delivery_with(runtime, carrier)
    for message_id in on_queue:
        delivery.deliver(message_id, "transactional")
    assert sorted(carrier.handed) == sorted(marked)
    assert status_counts(runtime.session_factory) == {"delivered": len(marked)}
