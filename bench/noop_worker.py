"""A worker pool whose only actor returns at once: the ceiling for ``bench/throughput.py``.

    python -m bench.noop_worker --queue bench_noop --processes 2 --threads 8

It is ``streams worker`` (``workers/pool.py``) with the delivery pipeline taken out: the same
broker built by ``core.broker.build_broker`` from the same ``STREAMS_*`` settings (Redis URL,
middleware, heartbeat and maintenance settings), the same ``DeadLetters`` middleware, the
same ``dramatiq.Worker`` arguments (threads, ``worker_timeout = worker_poll_ms``), the same
spawn of one process per ``--processes``, the same SIGTERM handling. What is left to measure
is dramatiq itself: fetch, decode, middleware hooks, ack.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import signal
import threading
from collections.abc import Sequence

import dramatiq
from dramatiq.middleware import Retries

from core.runtime import build_runtime
from core.settings import Settings
from workers.dead_letter_middleware import DeadLetters
from workers.pool import supervise_processes

NOOP_QUEUE = "bench_noop"
NOOP_ACTOR = "bench_noop"
SHUTDOWN_TIMEOUT_MS = 30_000


def noop(_message_id: str) -> None:
    """Does nothing: what a job costs when the actor costs nothing."""


def run_noop_process(queue: str, threads: int) -> None:
    """One process until SIGTERM or SIGINT, like ``workers.pool.run_worker_process``."""
    runtime = build_runtime(Settings(), role="streams-bench-noop")
    broker = runtime.broker
    broker.declare_queue(queue)
    dramatiq.actor(noop, actor_name=NOOP_ACTOR, queue_name=queue, broker=broker)
    broker.add_middleware(DeadLetters(runtime), before=Retries)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = dramatiq.Worker(
        broker,
        queues={queue},
        worker_threads=threads,
        worker_timeout=runtime.settings.worker_poll_ms,
    )
    worker.start()
    stop.wait()
    worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
    runtime.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_worker")
    parser.add_argument("--queue", default=NOOP_QUEUE)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.processes == 1:
        run_noop_process(args.queue, args.threads)
        return 0
    supervise_processes(run_noop_process, (args.queue, args.threads), args.processes, name="noop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
