"""prometheus-client's multiprocess mode, for a process that starts others: a worker pool
(``streams worker --processes N``) or the ingress (``streams serve --workers N``).

Why this mode rather than one exporter per process: uvicorn's workers share one listening
socket, so they cannot each own a metrics port; and one scrape target per pod that already
sums its processes is what the alert rules, the dashboard and autoscaling expect (a pool that
grows from 2 to 4 processes needs no new scrape configuration). Each process writes its values
to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``; the exporter adds them up at scrape
time. Counters of a process that died stay counted (a counter never goes down); live gauges
of a dead process are removed with ``mark_process_dead``.

The directory must be set in the environment before the children start, must be fresh
(left-over files from an earlier run would be added in), and is removed on exit.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import structlog
from prometheus_client import multiprocess as prometheus_multiprocess

log = structlog.get_logger(__name__)

ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def start_multiprocess_directory() -> Path:
    """A fresh directory for this pool's metric files, exported to the children through
    ``PROMETHEUS_MULTIPROC_DIR`` (an inherited value is replaced: it may hold stale files)."""
    directory = Path(tempfile.mkdtemp(prefix="streams-metrics-"))
    os.environ[ENVIRONMENT_VARIABLE] = str(directory)
    return directory


def remove_multiprocess_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if os.environ.get(ENVIRONMENT_VARIABLE) == str(directory):
        del os.environ[ENVIRONMENT_VARIABLE]


def mark_process_dead(pid: int, directory: Path) -> None:
    """Drop the live gauges (work in progress, open feeds) of a process that has exited."""
    prometheus_multiprocess.mark_process_dead(pid, str(directory))


def dead_processes(directory: Path) -> set[int]:
    """Pids that left live-gauge files behind and no longer run."""
    pids = set()
    for entry in directory.iterdir():
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match and not _running(int(match.group(1))):
            pids.add(int(match.group(1)))
    return pids


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DeadProcessReaper(threading.Thread):
    """Marks exited processes dead every ``interval`` seconds: for children we do not start
    ourselves (uvicorn restarts its workers on its own)."""

    def __init__(self, directory: Path, interval: float = 5.0) -> None:
        super().__init__(name="metrics-reaper", daemon=True)
        self._directory = directory
        self._interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            self.reap()

    def reap(self) -> None:
        try:
            for pid in dead_processes(self._directory):
                mark_process_dead(pid, self._directory)
                log.info("metrics_process_marked_dead", pid=pid)
        except OSError as exc:
            log.warning("metrics_reap_failed", error=type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
