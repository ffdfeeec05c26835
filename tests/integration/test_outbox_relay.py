"""Invariant 1: nothing accepted is lost. A 202 means the message is in PostgreSQL; if Redis
is down at enqueue time the relay puts it on the queue later, and it is delivered once."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.runtime import build_runtime
from dispatcher.app import create_app
from schemas.tables import Message
from tests.conftest import CLIENT_IP, auth, message
from tests.processes import private_redis, wait_until
from workers.pool import start_worker
from workers.providers.sandbox import SandboxProvider
from workers.relay import Relay


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
