"""Fault 3, invariants 1 and 7: PostgreSQL restarts while a real ingress is taking sends,
and workers and the relay are draining.

A cluster of the test's own (``tests/postgres_cluster.py``; the machine's server is shared)
is stopped for a few seconds and started again under steady traffic. During the outage
every answer is 503 with the contract's error body (``database_unavailable``), never a 500
and never a hang; afterwards the ingress recovers by itself (its pool drops the dead
connections), every message that got a 202 is in the database, and the workers and the
relay, which lived through the same outage, deliver all of them.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.accounts import create_account
from core.database import build_engine, build_session_factory
from core.migrate import upgrade
from schemas.tables import Message
from tests.conftest import message
from tests.faults.traffic import Send, SteadyTraffic
from tests.postgres_cluster import private_cluster
from tests.processes import environment, ingress, running, wait_until

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 3
#: A claim cut short by the outage is taken back after 5 s rather than 5 minutes.
WORKER_SETTINGS = {
    "claim_lease_seconds": 5,
    "relay_grace_seconds": 1,
    "relay_interval_seconds": 0.5,
}


def test_invariant_1_postgres_restart_answers_503_then_recovers_and_keeps_every_202(
    settings, tmp_path
):
    with private_cluster() as cluster:
        url = cluster.create_database(f"streams_fault_{uuid.uuid4().hex[:8]}")
        upgrade(url)
        engine = build_engine(url, pool_size=2)
        account_key = create_account(build_session_factory(engine), "Acme")[1]
        own = settings.model_copy(update={"database_url": url})
        env = environment(own, **WORKER_SETTINGS)
        pool = ["worker", "--queues", "transactional", "--processes", "1", "--threads", "8"]
        with (
            ingress(own, tmp_path / "ingress.log") as base,
            running(pool, env, tmp_path / "worker.log"),
            running(["relay"], env, tmp_path / "relay.log"),
        ):
            token = _stream_token(base, account_key)

            def make(n: int) -> Send:
                count = 10 if n % 5 == 0 else 1  # every fifth request a small batch
                items = [message(internal_id=f"r{n}-{i}") for i in range(count)]
                return Send("/v1/messages", token, {"messages": items})

            traffic = SteadyTraffic(base, make, connections=4)
            traffic.start()
            try:
                assert wait_until(lambda: traffic.count(202) >= 50, timeout=60)
                cluster.stop()
                down_at = time.monotonic()
                assert wait_until(lambda: traffic.count(503) >= 10, timeout=30)
                time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
                cluster.start()
                up_at = time.monotonic()
                after = traffic.count(202)
                assert wait_until(lambda: traffic.count(202) >= after + 100, timeout=60), (
                    "the ingress did not recover by itself"
                )
            finally:
                traffic.stop()
            recovered = _first_202_after(traffic.log, up_at)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
                final = [c.post("/v1/messages", json={"messages": [message()]}) for _ in range(20)]
            accepted = set(traffic.answers.accepted_ids) | {
                a.json()["results"][0]["message_id"] for a in final if a.status_code == 202
            }
            # The workers and the relay lived through the outage too: everything accepted
            # is delivered, including what was claimed when the server went away.
            delivered = wait_until(lambda: _delivered(engine) >= accepted, timeout=180, interval=1)
            drained_at = time.monotonic() - up_at

        statuses = traffic.answers.statuses
        assert not traffic.transport_errors, traffic.transport_errors[:3]
        assert set(statuses) == {202, 503}, sorted(set(statuses))
        for body in traffic.answers.bodies_by_status[503]:
            assert body["error"]["code"] == "database_unavailable", body
            assert body["error"]["message"], body
        assert [a.status_code for a in final] == [202] * 20, "after recovery all are accepted"
        assert delivered, f"{len(accepted - _delivered(engine))} accepted, not delivered"

        with engine.connect() as connection:
            stored = {str(i) for i in connection.execute(select(Message.id)).scalars()}
        missing = accepted - stored
        assert not missing, f"{len(missing)} messages answered 202 are not stored"
        engine.dispose()
    print(
        f"\n[fault 3] postgres restart: {len(statuses)} requests, {statuses.count(202)} x 202 "
        f"({len(traffic.answers.accepted_ids)} messages, all stored), "
        f"{statuses.count(503)} x 503 database_unavailable, 0 x 500; outage "
        f"{up_at - down_at:.1f}s; first 202 {recovered:.2f}s after the server was back; "
        f"all {len(accepted)} delivered {drained_at:.1f}s after it"
    )


def _delivered(engine) -> set[str]:  # type: ignore[no-untyped-def]
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Message.id).where(Message.status == "delivered"))
            return {str(i) for i in rows.scalars()}
    except OperationalError:
        engine.dispose()  # a connection from before the restart
        return set()


def _stream_token(base: str, account_key: str) -> str:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {account_key}"}) as c:
        created = c.post(
            "/api/v1/streams",
            json={"name": "Orders", "type": "transactional", "default_sender": "Acme"},
        )
        assert created.status_code == 201, created.text
        return c.get(f"/api/v1/streams/{created.json()['id']}/token").json()["token"]


def _first_202_after(log: list[tuple[float, int, Send]], moment: float) -> float:
    return min(at for at, status, _ in log if status == 202 and at >= moment) - moment
