"""``workers.group_commit.GroupCommit``: the threads waiting while a step runs share the
next one, each gets its own results back, and a failed step fails every job in it, unless
the error comes from one job's items: then each job runs alone and only that one fails."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.group_commit import GroupCommit


class Recorder:
    """A step that doubles its items and notes each group; the first group can be held
    until the test lets it go, so that the others pile up behind it. A group holding the
    ``refuse`` item fails, as a statement with a value the database refuses would."""

    def __init__(
        self, *, hold_first: bool = False, fail_group: int | None = None, refuse: int | None = None
    ) -> None:
        self.groups: list[list[int]] = []
        self._refuse = refuse
        self.release = threading.Event()
        self.first_running = threading.Event()
        self._hold_first = hold_first
        self._fail_group = fail_group
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.groups.append(list(items))
            number = len(self.groups)
        if number == 1 and self._hold_first:
            self.first_running.set()
            assert self.release.wait(10)
        if number == self._fail_group:
            raise ConnectionError("the database went away")
        if self._refuse in items:
            raise ValueError(f"the database refuses {self._refuse}")
        return [item * 2 for item in items]


def wait_for_waiters(group: GroupCommit, count: int) -> None:
    for _ in range(1000):
        with group._lock:  # noqa: SLF001 - the test watches the queue fill up
            waiting = sum(len(slot.items) for slot in group._waiting)  # noqa: SLF001
        if waiting >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"only {waiting} of {count} items waited")


def behind_a_held_group(group: GroupCommit, step: Recorder, batches: list[list[int]]) -> list:
    """Submit ``[0]`` and hold its step; submit ``batches`` from other threads meanwhile, let
    the first go, and return each batch's outcome: its results, or the exception raised."""
    with ThreadPoolExecutor(len(batches) + 1) as pool:
        first = pool.submit(group.submit, [0])
        assert step.first_running.wait(5)
        others = [pool.submit(group.submit, batch) for batch in batches]
        wait_for_waiters(group, sum(len(batch) for batch in batches))
        step.release.set()
        assert first.result(5) == [0]
        return [future.exception(5) or future.result(5) for future in others]


def test_a_lone_thread_runs_its_step_at_once():
    step = Recorder()
    assert GroupCommit("test", step).submit([1, 2]) == [2, 4]
    assert step.groups == [[1, 2]]


def test_threads_that_wait_meanwhile_share_one_step_and_get_their_own_results():
    step = Recorder(hold_first=True)
    batches = [[n, n + 100] for n in range(1, 9)]
    outcomes = behind_a_held_group(GroupCommit("test", step), step, batches)
    assert outcomes == [[2 * a, 2 * b] for a, b in batches]
    assert len(step.groups) == 2
    assert sorted(step.groups[1]) == sorted(x for batch in batches for x in batch)


def test_a_failed_step_fails_every_thread_of_its_group_and_not_the_next_group():
    step = Recorder(hold_first=True, fail_group=2)
    group = GroupCommit("test", step)
    outcomes = behind_a_held_group(group, step, [[n] for n in range(1, 5)])
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert group.submit([7]) == [14]


def test_groups_stay_within_max_items_and_everyone_is_served():
    step = Recorder(hold_first=True)
    outcomes = behind_a_held_group(
        GroupCommit("test", step, max_items=3), step, [[n] for n in range(1, 11)]
    )
    assert outcomes == [[2 * n] for n in range(1, 11)]
    assert all(len(g) <= 3 for g in step.groups)
    assert sorted(x for g in step.groups for x in g) == list(range(11))


def test_a_slot_larger_than_max_items_still_runs_alone():
    step = Recorder()
    assert GroupCommit("test", step, max_items=2).submit([1, 2, 3]) == [2, 4, 6]


def test_a_step_giving_the_wrong_number_of_results_is_an_error():
    group = GroupCommit("test", lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        group.submit([1, 2, 3])


def test_an_error_from_one_threads_items_fails_that_thread_alone():
    step = Recorder(hold_first=True, refuse=13)
    group = GroupCommit("test", step, isolate=lambda e: isinstance(e, ValueError))
    outcomes = behind_a_held_group(group, step, [[1, 2], [13, 14], [3]])
    assert outcomes[0] == [2, 4] and outcomes[2] == [6]
    assert isinstance(outcomes[1], ValueError)
    # The shared step failed; then each thread's items ran alone, the refused ones too.
    assert sorted(step.groups[1]) == [1, 2, 3, 13, 14]
    assert sorted(step.groups[2:]) == [[1, 2], [3], [13, 14]]


def test_an_error_not_from_the_items_still_fails_the_whole_group_at_once():
    calls: list[list[int]] = []

    def down(items: list[int]) -> list[int]:
        calls.append(items)
        raise ConnectionError("the database went away")

    step = Recorder(hold_first=True)
    group = GroupCommit(
        "test",
        lambda items: step(items) if items == [0] else down(items),
        isolate=lambda e: isinstance(e, ValueError),
    )
    outcomes = behind_a_held_group(group, step, [[1], [2], [3]])
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert len(calls) == 1  # not retried thread by thread
