"""Fault 2, invariants 1 and 2: a worker process is SIGKILLed while it drains 10,000
messages, and a new one is started. Nothing is lost: the dead worker's unacknowledged jobs
return to the queue once its heartbeat is stale, and its claims (``sending``) are reclaimed
by the relay after the claim lease. Nothing is sent twice: the sandbox carrier's ledger holds
10,000 distinct submissions. A message the dead worker handed to the carrier without
recording it is offered again under the same reference, and the carrier answers with the
first id instead of sending it again; there can be at most one such message per claim the
dead worker held."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from schemas.tables import Message
from tests.conftest import auth, message
from tests.faults.outcomes import (
    carrier_ledger,
    carrier_references,
    messages_with_more_than_one,
    status_counts,
)
from tests.processes import environment, running, stop, wait_until

pytestmark = pytest.mark.slow

TOTAL = 10_000
BATCH = 1_000
#: Short enough for a quick test; the defaults (60 s, 300 s) are for production.
FAST_RECOVERY = {
    "broker_heartbeat_timeout_ms": 5_000,
    "broker_maintenance_chance": 100_000,
    "claim_lease_seconds": 5,
    "relay_grace_seconds": 0,
    "relay_interval_seconds": 0.5,
}


@pytest.fixture
def settings(settings):
    """The backlog goes in as fast as the ingress takes it (10,000 messages in seconds),
    past the default ingress quota of 1,000 a second a stream: the quota is not what this
    module tests."""
    return settings.model_copy(update={"ingress_quota_per_second": 0})


def test_invariants_1_and_2_worker_sigkilled_mid_drain_loses_nothing_sends_nothing_twice(
    settings, runtime, client, make_stream, tmp_path
):
    stream = make_stream()
    started = time.monotonic()
    for b in range(TOTAL // BATCH):
        answer = client.post(
            "/v1/messages",
            json={"messages": [message(internal_id=f"k{b}-{i}") for i in range(BATCH)]},
            headers=auth(stream["token"]),
        )
        assert answer.status_code == 202 and answer.json()["accepted"] == BATCH
    queued_in = time.monotonic() - started

    env = environment(settings, **FAST_RECOVERY)
    pool = ["worker", "--queues", "transactional", "--processes", "1", "--threads", "8"]

    def done() -> int:
        counts = status_counts(runtime.session_factory)
        return counts.get("sent", 0) + counts.get("delivered", 0)

    with running(pool, env, tmp_path / "doomed.log") as doomed:
        assert wait_until(lambda: done() >= TOTAL // 5, timeout=300, interval=0.2)
        stop(doomed, sig=9)  # SIGKILL: no shutdown, no hand-back, claims left behind
    at_kill = status_counts(runtime.session_factory)
    killed_after = time.monotonic() - started
    claims_left = at_kill.get("sending", 0)
    print(f"\n[fault 2] statuses at SIGKILL: {at_kill}")

    new_pool = ["worker", "--queues", "transactional", "--processes", "2", "--threads", "8"]
    with (
        running(new_pool, env, tmp_path / "worker.log"),
        running(["relay"], env, tmp_path / "relay.log"),
    ):
        # Sent or delivered: a sandbox receipt with a delay is a job its worker enqueues
        # after recording `sent`, so a worker killed between the two takes that simulated
        # receipt with it (a real carrier sends its receipt whatever happens to our worker).
        assert wait_until(
            lambda: done() == TOTAL,
            timeout=300,
            interval=1,
        ), status_counts(runtime.session_factory)
    finished = time.monotonic() - started

    submissions, repeats = carrier_ledger(runtime.redis)
    assert submissions == TOTAL, "every message reached the carrier, none as a second SMS"
    assert carrier_references(runtime.redis) == TOTAL
    assert repeats <= claims_left, "only a claim of the dead worker may be offered again"
    assert messages_with_more_than_one(runtime.session_factory, "sent") == 0
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == TOTAL
    print(
        f"[fault 2] worker killed: {TOTAL} queued in {queued_in:.1f}s, SIGKILL at "
        f"{killed_after:.1f}s with {done_at(at_kill)} done and {claims_left} claims held; "
        f"all sent at {finished:.1f}s; carrier submissions {submissions}, repeats "
        f"{repeats} (same reference, answered with the first id)"
    )


def done_at(counts: dict[str, int]) -> int:
    return counts.get("sent", 0) + counts.get("delivered", 0)
