"""Start real ``streams`` processes (ingress, worker pool, relay, a private Redis) for tests
that need more than one process, and always stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import redis

from core.settings import Settings

STREAMS = str(Path(sys.executable).parent / "streams")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(settings: Settings, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    env.update(
        STREAMS_DATABASE_URL=settings.database_url,
        STREAMS_REDIS_URL=settings.redis_url or "",
        STREAMS_SECRET_KEY=settings.secret_key or "",
        STREAMS_LOG_FORMAT="json",
        STREAMS_SANDBOX_LATENCY_MS=str(settings.sandbox.latency_ms),
        STREAMS_SANDBOX_RECEIPT_DELAY_SECONDS=str(settings.sandbox.receipt_delay_seconds),
        STREAMS_SANDBOX_MAX_BATCH=str(settings.sandbox.max_batch),
    )
    env.update({f"STREAMS_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``streams`` subprocess in its own process group, stopped (SIGTERM, then SIGKILL)
    on exit. Its output goes to ``log``."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [STREAMS, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextmanager
def ingress_process(
    settings: Settings, log: Path, **extra: object
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``streams serve`` on a free port; yields its base URL, once it answers, and
    its process (with one uvicorn worker, the process that serves)."""
    port = free_port()
    with running(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], environment(settings, **extra), log
    ) as proc:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ingress exited: {log.read_text()[-2000:]}")
            try:
                return httpx.get(base + "/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, 20), log.read_text()[-2000:]
        yield base, proc


@contextmanager
def ingress(settings: Settings, log: Path, **extra: object) -> Iterator[str]:
    """A real ``streams serve`` on a free port; yields its base URL once it answers."""
    with ingress_process(settings, log, **extra) as (base, _):
        yield base


@contextmanager
def worker_pool(
    settings: Settings, log: Path, queues: str = "transactional", threads: int = 2, **extra: object
) -> Iterator[subprocess.Popen[bytes]]:
    args = ["worker", "--queues", queues, "--processes", "1", "--threads", str(threads)]
    with running(args, environment(settings, **extra), log) as proc:
        yield proc


class PrivateRedis:
    """A redis-server of the test's own on ``port``: it can be stopped and started again
    (an outage that refuses connections) or paused and resumed with SIGSTOP/SIGCONT (a
    Redis that accepts connections and never answers)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        assert wait_until(lambda: _pings(client), 10)
        client.close()

    def halt(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGKILL's exit
            proc.kill()
            proc.wait(timeout=5)

    def pause(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)


@contextmanager
def private_redis_server(port: int | None = None) -> Iterator[PrivateRedis]:
    """A started ``PrivateRedis``, always killed on exit."""
    server = PrivateRedis(port)
    server.start()
    try:
        yield server
    finally:
        server.halt()


@contextmanager
def private_redis(
    port: int | None = None,
) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A Redis server of the test's own, so it can be stopped and started. Yields its URL
    and ``stop()`` / ``start()`` callables."""
    with private_redis_server(port) as server:
        yield server.url, server.halt, server.start


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@contextmanager
def pipeline(runtime, queues: list[str], threads: int = 4, relay: bool = True) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """An in-process worker for ``queues`` and, unless told otherwise, a relay thread."""
    import threading

    from workers.pool import start_worker
    from workers.relay import Relay

    worker = start_worker(runtime, queues, threads=threads)
    stop_relay = threading.Event()
    thread = threading.Thread(target=Relay(runtime).run, args=(stop_relay,), daemon=True)
    if relay:
        thread.start()
    try:
        yield
    finally:
        stop_relay.set()
        worker.stop(timeout=10_000)
        if relay:
            thread.join(timeout=10)


class MovableClock:
    """A clock tests can set and move; pass it as ``runtime.clock``."""

    def __init__(self, start) -> None:  # type: ignore[no-untyped-def]
        self.now = start

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now = self.now + timedelta(seconds=seconds)
