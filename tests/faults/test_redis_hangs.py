"""A Redis that hangs (accepts, never answers: here a private redis-server stopped with
SIGSTOP) must not stall the ingress. Enqueues give up after the configured socket timeout,
the 202 still comes (the message is stored, invariant 1), and the relay enqueues it once
Redis answers again."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import func, select

from core.runtime import build_runtime
from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import ingress, private_redis_server
from workers.relay import Relay

pytestmark = pytest.mark.slow

#: The ingress' Redis timeouts in this test. The client gives it ANSWER_BOUND_SECONDS: a few
#: timeouts' worth, far below redis-py's own 5 s default and the forever of older releases.
REDIS_TIMEOUT_SECONDS = 0.5
ANSWER_BOUND_SECONDS = 4.0


def test_invariant_1_a_hung_redis_costs_the_ingress_one_timeout_not_forever(
    settings, runtime, make_stream, tmp_path
):
    stream = make_stream()
    with private_redis_server() as server:
        own = settings.model_copy(
            update={
                "redis_url": server.url,
                "redis_socket_timeout_seconds": REDIS_TIMEOUT_SECONDS,
                "redis_connect_timeout_seconds": REDIS_TIMEOUT_SECONDS,
            }
        )
        timeouts = {
            "redis_socket_timeout_seconds": REDIS_TIMEOUT_SECONDS,
            "redis_connect_timeout_seconds": REDIS_TIMEOUT_SECONDS,
        }
        with (
            ingress(own, tmp_path / "ingress.log", **timeouts) as base,
            httpx.Client(base_url=base, headers=auth(stream["token"])) as client,
        ):
            warm = client.post("/v1/messages", json={"messages": [message(internal_id="warm")]})
            assert warm.status_code == 202  # the ingress now holds live Redis connections

            server.pause()
            try:
                started = time.monotonic()
                single = client.post(
                    "/v1/messages",
                    json={"messages": [message(internal_id="single")]},
                    timeout=ANSWER_BOUND_SECONDS,
                )
                batch = client.post(
                    "/v1/messages",
                    json={"messages": [message(internal_id=f"b{i}") for i in range(50)]},
                    timeout=ANSWER_BOUND_SECONDS,
                )
                answered_in = time.monotonic() - started
            finally:
                server.resume()
        assert single.status_code == 202, single.text
        assert batch.status_code == 202 and batch.json()["accepted"] == 50, batch.text
        with runtime.session_factory() as session:
            held = session.scalar(
                select(func.count()).where(
                    Message.status == "queued",
                    Message.enqueued_at.is_(None),
                    Message.internal_id != "warm",
                )
            )
        assert held == 51, "both sends are stored and wait in the outbox for the relay"

        own_runtime = build_runtime(own)
        try:
            assert Relay(own_runtime).sweep().relayed == 51
        finally:
            own_runtime.close()
    print(
        f"\n[redis hangs] single + batch of 50 answered 202 in {answered_in:.2f}s with a "
        f"{REDIS_TIMEOUT_SECONDS}s Redis timeout; 51 relayed after resume"
    )
