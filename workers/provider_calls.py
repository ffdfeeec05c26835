"""The provider calls of one batch job, made side by side.

Made one after another, the calls of a batch job add up: with a carrier that answers in
100 ms, the twentieth message of a job went out two seconds after the first. Here the calls
of a batch run on a pool of threads of the worker process, ``batch_send_concurrency`` at
once for each batch, while the worker's thread waits for them. The pool has that many
threads for each worker thread, so one batch never waits for another's calls, and a process
with more worker threads makes more calls at once, as it did when each thread made its own.

A call is one request to the carrier: one message, or several for a carrier that takes
batches (``workers.providers.base.BatchProvider``), whose job then usually needs just one.

Only the calls move: whatever a call's outcome writes to the database (a retry, a failure,
an expiry) is done by the worker's own thread, so a process still needs one database
connection per worker thread and no more. The outcomes come back in waves (``waves``): all
of them at once when the calls end within ``REPORT_AFTER_SECONDS`` of each other, as they
do with a working carrier; otherwise those in hand by then, so a call that hangs until its
timeout does not keep the batch's other messages from being recorded as sent. (The one
exception: while a call runs in the worker's own thread, nothing can be recorded.)

Calls are made in the worker's own thread until the batch's calls have taken
``INLINE_SECONDS`` together: a fast carrier gains little from more threads, and handing each
call to another one costs CPU. Then the rest of the batch goes side by side. The budget
counts the calls together, not one by one, so a carrier that answers each call in 30 ms
keeps the last message of twenty waiting for the budget and a few rounds of calls, not for
nineteen calls one after another. It is kept by a watchdog, one thread per process, also
while a call is still running: a first call that hangs holds up the others' records, but
not their calls. Until a helper of the batch has begun, the worker's thread goes on making
calls itself: a pool busy with other calls (those of a batch left early, still hanging)
makes a batch slower, never stuck. While batches end within their budget, the watchdog
wakes about once per budget, however many batches there are, and costs a batch no more
than an append to its list. The budget is wide because on a busy host even a fast call's
wall time includes waits for the GIL and a core (milliseconds).

A call is made only if ``go_on()`` still holds when its turn comes (the worker is not
stopping and the batch's claims are still fresh); otherwise it is reported as skipped and
the worker gives its claims back.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallOutcome(Generic[T]):
    """How one call ended: ``accepted`` (what it returned); or ``error`` (what it raised);
    or ``skipped`` (not made); or none of these (the call chose not to go, returning None)."""

    accepted: T | None = None
    error: Exception | None = None
    skipped: bool = False


#: One request to a carrier: one message, or several for a carrier that takes batches.
Call = Callable[[], Any]

#: While a batch's calls have taken less than this together, the next one is made in the
#: worker's own thread.
INLINE_SECONDS = 0.05

#: Outcomes in hand this long are handed back (a wave) even while other calls still run.
REPORT_AFTER_SECONDS = 1.0

#: The longest the worker's thread waits without looking up (see ``_Batch._next_ended``).
_WAIT_SLICE_SECONDS = 0.2

#: One ended call: its index in the batch and its outcome.
Ended = tuple[int, CallOutcome[Any]]

#: The outcome of a call cut short by something other than an error (an interrupt): as if
#: not made, so its claim goes back; the provider recognises the reference if it did go.
_CUT_SHORT: CallOutcome[Any] = CallOutcome(skipped=True)


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
        self._watchdog = _Watchdog(self._spill) if per_batch > 1 else None

    def run(self, calls: Sequence[Call], go_on: Callable[[], bool]) -> list[CallOutcome[Any]]:
        """The outcome of each of ``calls``, in order, once all have ended."""
        outcomes: list[CallOutcome[Any] | None] = [None] * len(calls)
        for wave in self.waves(calls, go_on):
            for index, outcome in wave:
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def waves(
        self,
        calls: Sequence[Call],
        go_on: Callable[[], bool],
        report_after: float = REPORT_AFTER_SECONDS,
        untaken: list[int] | None = None,
    ) -> Iterator[list[Ended]]:
        """Each call's outcome with its index, in waves: a wave is what has ended by the
        time every call has, or ``report_after`` seconds after the wave began (the first
        outcome, or the end of the calls in this thread), whichever comes first. Each call
        runs with its caller's context variables (the log context, for one). Leaving the
        loop early stops the calls not yet begun; their indices are then added to
        ``untaken``, so that the caller can give their claims back."""
        batch = _Batch(calls, go_on, self._per_batch, time.perf_counter() + INLINE_SECONDS)
        try:
            if self._watchdog is not None and len(calls) > 1:
                self._watchdog.watch(batch)
            ended = batch.run_inline(self._add_helpers)
            yield from batch.waves(ended, report_after)
        finally:
            never = batch.close()
            if untaken is not None:
                untaken.extend(never)

    def _spill(self, batch: _Batch) -> None:
        """The watchdog's part: the budget has passed, the rest go side by side."""
        self._add_helpers(batch, batch.spill())

    def _add_helpers(self, batch: _Batch, count: int) -> None:
        assert self._pool is not None
        for _ in range(count):
            try:
                # A context of its own per helper: one context cannot be entered by two
                # threads.
                self._pool.submit(batch.context.copy().run, batch.help)
            except RuntimeError:  # the pool is shut down (the interpreter is exiting)
                log.warning("provider_call_helper_refused")
                batch.helper_gone()


