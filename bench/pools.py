"""Worker pools and the relay as child processes, for the flow-control benchmarks.

``streams worker`` and ``streams relay`` serve no HTTP, so readiness is read from Redis: every
dramatiq broker that talks to Redis stamps its id in the sorted set
``dramatiq:__heartbeats__`` (``dispatch.lua``), and a worker's consumers poll from the moment
it starts. A pool of N processes is ready when N new ids have appeared there.

Each process runs in its own process group (``bench.servers.running_process``), so stopping
its leader stops the pool's children too, on every exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.cpu_usage import CpuSnapshot, take_snapshot, tree_cpu_seconds, usage_between
from bench.servers import (
    Server,
    ServerFailed,
    free_port,
    log_tail,
    running_process,
    running_server,
)
from core.broker import NAMESPACE

REPO = Path(__file__).resolve().parent.parent
STREAMS = str(Path(sys.executable).with_name("streams"))
HEARTBEATS_KEY = f"{NAMESPACE}:__heartbeats__"


#: The benchmarks measure what the platform carries, not one client's ingress quota (1,000
#: messages a second a stream by default, which a preload through the ingress passes in
#: seconds). The quota is still asked on every send, so its cost is in the figures; it
#: never refuses. Set the variables to measure the default instead.
QUOTA_ASKED_NEVER_REFUSING = {
    "STREAMS_INGRESS_QUOTA_PER_SECOND": "1000000000",
    "STREAMS_INGRESS_QUOTA_BURST": "1000000000",
}


def process_environment(database_url: str, redis_url: str, **settings: object) -> dict[str, str]:
    """The environment of a ``streams`` child: this one, the scratch services, quiet logs,
    a sandbox with no latency and immediate receipts, and ``settings`` as ``STREAMS_<NAME>``
    (``sandbox_latency_ms=5`` → ``STREAMS_SANDBOX_LATENCY_MS=5``). Variables already set
    in the caller's environment win over these defaults, except the two services, so a run
    can try other settings (``STREAMS_WORKER_POLL_MS=10 .venv/bin/python bench/...``)."""
    defaults = {
        "STREAMS_SECRET_KEY": "bench-secret-key-not-for-production",
        "STREAMS_LOG_LEVEL": "WARNING",
        "STREAMS_LOG_FORMAT": "json",
        "STREAMS_SANDBOX_LATENCY_MS": "0",
        "STREAMS_SANDBOX_RECEIPT_DELAY_SECONDS": "0",
        **QUOTA_ASKED_NEVER_REFUSING,
        **{f"STREAMS_{name.upper()}": str(value) for name, value in settings.items()},
    }
    return {
        **defaults,
        **os.environ,
        "STREAMS_DATABASE_URL": database_url,
        "STREAMS_REDIS_URL": redis_url,
    }


def heartbeat_ids(redis_url: str) -> set[bytes]:
    """Ids of every dramatiq broker that has talked to this Redis database."""
    client = redis.Redis.from_url(redis_url)
    try:
        return set(client.zrange(HEARTBEATS_KEY, 0, -1))
    finally:
        client.close()


@dataclass(frozen=True)
class Pool:
    """A running worker pool: its leader process and the broker id of each worker process."""

    name: str
    process: subprocess.Popen[bytes]
    broker_ids: frozenset[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def running_pool(
    name: str,
    argv: list[str],
    *,
    processes: int,
    redis_url: str,
    env: Mapping[str, str],
    log_path: Path,
    ready_timeout: float = 60.0,
) -> Iterator[Pool]:
    """Start a dramatiq worker pool of ``processes`` processes with ``argv``, wait until each
    process polls Redis, yield it, and stop it on exit. Raises ``ServerFailed`` if it exits or
    is not ready within ``ready_timeout`` seconds."""
    before = heartbeat_ids(redis_url)
    with running_process(name, argv, log_path=log_path, env=env, cwd=REPO, grace=15.0) as process:
        deadline = time.monotonic() + ready_timeout
        while True:
            fresh = heartbeat_ids(redis_url) - before
            if len(fresh) >= processes:
                break
            if process.poll() is not None:
                raise ServerFailed(
                    f"{name} exited with {process.returncode}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{name}: {len(fresh)} of {processes} processes ready after "
                    f"{ready_timeout:.0f} s:\n{log_tail(log_path)}"
                )
            time.sleep(0.05)
        yield Pool(name, process, frozenset(fresh), log_path)


def streams_worker_argv(
    queues: str, processes: int, threads: int, metrics_port: int | None = None, nice: int = 0
) -> list[str]:
    """``streams worker`` for ``queues`` (comma-separated)."""
    argv = [STREAMS, "worker", "--queues", queues, "--processes", str(processes)]
    argv += ["--threads", str(threads)]
    if nice:
        argv += ["--nice", str(nice)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    return argv


def noop_worker_argv(queue: str, processes: int, threads: int) -> list[str]:
    """The no-op pool of ``bench/noop_worker.py``, shaped like ``streams worker``."""
    return [sys.executable, "-m", "bench.noop_worker", "--queue", queue,
            "--processes", str(processes), "--threads", str(threads)]  # fmt: skip


@contextmanager
def running_ingress(env: Mapping[str, str], log_path: Path) -> Iterator[Server]:
    """``streams serve`` (one process) on a free local port, healthy, stopped on exit."""
    port = free_port()
    argv = [STREAMS, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(
        "streams serve", argv, port=port, log_path=log_path, env=env, cwd=REPO
    ) as server:
        yield server


@contextmanager
def running_relay(env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``streams relay``, stopped on exit. It polls PostgreSQL only, so it is ready at once
    (its first sweep runs as soon as it has imported)."""
    with running_process("relay", [STREAMS, "relay"], log_path=log_path, env=env, cwd=REPO) as p:
        time.sleep(0.5)
        if p.poll() is not None:
            raise ServerFailed(f"relay exited with {p.returncode}:\n{log_tail(log_path)}")
        yield p


