"""The frame every flow-control benchmark run shares: where results go, the service options,
a hard time bound, and clean-up on signals.

A run is bounded twice: each wait has its own deadline, and the whole run has a wall-clock
cap (``--max-seconds``) enforced with SIGALRM. Both raise an exception, so the run's
``ExitStack`` stops every child process, flushes Redis and drops the database on the way out,
as it does on Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
#: The flow-control benchmarks flush this Redis database before and after: nothing else may
#: use it.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_POSTGRES_URL = os.environ.get(
    "STREAMS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class RunTimedOut(RuntimeError):
    """The run (or one of its waits) went past its time bound."""


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """``--postgres-url``, ``--redis-url`` and ``--max-seconds``."""
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a server database; a scratch database streams_bench_<random> is made beside it",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"a Redis database used by nothing else: it is flushed ({DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="hard cap on the whole run, set-up and clean-up included (default: from the "
        "run's own durations)",
    )


def new_run_id(kind: str) -> tuple[str, datetime]:
    """``<kind>-<UTC time>`` and the time."""
    started = datetime.now(UTC)
    return f"{kind}-{started.strftime('%Y%m%dT%H%M%SZ')}", started


def _interrupted(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _timed_out(_signum: int, _frame: object) -> NoReturn:
    raise RunTimedOut("the run went past --max-seconds")


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP act as Ctrl-C for the rest of the process, so that the
    caller's clean-up runs on them too. SIGINT is set explicitly as well: a shell starts
    background jobs with it ignored, and the run must still stop cleanly on it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)


@contextmanager
def bounded_run(max_seconds: float) -> Iterator[None]:
    """Raise ``RunTimedOut`` in the main thread if the block takes longer than
    ``max_seconds``. Enter it inside the run's ``ExitStack`` so that the timer is off again
    before the clean-up starts."""
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, max_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``condition`` until true; raise ``RunTimedOut`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RunTimedOut(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


def progress(text: str) -> None:
    """A progress line on stderr (the report goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main_guard(main: Callable[[], int]) -> NoReturn:
    """Run ``main`` and exit with its code; 130 after Ctrl-C or SIGTERM, 3 after a timeout.
    Clean-up has already run when this reports."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
    except RunTimedOut as exc:
        print(f"timed out ({exc}); cleaned up", file=sys.stderr)
        sys.exit(3)
