"""Status changes are published once committed, never on rollback, and a failing listener
neither undoes the commit nor starves the others."""

from __future__ import annotations

import uuid

from core.message_states import transition
from schemas.enums import MessageStatus
from tests.conftest import auth, message
from tests.processes import wait_until
from workers.pool import start_worker


def test_every_committed_change_is_published_in_order(client, runtime, make_stream):
    seen: list[tuple[str, str]] = []
    runtime.status_feed.subscribe(
        lambda changes: seen.extend((str(c.message_id), c.status.value) for c in changes)
    )
    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    worker = start_worker(runtime, ["transactional"], threads=1)
    try:
        assert wait_until(lambda: (message_id, "delivered") in seen, timeout=15)
    finally:
        worker.stop(timeout=5_000)
    assert [status for mid, status in seen if mid == message_id] == [
        "queued",
        "sending",
        "sent",
        "delivered",
    ]


def test_rolled_back_changes_are_not_published(client, runtime, make_stream):
    seen = []
    runtime.status_feed.subscribe(seen.extend)
    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    seen.clear()

    with runtime.session_factory() as session:
        change = transition(
            session,
            uuid.UUID(message_id),
            to=MessageStatus.canceled,
            allowed_from=[MessageStatus.queued],
            at=runtime.clock(),
        )
        assert change is not None and change.stream_id == uuid.UUID(stream["id"])
        session.rollback()
    assert seen == []


def test_a_failing_listener_does_not_break_sending(client, runtime, make_stream):
    def broken(_changes):
        raise RuntimeError("listener bug")

    later: list = []
    runtime.status_feed.subscribe(broken)
    runtime.status_feed.subscribe(later.extend)
    stream = make_stream()
    response = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    )
    assert response.status_code == 202
    assert [c.status.value for c in later] == ["queued"]
