"""Fault 1, invariant 1: Redis is down while a real ingress accepts 10,000 messages (single
sends and batches). Every 202 is stored; once Redis is back, the relay puts them on their
queue and each is delivered exactly once (counted at the sandbox carrier's ledger)."""

from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import func, select

from schemas.tables import Message
from tests.faults.outcomes import carrier_ledger, messages_with_more_than_one, status_counts
from tests.faults.traffic import requests_for, send_all
from tests.processes import environment, ingress, private_redis_server, running, wait_until

pytestmark = pytest.mark.slow

SINGLES = 1_000
BATCHES = 9
BATCH_SIZE = 1_000
TOTAL = SINGLES + BATCHES * BATCH_SIZE


def test_invariant_1_ten_thousand_accepted_while_redis_is_down_are_delivered_once(
    settings, runtime, make_stream, tmp_path
):
    started = time.monotonic()
    stream = make_stream()
    with private_redis_server() as server:
        own = settings.model_copy(update={"redis_url": server.url})
        with ingress(own, tmp_path / "ingress.log") as base:
            server.halt()
            answers = send_all(
                base, stream["token"], requests_for("down", SINGLES, BATCHES, BATCH_SIZE)
            )
            sent_in = time.monotonic() - started
            assert set(answers.statuses) == {202}, {
                s: answers.bodies_by_status[s][:2] for s in set(answers.statuses) - {202}
            }
            assert len(set(answers.accepted_ids)) == TOTAL
            with runtime.session_factory() as session:
                outbox = session.scalar(
                    select(func.count()).where(
                        Message.status == "queued", Message.enqueued_at.is_(None)
                    )
                )
            assert outbox == TOTAL, "every 202 is stored and waits in the outbox"

            server.start()  # an empty Redis: nothing of the outage survived in it
            extra = {"relay_grace_seconds": 0, "relay_interval_seconds": 0.2}
            pool = ["worker", "--queues", "transactional", "--processes", "2", "--threads", "8"]
            env = environment(own, **extra)
            with (
                running(["relay"], env, tmp_path / "relay.log"),
                running(pool, env, tmp_path / "worker.log"),
            ):
                assert wait_until(
                    lambda: status_counts(runtime.session_factory).get("delivered") == TOTAL,
                    timeout=300,
                    interval=1,
                ), status_counts(runtime.session_factory)
        drained_in = time.monotonic() - started - sent_in
        ledger = carrier_ledger(redis.Redis.from_url(server.url))

    assert ledger == (TOTAL, 0), "each message reached the carrier once, none offered twice"
    assert messages_with_more_than_one(runtime.session_factory, "sending") == 0
    with runtime.session_factory() as session:
        delivered = {
            str(m) for m in session.scalars(select(Message.id).where(Message.status == "delivered"))
        }
    assert delivered == set(answers.accepted_ids)
    print(
        f"\n[fault 1] redis down at ingress: {len(answers.statuses)} requests "
        f"({SINGLES} singles, {BATCHES} batches of {BATCH_SIZE}), {TOTAL} accepted in "
        f"{sent_in:.1f}s; relayed and delivered in {drained_in:.1f}s; "
        f"carrier submissions {ledger[0]}, repeats {ledger[1]}"
    )
