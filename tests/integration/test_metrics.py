"""Prometheus metrics move as they should through a real send, and queue depth reads the
keys dramatiq really uses."""

from __future__ import annotations

import uuid

from core.broker import NAMESPACE
from core.credentials import SecretBox
from core.queue_depth import ready_list_key
from core.settings import Settings
from dispatcher.app import create_app
from schemas.tables import Message
from tests.conftest import auth, message
from tests.otp_codes import send_code
from tests.processes import private_redis, wait_until
from tests.scrape import parse, total, value
from workers.pool import start_worker
from workers.queueing import enqueue_delivery


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def statuses(runtime, ids):
    with runtime.session_factory() as session:
        return [session.get(Message, uuid.UUID(i)).status for i in ids]


def test_metrics_move_through_a_real_send(client, runtime, make_stream):
    stream = make_stream(demo=True)
    before = scrape(client)
    response = client.post(
        "/v1/messages",
        json={
            "messages": [
                message(),
                message(message_content="x" * 200),  # two segments
                message(),
                message(recipient_phone="12"),  # rejected at the ingress
            ]
        },
        headers=auth(stream["token"]),
    )
    ids = [r["message_id"] for r in response.json()["results"] if r.get("message_id")]
    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(lambda: statuses(runtime, ids) == ["delivered"] * 3, timeout=20)
        after = scrape(client)
        assert wait_until(
            lambda: (
                value(scrape(client), "streams_worker_messages_in_progress", queue="transactional")
                == 0
            ),
            timeout=5,
        )
    finally:
        worker.stop(timeout=5_000)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    kind = {"type": "transactional"}
    assert moved("streams_messages_accepted_total", **kind) == 3
    assert moved("streams_messages_rejected_total", reason="invalid_phone", **kind) == 1
    assert moved("streams_messages_total", status="queued", **kind) == 3
    assert moved("streams_messages_total", status="sent", **kind) == 3
    assert moved("streams_messages_total", status="delivered", **kind) == 3
    assert moved("streams_segments_sent_total", **kind) == 4
    assert moved("streams_http_requests_total", route="/v1/messages", code="202") == 1
    assert moved("streams_http_request_duration_seconds_count", route="/v1/messages") == 1
    assert moved("streams_provider_call_duration_seconds_count", provider="sandbox") == 3
    queue = {"queue": "transactional"}
    assert moved("streams_worker_processing_duration_seconds_count", **queue) == 3
    assert moved("streams_delivery_latency_seconds_count", **queue) == 3
    # The +Inf bucket holds every observation; the latency of a fresh send is seconds at most.
    assert moved("streams_delivery_latency_seconds_bucket", le="5.0", **queue) == 3
    assert moved("streams_worker_jobs_total", outcome="done", **queue) >= 1
    assert moved("streams_worker_jobs_total", outcome="failed", **queue) == 0


def test_a_delivery_job_that_keeps_raising_moves_a_failure_metric(
    client, runtime, otp_stream, account_key
):
    """A delivery job that raises (here: an otp pool started with the wrong
    ``STREAMS_SECRET_KEY`` cannot open the sealed text of any code; the same for a database
    error or a bug) is retried by dramatiq for hours before it becomes a ``worker_error``
    dead letter. Its first failed attempt must show in Prometheus, and must not be observed
    as a delivery latency: its quick end would tell the OTP latency alert that codes go out
    fast while not one does."""
    stream = otp_stream(code_length=6)
    message_id = send_code(client, stream).json()["message_id"]
    runtime.secret_box = SecretBox("a-different-secret-key-than-the-ingress-used")
    before = scrape(client)

    def failed_jobs() -> float:
        return value(scrape(client), "streams_worker_jobs_total", queue="otp", outcome="failed")

    worker = start_worker(runtime, ["otp"], threads=1)
    try:
        # dramatiq's first retry is delayed (min_backoff 1 s): the job raised once. The
        # retry is on the delay queue before the metrics middleware has counted it.
        assert wait_until(lambda: runtime.redis.llen("dramatiq:otp.DQ") >= 1, timeout=15)
        assert wait_until(
            lambda: (
                failed_jobs()
                > value(before, "streams_worker_jobs_total", queue="otp", outcome="failed")
            ),
            timeout=5,
        )
    finally:
        worker.stop(timeout=5_000)
    after = scrape(client)
    assert statuses(runtime, [message_id]) == ["queued"]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("streams_worker_jobs_total", queue="otp", outcome="failed") >= 1
    assert moved("streams_worker_jobs_total", queue="otp", outcome="done") == 0
    assert moved("streams_delivery_latency_seconds_count", queue="otp") == 0