class _Watchdog:
    """One thread that spills every batch still making calls in its worker's thread when
    its budget passes. Batches are watched in the order they began, and all have the same
    budget, so the first one watched is always the next one due."""

    def __init__(self, spill: Callable[[_Batch], None]) -> None:
        self._spill = spill
        self._due: deque[_Batch] = deque()
        self._changed = threading.Condition()
        self._idle = False  # the thread waits for a batch to watch, with no time limit
        self._thread: threading.Thread | None = None  # started with the first batch

    def watch(self, batch: _Batch) -> None:
        if self._thread is None:
            self._start()
        # No lock on this path, taken by every batch of every worker thread: deque appends
        # are atomic, and the thread is woken only when it waits with nothing to watch. It
        # says so (``_idle``) before it looks, under the lock, so a batch appended after it
        # looked finds it idle and wakes it once the lock is free, that is, once it waits.
        self._due.append(batch)
        if self._idle:
            with self._changed:
                self._changed.notify()

    def _start(self) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="provider-call-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._idle = True
                while not self._due:
                    self._changed.wait()
                self._idle = False
                batch = self._due[0]
                wait = batch.inline_until - time.perf_counter()
                if wait > 0 and not batch.inline_over:
                    self._changed.wait(wait)
                    continue
                self._due.popleft()
            if not batch.inline_over:
                self._spill(batch)


