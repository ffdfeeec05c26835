"""HTTP servers under test, run as child processes in their own process groups.

Each server gets a session of its own (``start_new_session``), so stopping it stops everything
it started too, and a Ctrl-C in the terminal reaches the benchmark alone, which then stops the
servers in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx


class ServerFailed(RuntimeError):
    """A server exited or did not become healthy; the message carries the end of its log."""


@dataclass(frozen=True)
class Server:
    """A running server: its process (the group leader) and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    host: str = "127.0.0.1",
    ready_timeout: float = 60.0,
) -> Iterator[Server]:
    """Start ``argv`` (which must listen on ``host:port``), wait until ``GET /healthz`` answers
    200, yield it, and stop its whole process group on exit, whatever happened.

    Raises ``ServerFailed`` if it exits or is not healthy within ``ready_timeout`` seconds.
    """
    with running_process(name, argv, log_path=log_path, env=env, cwd=cwd) as process:
        server = Server(name, process, f"http://{host}:{port}", log_path)
        wait_until_healthy(server, ready_timeout)
        yield server


@contextmanager
def running_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    grace: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` (a process that serves no HTTP: a worker pool, the relay) in its own
    process group, yield it, and stop the whole group on exit (SIGTERM, then SIGKILL after
    ``grace`` seconds), whatever happened. Readiness is the caller's business."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process, grace=grace)


def wait_until_healthy(server: Server, timeout: float) -> None:
    """Poll ``/healthz`` until it answers 200. Raises ``ServerFailed`` on exit or timeout."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise ServerFailed(
                    f"{server.name} exited with {server.process.returncode}:\n"
                    + log_tail(server.log_path)
                )
            try:
                if client.get(f"{server.base_url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise ServerFailed(
        f"{server.name} not healthy after {timeout:.0f} s:\n" + log_tail(server.log_path)
    )


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``process``, then SIGKILL it after ``grace`` seconds.
    Safe to call on a process that has already exited."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Children that outlived the leader (none expected) go with the group.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
