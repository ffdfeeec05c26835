"""Metrics stay right with several processes: a worker pool of two and an ingress with two
uvicorn workers each expose one sum (prometheus-client multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from core.metrics_multiprocess import DeadProcessReaper
from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import environment, free_port, running, wait_until
from tests.scrape import parse, value

pytestmark = pytest.mark.slow


def pids_with_counters(tmp_path: Path) -> set[str]:
    return {
        path.name.split("_")[-1].removesuffix(".db")
        for path in tmp_path.glob("streams-metrics-*/counter_*.db")
    }


def delivered(runtime, stream_id: str) -> int:
    with runtime.session_factory() as session:
        return session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.stream_id == uuid.UUID(stream_id), Message.status == "delivered")
        )


def test_two_worker_processes_sum_their_counters(settings, runtime, client, make_stream, tmp_path):
    stream = make_stream(demo=True)
    slow = settings.model_copy(
        update={"sandbox": settings.sandbox.model_copy(update={"latency_ms": 150})}
    )
    env = environment(slow) | {"TMPDIR": str(tmp_path)}
    port = free_port()
    args = [
        "worker",
        "--queues",
        "transactional",
        "--processes",
        "2",
        "--threads",
        "1",
        "--metrics-port",
        str(port),
    ]
    with running(args, env, tmp_path / "pool.log") as pool:
        base = f"http://127.0.0.1:{port}/metrics"
        assert wait_until(lambda: _answers(base), timeout=20), (tmp_path / "pool.log").read_text()[
            -2000:
        ]
        # One request per message: one job each, so both processes get some (a batch is one
        # job, and a message's receipt is recorded with its send, in the same process).
        for _ in range(20):
            sent = client.post(
                "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
            )
            assert sent.json()["accepted"] == 1
        assert wait_until(lambda: delivered(runtime, stream["id"]) == 20, timeout=60)
        assert len(pids_with_counters(tmp_path)) == 2, "both processes must have sent some"
        samples = parse(httpx.get(base).text)
        kind = {"type": "transactional"}
        assert value(samples, "streams_messages_total", status="sent", **kind) == 20
        assert value(samples, "streams_messages_total", status="delivered", **kind) == 20
        assert value(samples, "streams_segments_sent_total", **kind) == 20
        queue = {"queue": "transactional"}
        assert value(samples, "streams_worker_processing_duration_seconds_count", **queue) == 20
        assert value(samples, "streams_worker_messages_in_progress", **queue) == 0
        assert (
            value(samples, "streams_provider_call_duration_seconds_count", provider="sandbox") == 20
        )
        pool.terminate()
        pool.wait(timeout=30)
    assert not list(tmp_path.glob("streams-metrics-*")), "the pool removes its metrics directory"


def test_serve_with_two_workers_sums_requests(settings, tmp_path):
    env = environment(settings) | {"TMPDIR": str(tmp_path)}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with running(args, env, tmp_path / "serve.log") as serve:
        assert wait_until(lambda: _answers(base + "/healthz"), timeout=30)
        # Fresh connections, so the kernel hands them to both workers.
        assert wait_until(
            lambda: _answers(base + "/readyz") and len(pids_with_counters(tmp_path)) == 2,
            timeout=30,
            interval=0.01,
        )
        for _ in range(40):
            assert httpx.get(base + "/healthz").status_code == 200
        readyz = None
        for _ in range(6):  # each scrape is answered by either worker: all agree
            samples = parse(httpx.get(base + "/metrics").text)
            healthz = value(samples, "streams_http_requests_total", route="/healthz", code="200")
            assert healthz >= 41  # 40 here, plus the start-up probes
            current = value(samples, "streams_http_requests_total", route="/readyz", code="200")
            assert readyz is None or current == readyz
            readyz = current
        serve.terminate()
        serve.wait(timeout=40)
    assert not list(tmp_path.glob("streams-metrics-*"))


def test_the_relay_exposes_its_metrics(settings, runtime, client, make_stream, tmp_path):
    stream = make_stream(demo=True)
    message_id = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(stream["token"])
    ).json()["results"][0]["message_id"]
    # The 202 comes at commit; the enqueue and its mark follow. Let both land first.
    assert wait_until(lambda: runtime.redis.llen("dramatiq:transactional") >= 1, timeout=10)
    runtime.enqueue_marks.flush()
    with runtime.session_factory() as session:  # as if the ingress died before enqueueing
        session.execute(
            update(Message).where(Message.id == uuid.UUID(message_id)).values(enqueued_at=None)
        )
        session.commit()
    port = free_port()
    env = environment(settings, relay_grace_seconds=0, relay_interval_seconds=0.2)
    with running(["relay", "--metrics-port", str(port)], env, tmp_path / "relay.log"):
        url = f"http://127.0.0.1:{port}/metrics"

        def relayed() -> float:
            if not _answers(url):
                return 0
            return value(
                parse(httpx.get(url).text), "streams_relay_enqueued_total", reason="missed"
            )

        assert wait_until(lambda: relayed() == 1, timeout=20), (tmp_path / "relay.log").read_text()


def test_the_live_gauges_of_an_exited_process_are_dropped(tmp_path):
    """What the pool does when a child exits, and the serve reaper for uvicorn's workers."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    script = (
        "from core import metrics\n"
        "metrics.WORKER_IN_PROGRESS.labels('otp').inc(3)\n"
        "metrics.MESSAGES_ACCEPTED.labels('otp').inc(5)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"},
        check=True,
    )

    def exposed() -> dict:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        return parse(generate_latest(registry).decode())

    assert value(exposed(), "streams_worker_messages_in_progress", queue="otp") == 3
    DeadProcessReaper(directory).reap()
    after = exposed()
    assert value(after, "streams_worker_messages_in_progress", queue="otp") == 0
    assert value(after, "streams_messages_accepted_total", type="otp") == 5  # counters stay


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
