"""Invariants 1 and 2 when a worker dies mid-message: the message is delivered by another
worker, and the carrier gets it once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from schemas.tables import Message, MessageEvent
from tests.conftest import auth, message
from tests.processes import stop, wait_until, worker_pool
from workers.pool import start_worker
from workers.providers.sandbox import LEDGER_PREFIX, SUBMISSIONS_KEY, SandboxProvider
from workers.relay import Relay

pytestmark = pytest.mark.slow


def status_of(runtime, message_id: str) -> str:
    with runtime.session_factory() as session:
        return session.scalar(select(Message.status).where(Message.id == uuid.UUID(message_id)))


def history_of(runtime, message_id: str) -> list[str]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(MessageEvent.status)
                .where(MessageEvent.message_id == uuid.UUID(message_id))
                .order_by(MessageEvent.id)
            )
        )


@pytest.mark.parametrize("count", [1, 5], ids=["one_message", "a_batch_request"])
def test_invariant_2_worker_killed_during_provider_call(
    settings, runtime, client, make_stream, tmp_path, count
):
    """The worker dies while its request is out, before the carrier answered: a single
    message, or a batch job's five in one request to the sandbox. Every message is
    delivered by the next worker (none lost with the batch's claims), and the carrier
    counted each once. (The carrier taking a message and the worker dying before recording
    it is the next test's case; the repeats of a request are the sandbox's own test.)"""
    slow = settings.model_copy(
        update={"sandbox": settings.sandbox.model_copy(update={"latency_ms": 3000})}
    )
    stream = make_stream()
    sent = client.post(
        "/v1/messages",
        json={"messages": [message() for _ in range(count)]},
        headers=auth(stream["token"]),
    )
    ids = [result["message_id"] for result in sent.json()["results"]]

    with worker_pool(slow, tmp_path / "worker.log", threads=1, claim_lease_seconds=2) as doomed:
        sending = lambda: {status_of(runtime, i) for i in ids} == {"sending"}  # noqa: E731
        assert wait_until(sending, timeout=20)
        stop(doomed, sig=9)  # SIGKILL in the middle of the provider call

    runtime.settings = settings.model_copy(update={"claim_lease_seconds": 2})
    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        relay = Relay(runtime)

        def delivered() -> bool:
            relay.sweep()
            return {status_of(runtime, i) for i in ids} == {"delivered"}

        assert wait_until(delivered, timeout=30, interval=0.25), [
            history_of(runtime, i) for i in ids
        ]
    finally:
        worker.stop(timeout=5_000)
    assert SandboxProvider(settings.sandbox, runtime.redis).submissions() == count
    for message_id in ids:
        assert history_of(runtime, message_id)[-3:] == ["sending", "sent", "delivered"]


def test_invariant_2_worker_killed_after_the_carrier_accepted(
    settings, runtime, client, make_stream
):
    """The worst moment: the carrier took the message, the worker died before recording it.
    The reclaimed message is offered again under the same reference and the carrier
    recognises it, so the recipient gets one SMS."""
    stream = make_stream()
    sent = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    )
    message_id = sent.json()["results"][0]["message_id"]
    long_ago = runtime.clock() - timedelta(hours=1)
    with runtime.session_factory() as session:  # the state such a crash leaves behind
        session.execute(
            update(Message)
            .where(Message.id == uuid.UUID(message_id))
            .values(status="sending", claimed_at=long_ago, attempts=1)
        )
        session.commit()
    runtime.redis.set(LEDGER_PREFIX + message_id, "sbx_first")
    runtime.redis.incr(SUBMISSIONS_KEY)
    runtime.redis.delete("dramatiq:transactional")  # the original queue entry was consumed

    assert Relay(runtime).sweep().reclaimed == 1
    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(lambda: status_of(runtime, message_id) == "delivered", timeout=20), (
            history_of(runtime, message_id)
        )
    finally:
        worker.stop(timeout=5_000)
    assert SandboxProvider(settings.sandbox, runtime.redis).submissions() == 1
    with runtime.session_factory() as session:
        stored = session.get(Message, uuid.UUID(message_id))
        assert stored is not None and stored.provider_message_id == "sbx_first"


def test_invariant_2_redelivered_queue_entry_is_not_sent_again(
    settings, runtime, client, make_stream
):
    """At-least-once queues deliver twice; the claim makes the second a no-op."""
    from workers.queueing import enqueue_delivery

    stream = make_stream()
    sent = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    )
    message_id = sent.json()["results"][0]["message_id"]
    for _ in range(3):
        enqueue_delivery(runtime.broker, "transactional", message_id)
    worker = start_worker(runtime, ["transactional"], threads=4)
    try:
        assert wait_until(lambda: status_of(runtime, message_id) == "delivered", timeout=20)
        assert wait_until(lambda: runtime.redis.llen("dramatiq:transactional") == 0, timeout=10)
    finally:
        worker.stop(timeout=5_000)
    assert SandboxProvider(settings.sandbox, runtime.redis).submissions() == 1
    assert history_of(runtime, message_id).count("sending") == 1
