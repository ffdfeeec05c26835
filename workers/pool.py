"""Running workers: one process, or a pool of processes for ``streams worker``.

Each process builds its own runtime from settings, declares the actors, and consumes only
the queues it was given, so operators size each queue's pool on its own (invariant 6).
SIGTERM stops consuming, lets in-flight messages finish, and hands prefetched ones back.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
from collections.abc import Sequence

import dramatiq
import structlog

from core.logs import configure_logging
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from workers.actors import declare_actors
from workers.admission import LocalAdmission, RedisAdmission
from workers.dead_letter_middleware import DeadLetters
from workers.delivery import Delivery
from workers.providers.registry import ProviderRegistry

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_MS = 30_000


def start_worker(runtime: Runtime, queues: Sequence[str], threads: int) -> dramatiq.Worker:
    """Declare the actors on the runtime's broker and start consuming ``queues``."""
    admission = RedisAdmission(runtime.redis) if runtime.redis is not None else LocalAdmission()
    delivery = Delivery(
        runtime, ProviderRegistry.from_settings(runtime.settings, runtime.redis), admission
    )
    declare_actors(runtime.broker, delivery)
    if not any(isinstance(m, DeadLetters) for m in runtime.broker.middleware):
        runtime.broker.add_middleware(DeadLetters(runtime))
    worker = dramatiq.Worker(
        runtime.broker,
        queues=set(queues),
        worker_threads=threads,
        worker_timeout=runtime.settings.worker_poll_ms,
    )
    worker.start()
    log.info("worker_started", queues=list(queues), threads=threads, pid=os.getpid())
    return worker


def run_worker_process(queues: Sequence[str], threads: int) -> None:
    """One worker process until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    runtime = build_runtime(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = start_worker(runtime, queues, threads)
    stop.wait()
    log.info("worker_stopping", pid=os.getpid())
    worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
    runtime.close()
    log.info("worker_stopped", pid=os.getpid())


def _serve_metrics(port: int, *, multiprocess: bool) -> None:
    """Expose this pool's metrics. With several processes, prometheus-client's multiprocess
    mode aggregates their files; the directory must be set before the children start."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as prometheus_multiprocess

    if not multiprocess:
        start_http_server(port, registry=REGISTRY)
        return
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="streams-metrics-"))
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def run_pool(queues: Sequence[str], processes: int, threads: int, metrics_port: int | None) -> None:
    """``processes`` worker processes for ``queues``; metrics of all of them on one port."""
    if metrics_port is not None:
        _serve_metrics(metrics_port, multiprocess=processes > 1)
    if processes == 1:
        run_worker_process(queues, threads)
        return
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_worker_process, args=(list(queues), threads), name=f"worker-{i}")
        for i in range(processes)
    ]
    for child in children:
        child.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set() and all(child.is_alive() for child in children):
        stop.wait(1.0)
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join()
