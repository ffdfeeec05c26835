"""End to end with real processes: ``streams serve`` → Redis → ``streams worker`` → sandbox
→ ``delivered``; and a paused stream's queued messages wait, then go."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import auth, message
from tests.processes import ingress, wait_until, worker_pool
from workers.pool import start_worker
from workers.relay import Relay

pytestmark = pytest.mark.slow


def test_send_through_real_ingress_and_worker_processes(settings, runtime, account_key, tmp_path):
    with (
        ingress(settings, tmp_path / "ingress.log") as base,
        worker_pool(settings, tmp_path / "worker.log", queues="otp,transactional"),
    ):
        created = httpx.post(
            base + "/api/v1/streams",
            json={
                "name": "Shipping",
                "type": "transactional",
                "default_sender": "Acme",
                "tags": ["eu"],
            },
            headers=auth(account_key),
        ).json()
        assert created["status"] == "ready"
        token = httpx.get(
            f"{base}/api/v1/streams/{created['id']}/token", headers=auth(account_key)
        ).json()["token"]
        accepted = httpx.post(
            base + "/v1/messages",
            json={"messages": [message(internal_id=f"e2e-{i}") for i in range(5)]},
            headers=auth(token),
        )
        assert accepted.status_code == 202
        ids = [r["message_id"] for r in accepted.json()["results"]]

        def all_delivered() -> bool:
            return all(
                httpx.get(f"{base}/v1/messages/{i}", headers=auth(token)).json()["status"]
                == "delivered"
                for i in ids
            )

        assert wait_until(all_delivered, timeout=30, interval=0.2)
        history = httpx.get(f"{base}/api/v1/messages/{ids[0]}", headers=auth(account_key)).json()[
            "history"
        ]
        assert [h["status"] for h in history] == ["queued", "sending", "sent", "delivered"]
        listed = httpx.get(
            base + "/api/v1/streams", params={"status": "sending"}, headers=auth(account_key)
        )
        assert [s["id"] for s in listed.json()["items"]] == [created["id"]]
        metrics = httpx.get(base + "/metrics").text
        assert 'streams_messages_total{status="queued",type="transactional"} 5.0' in metrics


CALLBACK = {"callback_url": "https://hooks.example.com/streams"}


def _set_state(action: str):
    def apply(client, account_key, stream) -> None:
        response = client.post(
            f"/api/v1/streams/{stream['id']}/{action}", headers=auth(account_key)
        )
        assert response.status_code == 200, response.text

    return apply


def _put_settings(settings: dict):
    def apply(client, account_key, stream) -> None:
        response = client.put(
            f"/api/v1/streams/{stream['id']}/settings", json=settings, headers=auth(account_key)
        )
        assert response.status_code == 200, response.text

    return apply


#: How a stream stops accepting sends and starts again: the customer's pause, and a set-up
#: made incomplete (a two-way stream without its callback URL is ``draft``) then mended.
PAUSES = {
    "disabled": ({"type": "transactional"}, _set_state("disable"), _set_state("enable")),
    "draft": (
        {"type": "two_way", "settings": CALLBACK},
        _put_settings({}),
        _put_settings(CALLBACK),
    ),
}


@pytest.mark.parametrize("pause", PAUSES)
def test_a_stream_that_stops_accepting_sends_holds_its_queued_messages_until_it_does_again(
    client, runtime, make_stream, account_key, pause
):
    fields, stop, resume = PAUSES[pause]
    stream = make_stream(**fields)
    ids = [
        r["message_id"]
        for r in client.post(
            "/v1/messages",
            json={"messages": [message() for _ in range(3)]},
            headers=auth(stream["token"]),
        ).json()["results"]
    ]
    stop(client, account_key, stream)
    shown = client.get(f"/api/v1/streams/{stream['id']}", headers=auth(account_key)).json()
    assert shown["status"] == pause
    worker = start_worker(runtime, [fields["type"]], threads=2)
    try:

        def messages() -> list[tuple[str, str | None]]:
            return [
                (shown["status"], shown.get("hold_reason"))
                for shown in (
                    client.get(f"/api/v1/messages/{i}", headers=auth(account_key)).json()
                    for i in ids
                )
            ]

        parked = [("queued", "stream_paused")] * 3
        # The messages of a stream that accepts no sends wait parked: none is sent or dropped,
        # and the relay leaves them be.
        assert wait_until(lambda: messages() == parked, timeout=10, interval=0.1), messages()
        relay = Relay(runtime)
        relay.sweep()
        assert messages() == parked
        assert runtime.redis.llen(f"dramatiq:{fields['type']}") == 0

        resume(client, account_key, stream)

        def delivered() -> bool:
            relay.sweep()
            return [status for status, _ in messages()] == ["delivered"] * 3

        assert wait_until(delivered, timeout=20, interval=0.2)
    finally:
        worker.stop(timeout=5_000)


def test_deleted_streams_unsent_messages_fail_with_a_reason(
    client, runtime, make_stream, account_key
):
    """Deleting a stream stops its token; what it had accepted but not sent is failed with
    ``stream_deleted`` rather than left queued forever, and stays readable."""
    from sqlalchemy import update

    from schemas.tables import Message

    stream = make_stream()
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    # The 202 comes at commit; the enqueue and its mark follow. Let both land first.
    assert wait_until(lambda: runtime.redis.llen("dramatiq:transactional") >= 1, timeout=10)
    runtime.enqueue_marks.flush()
    with runtime.session_factory() as session:  # as if Redis had been down at enqueue time
        session.execute(update(Message).values(enqueued_at=None))
        session.commit()
    runtime.redis.flushdb()
    assert (
        client.delete(f"/api/v1/streams/{stream['id']}", headers=auth(account_key)).status_code
        == 204
    )
    assert Relay(runtime).sweep().deleted_ended == 1  # failed by the relay, not enqueued
    body = client.get(f"/api/v1/messages/{message_id}", headers=auth(account_key)).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "stream_deleted")
