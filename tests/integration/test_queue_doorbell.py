"""``core.queue_doorbell`` against real Redis: an idle consumer of a doorbell queue picks a job
up as soon as it is enqueued, long before its poll interval; a job that arrives without a
token is still fetched at the next poll; tokens cannot pile up."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest

from core.broker import build_broker
from core.queue_doorbell import MAX_TOKENS, DoorbellRedisBroker, doorbell_key

#: Far longer than any wake-up by a token may take.
POLL_MS = 2_000


@pytest.fixture
def broker(settings) -> DoorbellRedisBroker:  # type: ignore[no-untyped-def]
    built = build_broker(settings)
    assert isinstance(built, DoorbellRedisBroker)
    assert built.doorbell_queues == {"otp"}
    yield built
    built.close()


def job(queue: str) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=queue, actor_name=f"deliver_{queue}", args=("x",), kwargs={}, options={}
    )


def next_job(consumer, deadline: float):  # type: ignore[no-untyped-def]
    """The first job the consumer yields before ``deadline`` (monotonic), or None."""
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    return None


def test_an_idle_consumer_is_woken_by_the_enqueue(broker, redis_client):
    consumer = broker.consume("otp", prefetch=1, timeout=POLL_MS)
    assert next(consumer) is None  # empty: it waited for a token, up to the poll interval
    # By then dramatiq's own backoff would sleep hundreds of milliseconds between fetches.
    timer = threading.Timer(1.0, lambda: broker.enqueue(job("otp")))
    started = time.monotonic()
    timer.start()
    message = next_job(consumer, started + 5)
    waited = time.monotonic() - started
    assert message is not None and message.actor_name == "deliver_otp"
    assert waited < 1.0 + 0.2, f"picked up {waited - 1.0:.3f} s after the enqueue"
    consumer.ack(message)


def test_a_job_without_a_token_is_fetched_at_the_next_poll(broker, redis_client):
    consumer = broker.consume("otp", prefetch=1, timeout=300)
    broker.do_enqueue("otp", "no-token", job("otp").encode())  # as a requeue puts it back
    assert redis_client.llen(doorbell_key(broker.namespace, "otp")) == 0
    message = next_job(consumer, time.monotonic() + 5)
    assert message is not None


def test_only_jobs_due_now_on_doorbell_queues_ring(broker, redis_client):
    broker.enqueue(job("otp"), delay=60_000)  # on otp.DQ: its worker moves it when due
    broker.enqueue(job("marketing"))
    assert redis_client.llen(doorbell_key(broker.namespace, "otp")) == 0
    assert redis_client.llen(doorbell_key(broker.namespace, "marketing")) == 0
    broker.enqueue(job("otp"))
    assert redis_client.llen(doorbell_key(broker.namespace, "otp")) == 1


def test_tokens_nobody_takes_are_trimmed(broker, redis_client):
    for _ in range(MAX_TOKENS + 10):
        broker.ring("otp")
    assert redis_client.llen(doorbell_key(broker.namespace, "otp")) == MAX_TOKENS