def scrape_metrics(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Prometheus samples named in ``names`` from a pool's ``--metrics-port``, summed over
    their labels (one stream and one type per benchmark). {} if the port does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


class CpuWatch:
    """CPU used between ``start`` and ``stop`` by process trees (a pool with its children,
    the relay, an ingress), by PostgreSQL and Redis (all of each, other users included), and
    the share of the machine that was busy. Figures in cores (1.0 = one core busy)."""

    def __init__(self, trees: Mapping[str, int]) -> None:
        self._trees = dict(trees)
        self._before: tuple[CpuSnapshot, dict[str, float]] | None = None

    def _read(self) -> tuple[CpuSnapshot, dict[str, float]]:
        return take_snapshot(os.getpid()), {
            name: tree_cpu_seconds(pid) for name, pid in self._trees.items()
        }

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        if self._before is None:
            raise RuntimeError("CpuWatch.stop before start")
        (snap_before, trees_before), (snap_after, trees_after) = self._before, self._read()
        wall = max(snap_after.wall - snap_before.wall, 1e-9)
        usage = usage_between(snap_before, snap_after)
        cores = {name: (trees_after[name] - trees_before[name]) / wall for name in self._trees}
        cores |= {
            "postgres": usage["postgres"],
            "redis": usage["redis-server"],
            "bench": usage["load_generator"],
            "machine_busy_share": usage["machine"],
        }
        return {name: round(value, 3) for name, value in cores.items()}


def queue_lengths(redis_url: str) -> dict[str, int]:
    """Jobs waiting on every dramatiq queue (``dramatiq:<queue>`` lists, delay queues
    included), by queue name."""
    client = redis.Redis.from_url(redis_url)
    try:
        lengths = {}
        for key in client.scan_iter(match=f"{NAMESPACE}:*", _type="list"):
            name = key.decode().removeprefix(f"{NAMESPACE}:")
            lengths[name] = int(client.llen(key))
        delayed = {}
        for key in client.scan_iter(match=f"{NAMESPACE}:*.DQ.msgs", _type="hash"):
            name = key.decode().removeprefix(f"{NAMESPACE}:").removesuffix(".msgs")
            delayed[name] = int(client.hlen(key))
        return lengths | delayed
    finally:
        client.close()
