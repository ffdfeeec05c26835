"""The provider calls of one batch job, made side by side.

Made one after another, the calls of a batch job add up: with a carrier that answers in
100 ms, the twentieth message of a job went out two seconds after the first. Here the calls
of a batch run on a pool of threads of the worker process, ``batch_send_concurrency`` at
once for each batch, while the worker's thread waits for them. The pool has that many
threads for each worker thread, so one batch never waits for another's calls, and a process
with more worker threads makes more calls at once, as it did when each thread made its own.

Only the calls move: whatever a call's outcome writes to the database (a retry, a failure,
an expiry) is done by the worker's own thread, so a process still needs one database
connection per worker thread and no more. The outcomes come back in waves (``waves``): all
of them at once when the calls end within ``REPORT_AFTER_SECONDS`` of the first outcome, as
they do with a working carrier; otherwise those in hand by then, so a call that hangs until
its timeout does not keep the batch's other messages from being recorded as sent. (The one
exception: while a call runs in the worker's own thread, nothing can be recorded.)

Calls are made in the worker's own thread until the batch's calls have taken
``INLINE_SECONDS`` together: a fast carrier gains little from more threads, and handing each
call to another one costs CPU. Then the rest of the batch goes side by side. The budget
counts the calls together, not one by one, so a carrier that answers each call in 30 ms
keeps the last message of twenty waiting for the budget and a few rounds of calls, not for
nineteen calls one after another. It is also kept while a call is still running: a watchdog
on the pool sends the rest side by side once the budget has passed, so a first call that
hangs holds up the others' records, but not their calls. The budget is wide because on a
busy host even a fast call's wall time includes waits for the GIL and a core
(milliseconds).

A call is made only if ``go_on()`` still holds when its turn comes (the worker is not
stopping and the batch's claims are still fresh); otherwise it is reported as skipped and
the worker gives that claim back.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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

#: Outcomes in hand this long are handed back (a wave) even while other calls still run.
REPORT_AFTER_SECONDS = 1.0

#: The longest the worker's thread waits without looking up (see ``_Batch._next_ended``).
_WAIT_SLICE_SECONDS = 0.2

#: One ended call: its index in the batch and its outcome.
Ended = tuple[int, CallOutcome]


class ProviderCalls:
    """Runs the calls of a batch, ``per_batch`` at a time, for up to ``batches`` batches
    at once (the worker's threads)."""

    def __init__(self, per_batch: int, batches: int = 1) -> None:
        self._per_batch = per_batch
        # Per batch: the watchdog, which becomes the first helper, and per_batch - 1 more.
        self._pool = (
            ThreadPoolExecutor(
                max_workers=per_batch * max(batches, 1), thread_name_prefix="provider-call"
            )
            if per_batch > 1
            else None
        )

    def run(self, calls: Sequence[Call], go_on: Callable[[], bool]) -> list[CallOutcome]:
        """The outcome of each of ``calls``, in order, once all have ended."""
        outcomes: list[CallOutcome | None] = [None] * len(calls)
        for wave in self.waves(calls, go_on):
            for index, outcome in wave:
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def waves(
        self,
        calls: Sequence[Call],
        go_on: Callable[[], bool],
        report_after: float = REPORT_AFTER_SECONDS,
    ) -> Iterator[list[Ended]]:
        """Each call's outcome with its index, in waves: a wave is what has ended by the
        time every call has, or ``report_after`` seconds after the wave's first outcome,
        whichever comes first. Each call runs with its caller's context variables (the log
        context, for one). Leaving the loop early stops the calls not yet begun (their
        claims are left to the lease, as when recording fails)."""
        batch = _Batch(calls, go_on, self._per_batch, time.perf_counter() + INLINE_SECONDS)
        try:
            if self._pool is not None and len(calls) > 1:
                self._pool.submit(contextvars.copy_context().run, self._watch, batch)
            batch.run_inline(spills=self._pool is not None)
            yield from batch.waves(report_after)
        finally:
            batch.close()

    def _watch(self, batch: _Batch) -> None:
        """Wait until the batch's budget has passed or its inline calls have ended; send
        what is left side by side, this thread being one of the helpers. (Until this
        begins, the worker's thread goes on making the calls itself: a pool busy with other
        batches' calls makes this one slower, never stuck.)"""
        batch.watching.set()
        batch.inline_over.wait(max(batch.inline_until - time.perf_counter(), 0))
        helpers = batch.spill()
        try:
            assert self._pool is not None
            for _ in range(helpers - 1):
                self._pool.submit(contextvars.copy_context().run, batch.help)
        finally:  # if no other helper could be had, this one makes every call left
            if helpers:
                batch.help()


class _Batch:
    """One batch's calls: which are taken (each exactly once, by the worker's thread or a
    helper), how many run at once, and the outcomes as they end."""

    def __init__(
        self, calls: Sequence[Call], go_on: Callable[[], bool], per_batch: int, inline_until: float
    ) -> None:
        self.calls = calls
        self.go_on = go_on
        self.per_batch = per_batch
        self.inline_until = inline_until
        self.watching = threading.Event()  # the watchdog has begun
        self.inline_over = threading.Event()
        self._lock = threading.Lock()
        self._next = 0  # the first call no one has taken
        self._spilled = False
        self._closed = False
        # The inline call holds one while it runs, so a batch never has more at once.
        self._slots = threading.BoundedSemaphore(per_batch)
        self._ended: queue.SimpleQueue[Ended] = queue.SimpleQueue()

    def _take(self, inline: bool) -> int | None:
        with self._lock:
            if self._closed or self._next >= len(self.calls) or (inline and self._spilled):
                return None
            index = self._next
            self._next += 1
            return index

    def _make(self, index: int) -> None:
        # Reported whatever happens, or the batch would wait for it for ever. A call cut
        # short by something other than an error (an interrupt) counts as not made: its
        # claim goes back, and the provider recognises the reference if it did go.
        outcome = CallOutcome(skipped=True)
        try:
            with self._slots:
                outcome = make_call(self.calls[index], self.go_on)
        finally:
            self._ended.put((index, outcome))

    def run_inline(self, spills: bool) -> None:
        """Make calls in this (the worker's) thread until the budget has passed and the
        watchdog is there to take the rest, or it has taken them (without ``spills``, make
        them all here)."""
        try:
            while (index := self._take(inline=True)) is not None:
                self._make(index)
                if spills and time.perf_counter() > self.inline_until and self.watching.is_set():
                    break
        finally:
            self.inline_over.set()

    def spill(self) -> int:
        """Stop the inline calls; how many helpers the calls left need."""
        with self._lock:
            self._spilled = True
            left = 0 if self._closed else len(self.calls) - self._next
        return min(left, self.per_batch)

    def help(self) -> None:
        """Make calls not yet taken until there are none."""
        while (index := self._take(inline=False)) is not None:
            self._make(index)

    def waves(self, report_after: float) -> Iterator[list[Ended]]:
        left = len(self.calls)
        while left:
            wave = [self._next_ended()]
            deadline = time.perf_counter() + report_after
            while len(wave) < left:
                try:
                    wave.append(self._ended.get(timeout=max(deadline - time.perf_counter(), 0)))
                except queue.Empty:
                    break
            left -= len(wave)
            yield wave

    def _next_ended(self) -> Ended:
        """The next outcome, however long it takes. Waited for in short slices: an
        exception sent to this thread (dramatiq's time limit, its shutdown) is raised only
        between them."""
        while True:
            try:
                return self._ended.get(timeout=_WAIT_SLICE_SECONDS)
            except queue.Empty:
                continue

    def close(self) -> None:
        """No call begins after this (the caller stopped listening)."""
        with self._lock:
            self._closed = True
        self.inline_over.set()


def make_call(call: Call, go_on: Callable[[], bool]) -> CallOutcome:
    """Make ``call`` unless ``go_on()`` is false; what it raised is its outcome."""
    if not go_on():
        return CallOutcome(skipped=True)
    try:
        return CallOutcome(accepted=call())
    except Exception as error:
        return CallOutcome(error=error)