def test_provider_errors_are_counted_by_provider(client, runtime, settings, make_stream):
    stream = make_stream(demo=True)
    before = scrape(client)
    ids = [
        r["message_id"]
        for r in client.post(
            "/v1/messages", json={"messages": [message(), message()]}, headers=auth(stream["token"])
        ).json()["results"]
    ]
    runtime.settings = settings.model_copy(
        update={"sandbox": settings.sandbox.model_copy(update={"failure_rate": 1.0})}
    )
    worker = start_worker(runtime, ["transactional"], threads=2)
    try:
        assert wait_until(lambda: statuses(runtime, ids) == ["failed"] * 2, timeout=20)
    finally:
        worker.stop(timeout=5_000)
    after = scrape(client)
    labels = {"provider": "sandbox", "kind": "permanent"}
    assert (
        value(after, "streams_provider_errors_total", **labels)
        - value(before, "streams_provider_errors_total", **labels)
        == 2
    )
    failed = {"type": "transactional", "status": "failed"}
    assert (
        value(after, "streams_messages_total", **failed)
        - value(before, "streams_messages_total", **failed)
        == 2
    )


def test_queue_depth_counts_ready_fetched_delayed_and_dead(client, runtime):
    broker = runtime.broker
    for _ in range(3):
        enqueue_delivery(broker, "marketing", str(uuid.uuid4()))
    for _ in range(2):
        enqueue_delivery(broker, "marketing", str(uuid.uuid4()), delay_ms=600_000)
    enqueue_delivery(broker, "otp", str(uuid.uuid4()))

    consumer = broker.consume("marketing", prefetch=2, timeout=1000)
    held = next(consumer)
    second = next(consumer)
    assert held is not None and second is not None
    consumer.nack(second)  # dramatiq's own dead-lettering: the message moves to .XQ

    samples = scrape(client)
    depth = {
        state: value(samples, "streams_queue_depth", queue="marketing", state=state)
        for state in ("ready", "fetched", "delayed", "dead")
    }
    assert depth == {"ready": 1, "fetched": 1, "delayed": 2, "dead": 1}
    assert value(samples, "streams_queue_depth", queue="otp", state="ready") == 1
    # The list KEDA scales on is the one counted as ready.
    assert runtime.redis.llen(ready_list_key(NAMESPACE, "marketing")) == depth["ready"]
    assert runtime.redis.type("dramatiq:marketing.XQ") == b"zset"
    assert total(samples, "streams_queue_depth", state="ready") == 2
    consumer.close()


def test_queue_depth_is_left_out_not_zero_when_redis_is_down(settings, runtime):
    from fastapi.testclient import TestClient

    with private_redis() as (url, stop, _start):
        app = create_app(settings.model_copy(update={"redis_url": url}))
        client = TestClient(app)
        assert "streams_queue_depth{" in client.get("/metrics").text
        stop()
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "streams_queue_depth{" not in response.text
        assert "streams_http_requests_total" in response.text
        app.state.runtime.close()


def test_metrics_without_redis_for_streams_dev(database_url, runtime):
    from fastapi.testclient import TestClient

    settings = Settings(
        database_url=database_url, secret_key="k" * 40, redis_url=None, _env_file=None
    )
    app = create_app(settings)
    try:
        response = TestClient(app).get("/metrics")
        assert response.status_code == 200
        assert "streams_messages_total" in response.text
    finally:
        app.state.runtime.close()
