"""Running workers: one process, or a pool of processes for ``streams worker``.

Each process builds its own runtime from settings, declares the actors, and consumes only
the queues it was given, so operators size each queue's pool on its own (invariant 6).
SIGTERM stops consuming, lets in-flight messages finish, and hands prefetched ones back.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Retries

from core.logs import configure_logging
from core.metrics import exposition_registry
from core.metrics_multiprocess import (
    mark_process_dead,
    remove_multiprocess_directory,
    start_multiprocess_directory,
)
from core.runtime import Runtime, build_runtime
from core.settings import Settings
from workers.actors import declare_actors
from workers.admission import LocalAdmission, RedisAdmission
from workers.callback_actors import declare_callback_actors
from workers.callbacks import CallbackSender
from workers.dead_letter_middleware import DeadLetters
from workers.delivery import Delivery
from workers.providers.registry import ProviderRegistry
from workers.queueing import subscribe_status_followups
from workers.status_followup import StatusFollowUp
from workers.worker_metrics import WorkerMetrics

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_MS = 30_000


class RunningWorker:
    """A started dramatiq worker, and the flag its batch jobs watch to hand back what they
    have not started when the worker stops."""

    def __init__(self, worker: dramatiq.Worker, stopping: threading.Event) -> None:
        self.worker = worker
        self.stopping = stopping

    def stop(self, timeout: int = SHUTDOWN_TIMEOUT_MS) -> None:
        """Finish what is in flight (up to ``timeout`` ms), hand back the rest."""
        self.stopping.set()
        self.worker.stop(timeout=timeout)


def start_worker(runtime: Runtime, queues: Sequence[str], threads: int) -> RunningWorker:
    """Declare the actors on the runtime's broker and start consuming ``queues``."""
    admission = RedisAdmission(runtime.redis) if runtime.redis is not None else LocalAdmission()
    delivery = Delivery(runtime, ProviderRegistry.from_runtime(runtime), admission, threads=threads)
    if not any(isinstance(m, WorkerMetrics) for m in runtime.broker.middleware):
        runtime.broker.add_middleware(WorkerMetrics())
    stopping = threading.Event()
    declare_actors(runtime.broker, delivery, stopping=stopping)
    declare_callback_actors(runtime.broker, CallbackSender(runtime), StatusFollowUp(runtime))
    subscribe_status_followups(runtime)
    if not any(isinstance(m, DeadLetters) for m in runtime.broker.middleware):
        # dramatiq calls the after-hooks last middleware first: placed before Retries,
        # DeadLetters runs after it, once Retries has marked a job it gives up on failed.
        runtime.broker.add_middleware(DeadLetters(runtime), before=Retries)
    worker = dramatiq.Worker(
        runtime.broker,
        queues=set(queues),
        worker_threads=threads,
        worker_timeout=runtime.settings.worker_poll_ms,
    )
    worker.start()
    log.info("worker_started", queues=list(queues), threads=threads, pid=os.getpid())
    if (longest := runtime.settings.lease_shorter_than_calls()) is not None:
        log.warning(
            "claim_lease_too_short",
            claim_lease_s=runtime.settings.claim_lease_seconds,
            provider_timeout_s=longest,
            advice="set STREAMS_CLAIM_LEASE_SECONDS above 4 times the longest provider timeout",
        )
    return RunningWorker(worker, stopping)


def run_worker_process(queues: Sequence[str], threads: int) -> None:
    """One worker process until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    runtime = build_runtime(settings, role=f"streams-worker {','.join(queues)}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = start_worker(runtime, queues, threads)
    stop.wait()
    log.info("worker_stopping", pid=os.getpid())
    worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
    runtime.close()
    log.info("worker_stopped", pid=os.getpid())


def serve_metrics(port: int) -> None:
    """Expose this process's metrics (or, in multiprocess mode, the pool's) on ``port``."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=exposition_registry())
    log.info("metrics_serving", port=port)


def run_pool(queues: Sequence[str], processes: int, threads: int, metrics_port: int | None) -> None:
    """``processes`` worker processes for ``queues``; metrics of all of them on one port.

    With several processes the metrics use prometheus-client's multiprocess mode, in a
    directory of this pool's own (see ``core.metrics_multiprocess``). If one child dies the
    pool stops the others and exits, so the supervisor (Kubernetes, compose) restarts it whole.
    """
    if processes == 1:
        if metrics_port is not None:
            serve_metrics(metrics_port)
        run_worker_process(queues, threads)
        return
    directory = start_multiprocess_directory() if metrics_port is not None else None
    try:
        if metrics_port is not None:
            serve_metrics(metrics_port)
        _run_children(queues, processes, threads, directory)
    finally:
        if directory is not None:
            remove_multiprocess_directory(directory)


def _run_children(
    queues: Sequence[str], processes: int, threads: int, directory: Path | None
) -> None:
    def exited(pid: int, exitcode: int | None) -> None:
        if directory is not None:
            mark_process_dead(pid, directory)
        if exitcode:
            log.warning("worker_process_exited", pid=pid, exitcode=exitcode)

    supervise_processes(
        run_worker_process, (list(queues), threads), processes, name="worker", on_exit=exited
    )


def supervise_processes(
    target: Callable[..., None],
    args: tuple[Any, ...],
    processes: int,
    *,
    name: str,
    on_exit: Callable[[int, int | None], None] | None = None,
) -> None:
    """Run ``processes`` children of ``target(*args)`` until SIGTERM/SIGINT or until one of
    them exits; then SIGTERM the rest and wait for all. ``on_exit(pid, exitcode)`` is called
    for each child once it is gone."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=target, args=args, name=f"{name}-{i}") for i in range(processes)
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
        if on_exit is not None and child.pid is not None:
            on_exit(child.pid, child.exitcode)
