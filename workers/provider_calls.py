"""The provider calls of one batch job, made side by side.

Made one after another, the calls of a batch job add up: with a carrier that answers in
100 ms, the twentieth message of a job went out two seconds after the first. Here the calls
of a batch run on a pool of threads of the worker process, ``batch_send_concurrency`` at
once for each batch, while the worker's thread waits for them. The pool has that many
threads for each worker thread, so one batch never waits for another's calls, and a process
with more worker threads makes more calls at once, as it did when each thread made its own.

Only the calls move: whatever a call's outcome writes to the database (a retry, a failure,
an expiry) is done afterwards by the worker's own thread, so a process still needs one
database connection per worker thread and no more.

Calls are made in the worker's own thread until the batch's calls have taken
``INLINE_SECONDS`` together: a fast carrier gains little from more threads, and handing each
call to another one costs CPU. Then the rest of the batch goes side by side. The budget
counts the calls together, not one by one, so a carrier that answers each call in 30 ms
keeps the last message of twenty waiting for the budget and a few rounds of calls, not for
nineteen calls one after another. The budget is wide because on a busy host even a fast
call's wall time includes waits for the GIL and a core (milliseconds).

A call is made only if ``go_on()`` still holds when its turn comes (the worker is not
stopping and the batch's claims are still fresh); otherwise it is reported as skipped and
the worker gives that claim back.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from workers.providers.base import Accepted


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one call ended: ``accepted``; or ``error`` (what the call raised); or
    ``skipped`` (not made); or none of these (the call chose not to go, returning None)."""

    accepted: Accepted | None = None
    error: Exception | None = None
    skipped: bool = False


Call = Callable[[], Accepted | None]

#: While a batch's calls have taken less than this together, the next one is made in the
#: worker's own thread.
INLINE_SECONDS = 0.05


class ProviderCalls:
    """Runs the calls of a batch, ``per_batch`` at a time, for up to ``batches`` batches
    at once (the worker's threads)."""

    def __init__(self, per_batch: int, batches: int = 1) -> None:
        self._per_batch = per_batch
        self._pool = (
            ThreadPoolExecutor(
                max_workers=per_batch * max(batches, 1), thread_name_prefix="provider-call"
            )
            if per_batch > 1
            else None
        )

    def run(self, calls: Sequence[Call], go_on: Callable[[], bool]) -> list[CallOutcome]:
        """The outcome of each of ``calls``, in order, once all have ended. Each call runs
        with its caller's context variables (the log context, for one)."""
        outcomes: list[CallOutcome] = []
        started = time.perf_counter()
        for index, call in enumerate(calls):
            outcomes.append(make_call(call, go_on))
            if self._pool is not None and time.perf_counter() - started > INLINE_SECONDS:
                return outcomes + self._side_by_side(self._pool, calls[index + 1 :], go_on)
        return outcomes

    def _side_by_side(
        self, pool: ThreadPoolExecutor, calls: Sequence[Call], go_on: Callable[[], bool]
    ) -> list[CallOutcome]:
        futures: list[Future[CallOutcome]] = []
        running: set[Future[CallOutcome]] = set()
        for call in calls:
            if len(running) >= self._per_batch:
                _, running = wait(running, return_when=FIRST_COMPLETED)
            # A context of its own per call: one context cannot be entered by two threads.
            future = pool.submit(contextvars.copy_context().run, make_call, call, go_on)
            futures.append(future)
            running.add(future)
        return [future.result() for future in futures]


def make_call(call: Call, go_on: Callable[[], bool]) -> CallOutcome:
    """Make ``call`` unless ``go_on()`` is false; what it raised is its outcome."""
    if not go_on():
        return CallOutcome(skipped=True)
    try:
        return CallOutcome(accepted=call())
    except Exception as error:
        return CallOutcome(error=error)