class _Batch:
    """One batch's calls: which are taken (each exactly once, by the worker's thread or a
    helper), how many run at once, and the outcomes of the helpers' calls as they end."""

    def __init__(
        self, calls: Sequence[Call], go_on: Callable[[], bool], per_batch: int, inline_until: float
    ) -> None:
        self.calls = calls
        self.go_on = go_on
        self.per_batch = per_batch
        self.inline_until = inline_until
        self.context = contextvars.copy_context()
        #: Set by the worker's thread when it has stopped making calls (read by the watchdog).
        self.inline_over = False
        self._lock = threading.Lock()
        self._next = 0  # the first call no one has taken
        self._spilled = False
        self._helpers = 0  # started on the pool and not ended
        self._helping = False  # a helper has begun taking calls
        self._closed = False
        self._ended: queue.SimpleQueue[Ended] = queue.SimpleQueue()

    def run_inline(self, add_helpers: Callable[[_Batch, int], None]) -> list[Ended]:
        """Make calls in this (the worker's) thread until the watchdog has spilled the
        batch and one of its helpers has begun: a pool busy with other batches' calls
        makes a batch slower, never stuck. Then add the helper the spill kept this
        thread's slot for (``add_helpers``)."""
        ended: list[Ended] = []
        try:
            while (index := self._take(inline=True)) is not None:
                self._make(index, ended.append)
        finally:
            self.inline_over = True
        with self._lock:
            owed = self._helpers_wanted() if self._spilled else 0
        if owed:
            add_helpers(self, owed)
        return ended

    def _take(self, inline: bool) -> int | None:
        """The next call no one has taken, or None when there is none (or the batch is
        closed; or, for the worker's thread, once a helper has begun)."""
        with self._lock:
            if self._closed or self._next >= len(self.calls) or (inline and self._helping):
                return None
            self._helping = self._helping or not inline
            index = self._next
            self._next += 1
            return index

    def _make(self, index: int, report: Callable[[Ended], object]) -> None:
        outcome = _CUT_SHORT  # reported whatever happens, or the batch would wait for ever
        try:
            outcome = make_call(self.calls[index], self.go_on)
        finally:
            report((index, outcome))

    def spill(self) -> int:
        """How many helpers to start now that the budget has passed: one slot is kept for
        the worker's thread, which makes calls until a helper begins."""
        with self._lock:
            self._spilled = True
            return self._helpers_wanted(keep=1)

    def _helpers_wanted(self, keep: int = 0) -> int:
        """Helpers to start so that the batch has up to ``per_batch`` calls running,
        ``keep`` slots aside (called with the lock held)."""
        if self._closed:
            return 0
        slots = self.per_batch - keep - self._helpers
        wanted = max(0, min(slots, len(self.calls) - self._next))
        self._helpers += wanted
        return wanted

    def helper_gone(self) -> None:
        with self._lock:
            self._helpers -= 1

    def help(self) -> None:
        """Make calls not yet taken until there are none."""
        try:
            while (index := self._take(inline=False)) is not None:
                self._make(index, self._ended.put)
        except BaseException:
            # Killed mid-batch (an exception sent to this thread; ``make_call`` keeps only
            # ``Exception``s). Once a helper has begun, the worker's thread takes no more
            # calls, so those no one has taken would be neither made nor reported, and it
            # would wait for them for ever: they are reported as not made.
            while (index := self._take(inline=False)) is not None:
                self._ended.put((index, _CUT_SHORT))
            raise
        finally:
            self.helper_gone()

    def waves(self, ended: list[Ended], report_after: float) -> Iterator[list[Ended]]:
        """``ended`` (the worker thread's own calls) and the helpers' outcomes, in waves."""
        left = len(self.calls) - len(ended)
        wave = ended
        while wave or left:
            if not wave:
                first = self._next_ended(None)
                assert first is not None
                wave = [first]
                left -= 1
            deadline = time.perf_counter() + report_after
            while left and (more := self._next_ended(deadline)) is not None:
                wave.append(more)
                left -= 1
            yield wave
            wave = []

    def _next_ended(self, deadline: float | None) -> Ended | None:
        """The next outcome of a helper's call, or None once ``deadline`` (a
        ``perf_counter`` time; None: none) has passed. Waited for in short slices: an
        exception sent to this thread (dramatiq's time limit, its shutdown) is raised only
        between them."""
        while True:
            wait = _WAIT_SLICE_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.perf_counter())
                if wait <= 0:
                    try:
                        return self._ended.get_nowait()
                    except queue.Empty:
                        return None
            try:
                return self._ended.get(timeout=wait)
            except queue.Empty:
                continue

    def close(self) -> range:
        """No call begins after this (the caller stopped listening). Returns the indices of
        the calls that never began."""
        with self._lock:
            self._closed = True
            never = range(self._next, len(self.calls))
        self.inline_over = True
        return never


def make_call(call: Call, go_on: Callable[[], bool]) -> CallOutcome[Any]:
    """Make ``call`` unless ``go_on()`` is false; what it raised is its outcome."""
    if not go_on():
        return CallOutcome(skipped=True)
    try:
        return CallOutcome(accepted=call())
    except Exception as error:
        return CallOutcome(error=error)
