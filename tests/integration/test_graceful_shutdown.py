"""SIGTERM stops processes gracefully: a worker finishes its in-flight send and hands its
prefetched messages back; the ingress finishes the requests it has open (invariant 1)."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import environment, free_port, running, wait_until, worker_pool
from workers.pool import start_worker
from workers.providers.sandbox import SandboxProvider

pytestmark = pytest.mark.slow


def statuses(runtime, ids: list[str]) -> list[str]:
    with runtime.session_factory() as session:
        return [
            session.scalar(select(Message.status).where(Message.id == uuid.UUID(i))) for i in ids
        ]


def test_invariant_1_sigterm_lets_a_worker_finish_its_in_flight_send(
    settings, runtime, client, make_stream, tmp_path
):
    slow = settings.model_copy(
        update={"sandbox": settings.sandbox.model_copy(update={"latency_ms": 2500, "max_batch": 1})}
    )
    stream = make_stream(demo=True)
    ids = [
        r["message_id"]
        for r in client.post(
            "/v1/messages",
            json={"messages": [message() for _ in range(3)]},
            headers=auth(stream["token"]),
        ).json()["results"]
    ]
    log = tmp_path / "worker.log"
    sandbox = SandboxProvider(settings.sandbox, runtime.redis)
    # The three go as one batch job, to a carrier that takes one message per request (one
    # that takes batches would get all three in one request). One call at a time, so that
    # exactly one is in flight when SIGTERM lands: by default the calls of a batch go side
    # by side once the first has run INLINE_SECONDS (50 ms), and then all three are in
    # flight and all finish.
    with worker_pool(slow, log, threads=1, batch_send_concurrency=1) as worker:
        assert wait_until(lambda: "sending" in statuses(runtime, ids), timeout=20), log.read_text()
        worker.send_signal(signal.SIGTERM)  # mid provider call
        assert worker.wait(timeout=30) == 0
    assert sandbox.submissions() == 1, "one call was made"
    # The sandbox reports delivery at once here, so the finished send is already delivered.
    assert sorted(statuses(runtime, ids)) == ["delivered", "queued", "queued"], log.read_text()
    assert '"worker_stopped"' in log.read_text()

    # What was prefetched went back to Redis: a fresh worker delivers everything, once.
    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(lambda: statuses(runtime, ids) == ["delivered"] * 3, timeout=30)
    finally:
        worker.stop(timeout=5_000)
    assert sandbox.submissions() == 3


def test_invariant_1_sigterm_lets_the_ingress_finish_an_open_request(
    settings, runtime, make_stream, tmp_path
):
    stream = make_stream(demo=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    first_half_sent = threading.Event()
    body = (
        b'{"messages": [{"internal_id": "drain-1", "recipient_phone": "+972524265292", '
        b'"message_content": "sent while the ingress stops"}]}'
    )

    def slow_body():
        yield body[:40]
        first_half_sent.set()
        time.sleep(2)  # the request is open when SIGTERM arrives
        yield body[40:]

    outcome: dict = {}

    def post() -> None:
        try:
            outcome["response"] = httpx.post(
                base + "/v1/messages",
                content=slow_body(),
                headers={**auth(stream["token"]), "Content-Type": "application/json"},
                timeout=30,
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    with running(args, environment(settings), tmp_path / "serve.log") as serve:
        assert wait_until(lambda: _answers(base + "/healthz"), timeout=20)
        sender = threading.Thread(target=post)
        sender.start()
        assert first_half_sent.wait(timeout=10)
        time.sleep(0.3)
        serve.send_signal(signal.SIGTERM)
        sender.join(timeout=30)
        # uvicorn drains, then re-raises the signal it caught: "killed by SIGTERM" is a clean
        # stop here, and what a supervisor expects.
        assert serve.wait(timeout=40) in (0, -signal.SIGTERM)
    assert "error" not in outcome, outcome
    response = outcome["response"]
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    with runtime.session_factory() as session:
        stored = session.scalar(select(Message).where(Message.internal_id == "drain-1"))
        assert stored is not None and stored.enqueued_at is not None
    assert not _answers(base + "/healthz"), "the ingress has stopped"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
