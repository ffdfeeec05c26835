"""Invariant 1 when Redis comes back empty (a restart without persistence, a failover to an
empty replica, a flush): messages that were on a queue, and marked enqueued, are gone from
the broker. The relay notices a queue that holds nothing (ready, fetched or delayed) while
the database says messages wait on it, enqueues them again, and each is delivered once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from core.broker import NAMESPACE
from core.queue_depth import read_depths
from core.runtime import build_runtime
from dispatcher.app import create_app
from schemas.tables import Message
from tests.conftest import CLIENT_IP, auth, message
from tests.faults.outcomes import carrier_ledger, status_counts
from tests.processes import pipeline, private_redis_server, wait_until
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
