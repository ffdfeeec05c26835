"""Group commit across the threads of a worker process.

A worker process runs several delivery threads, and a single-message job used to pay for
two transactions of its own: its claim and its ``sent`` record. Here each thread hands its
item to a ``GroupCommit`` and waits; whichever thread finds no group running becomes the
leader and runs one step (one transaction) for everything that arrived meanwhile, then
wakes the others with their results. While one group runs, the next one gathers, so groups
grow with load and a lone thread waits for no timer. The provider call between the two steps
still runs in each job's own thread, so a slow carrier is still called in parallel.

What a step raises is raised in every thread of its group: each of their jobs then fails
and is delivered again, exactly as when its own transaction failed. Except when the error
comes from the items themselves (``isolate`` says which errors do: a value the database
refuses, say): then each thread's items run their step again alone, so one thread's bad
item fails that thread's job only. A job failed after the carrier took its messages leaves
them claimed until the lease passes and sends them again, so a failure must not spread
to jobs that had nothing wrong with them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import structlog

from core import metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    """One thread's items, its outcome, and the condition it waits on (on the group's lock,
    so that waking a thread wakes that thread alone)."""

    __slots__ = ("items", "results", "error", "done", "wake")

    def __init__(self, items: Sequence[T], lock: threading.Lock) -> None:
        self.items = items
        self.results: list[R] = []
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Condition(lock)


class GroupCommit(Generic[T, R]):
    """Runs ``step`` once for the items of every thread waiting at the time.

    ``step`` takes a list of items and returns one result per item, in order. ``name``
    labels the group-size metric (``streams_worker_group_items``). ``isolate`` tells the
    errors that come from the items (the step is then run again for each thread's items
    alone) from those that would fail any group (a lost connection): by default none do.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[list[T]], list[R]],
        max_items: int = 512,
        isolate: Callable[[BaseException], bool] = lambda _error: False,
    ) -> None:
        self._name = name
        self._step = step
        self._max_items = max_items
        self._isolate = isolate
        self._lock = threading.Lock()
        self._waiting: list[_Slot[T, R]] = []
        self._running = False

    def submit(self, items: Sequence[T]) -> list[R]:
        """Run the step for ``items`` (with whatever other threads submit meanwhile);
        returns their results in order, or raises what the step raised."""
        if not items:
            return []
        mine: _Slot[T, R] = _Slot(items, self._lock)
        with self._lock:
            self._waiting.append(mine)
        while True:
            with self._lock:
                while self._running and not mine.done:
                    mine.wake.wait()
                if mine.done:
                    return self._outcome(mine)
                group = self._take_group()
                self._running = True
            # The leader: our slot is in this group unless the group was full before it.
            try:
                self._run(group)
            finally:
                with self._lock:
                    self._running = False
                    for slot in group:
                        slot.wake.notify()
                    if self._waiting:  # the oldest waiting thread leads the next group
                        self._waiting[0].wake.notify()

    def _take_group(self) -> list[_Slot[T, R]]:
        """The waiting slots, oldest first, up to ``max_items`` items (at least one slot).
        Called with the lock held."""
        group: list[_Slot[T, R]] = []
        count = 0
        while self._waiting:
            slot = self._waiting[0]
            if group and count + len(slot.items) > self._max_items:
                break
            group.append(self._waiting.pop(0))
            count += len(slot.items)
        return group

    def _run(self, group: list[_Slot[T, R]]) -> None:
        """Run the step for ``group`` outside the lock and hand out the outcome."""
        items = [item for slot in group for item in slot.items]
        try:
            metrics.WORKER_GROUP_ITEMS.labels(self._name).observe(len(items))
            results = self._checked_step(items)
        except BaseException as error:
            if len(group) > 1 and self._isolate(error):
                log.warning(
                    "group_step_failed_retrying_alone",
                    step=self._name,
                    threads=len(group),
                    error=type(error).__name__,
                )
                self._run_alone(group)
                return
            with self._lock:
                for slot in group:
                    slot.error, slot.done = error, True
            return
        with self._lock:
            start = 0
            for slot in group:
                slot.results = results[start : start + len(slot.items)]
                start += len(slot.items)
                slot.done = True

    def _run_alone(self, group: list[_Slot[T, R]]) -> None:
        """Run the step once for each slot's items, each with its own outcome."""
        for slot in group:
            try:
                results, error = self._checked_step(list(slot.items)), None
            except BaseException as failure:
                results, error = [], failure
            with self._lock:
                slot.results, slot.error, slot.done = results, error, True

    def _checked_step(self, items: list[T]) -> list[R]:
        results = self._step(items)
        if len(results) != len(items):
            raise RuntimeError(
                f"{self._name} step gave {len(results)} results for {len(items)} items"
            )
        return results

    @staticmethod
    def _outcome(slot: _Slot[T, R]) -> list[R]:
        if slot.error is not None:
            raise slot.error
        return slot.results
