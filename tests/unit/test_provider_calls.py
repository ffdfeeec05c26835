"""``workers.provider_calls``: a batch's calls in the worker's thread until together they
have taken ``INLINE_SECONDS`` (also while one still runs), side by side after that, never
more than ``per_batch`` at once; outcomes in order, or in waves as they end; nothing made
once the batch must stop; each call in its caller's context."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import sys
import threading
import time
from collections import Counter

import pytest

from workers.provider_calls import INLINE_SECONDS, Call, CallOutcome, ProviderCalls, make_call
from workers.providers.base import Accepted, ProviderError

REQUEST = contextvars.ContextVar("request", default="none")


def accepted(name: str) -> Accepted:
    return Accepted(provider_message_id=name)


def slow_call() -> Accepted:
    """A call slower than ``INLINE_SECONDS``: the rest of its batch goes side by side."""
    time.sleep(INLINE_SECONDS * 2)
    return accepted("slow")


def test_a_fast_carriers_calls_stay_in_the_callers_thread() -> None:
    caller = threading.get_ident()
    outcomes = ProviderCalls(4).run(
        [lambda: accepted(str(threading.get_ident())) for _ in range(5)], lambda: True
    )
    assert {o.accepted for o in outcomes} == {accepted(str(caller))}


def test_after_a_slow_call_the_rest_overlap_and_come_back_in_order() -> None:
    calls = ProviderCalls(4)
    second_may_end = threading.Event()

    def waits_for_the_next() -> Accepted:
        assert second_may_end.wait(5)
        return accepted("first of the rest")

    def lets_the_previous_end() -> Accepted:
        second_may_end.set()  # only possible if both run at once
        return accepted("second of the rest")

    outcomes = calls.run([slow_call, waits_for_the_next, lets_the_previous_end], lambda: True)
    assert [o.accepted for o in outcomes] == [
        accepted("slow"),
        accepted("first of the rest"),
        accepted("second of the rest"),
    ]


def test_calls_that_are_each_fast_but_add_up_send_the_rest_side_by_side() -> None:
    """A carrier at a third of the budget per call: the calls ahead of a message may keep it
    waiting for the budget, not for nineteen calls."""
    caller = threading.get_ident()

    def moderate() -> Accepted:
        time.sleep(INLINE_SECONDS / 3)
        return accepted(str(threading.get_ident()))

    outcomes = ProviderCalls(8).run([moderate] * 10, lambda: True)
    threads = [o.accepted.provider_message_id for o in outcomes if o.accepted]
    assert len(threads) == 10
    # Three or four calls fill the budget (fewer if a sleep overruns), and one more may be
    # made while the first helper starts; the rest went elsewhere.
    assert threads[0] == str(caller)
    assert str(caller) not in threads[6:]


def test_errors_are_outcomes_not_raised() -> None:
    refused = ProviderError("provider_rejected", "no", transient=False)

    def refuse() -> Accepted:
        raise refused

    def broken() -> Accepted:
        raise KeyError("adapter bug")

    for calls in ([refuse, broken, lambda: None], [slow_call, refuse, broken, lambda: None]):
        outcomes = ProviderCalls(2).run(calls, lambda: True)[-3:]
        assert outcomes[0].error is refused
        assert isinstance(outcomes[1].error, KeyError)
        assert outcomes[2] == CallOutcome()  # the call chose not to go


def test_nothing_is_called_once_the_batch_must_stop() -> None:
    made: list[str] = []

    def call() -> Accepted:
        made.append("call")
        return slow_call()

    assert make_call(call, lambda: False) == CallOutcome(skipped=True)
    answers = iter([True, False, False, False])
    outcomes = ProviderCalls(2).run([call] * 4, lambda: next(answers))
    assert [o.skipped for o in outcomes] == [False, True, True, True] and made == ["call"]


def test_each_call_sees_its_callers_context() -> None:
    REQUEST.set("batch-7")
    outcomes = ProviderCalls(3).run(
        [slow_call, *[lambda: accepted(REQUEST.get()) for _ in range(3)]], lambda: True
    )
    assert {o.accepted for o in outcomes[1:]} == {accepted("batch-7")}


def test_a_batch_makes_at_most_per_batch_calls_at_once_and_batches_do_not_queue() -> None:
    calls = ProviderCalls(per_batch=2, batches=2)
    lock = threading.Lock()
    now = {"all": 0, "a": 0, "b": 0}
    most = dict(now)
    # Two batches × two calls: the barrier is met only if neither batch waits on the other.
    all_four_in = threading.Barrier(4, timeout=5)

    def call_of(batch: str) -> Call:
        def call() -> Accepted:
            with lock:
                for key in ("all", batch):
                    now[key] += 1
                    most[key] = max(most[key], now[key])
            with contextlib.suppress(threading.BrokenBarrierError):
                all_four_in.wait()
            with lock:
                for key in ("all", batch):
                    now[key] -= 1
            return accepted(batch)

        return call

    threads = [
        threading.Thread(target=calls.run, args=([slow_call, *[call_of(b)] * 4], lambda: True))
        for b in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most == {"all": 4, "a": 2, "b": 2}


def test_a_call_that_hangs_in_the_callers_thread_holds_up_only_its_own_message() -> None:
    """The budget passes while the first call still runs: a watchdog sends the rest side by
    side at once. (Their outcomes come back when the caller's thread is free again.)"""
    caller = threading.get_ident()
    others_made = threading.Barrier(4, timeout=5)

    def hangs() -> Accepted:
        others_made.wait()  # met only if the other three are made meanwhile
        return accepted(str(threading.get_ident()))

    def fast() -> Accepted:
        others_made.wait()
        return accepted(str(threading.get_ident()))

    outcomes = ProviderCalls(4).run([hangs, fast, fast, fast], lambda: True)
    made_by = [o.accepted.provider_message_id for o in outcomes if o.accepted]
    assert made_by[0] == str(caller) and str(caller) not in made_by[1:] and len(made_by) == 4


def test_the_watchdog_keeps_watching_after_it_went_idle() -> None:
    """One watchdog serves every batch of a process: after a quiet spell (nothing to
    watch), a batch whose first call hangs is still spilled."""
    calls = ProviderCalls(4)
    assert len(calls.run([lambda: accepted("quick")] * 3, lambda: True)) == 3
    time.sleep(INLINE_SECONDS * 2)  # the watchdog has dropped that batch and waits, idle
    others_made = threading.Barrier(3, timeout=5)

    def meets_the_others() -> Accepted:
        others_made.wait()  # met only if all three run at once
        return accepted("met")

    outcomes = calls.run([meets_the_others] * 3, lambda: True)
    assert [o.accepted for o in outcomes] == [accepted("met")] * 3


def test_outcomes_come_back_in_waves_as_calls_end() -> None:
    """Calls that end close together are one wave; one still running ``report_after`` after
    the first outcome of a wave leaves the others to be reported without it."""
    release = threading.Event()

    def hangs() -> Accepted:
        assert release.wait(5)
        return accepted("late")

    together = ProviderCalls(4).waves([slow_call] * 6, lambda: True, report_after=1.0)
    assert [sorted(index for index, _ in wave) for wave in together] == [list(range(6))]

    waves = ProviderCalls(4).waves([slow_call, slow_call, hangs, slow_call], lambda: True, 0.5)
    assert sorted(index for index, _ in next(waves)) == [0, 1, 3]
    release.set()
    assert [index for wave in waves for index, _ in wave] == [2]


def test_the_call_in_the_callers_thread_counts_toward_per_batch() -> None:
    """Spilled while a call still runs in the caller's thread, the batch has no more than
    ``per_batch`` calls in flight: the helpers wait for its slot."""
    lock = threading.Lock()
    in_flight = {"now": 0, "most": 0}
    shorts_made = threading.Semaphore(0)
    in_pairs = threading.Barrier(2, timeout=5)  # two helpers' calls at once, surely

    def counted(body: Call) -> Call:
        def call() -> Accepted | None:
            with lock:
                in_flight["now"] += 1
                in_flight["most"] = max(in_flight["most"], in_flight["now"])
            try:
                return body()
            finally:
                with lock:
                    in_flight["now"] -= 1

        return call

    def hangs() -> Accepted:
        for _ in range(4):  # the others are made meanwhile
            assert shorts_made.acquire(timeout=5)
        return accepted("first")

    def short() -> Accepted:
        in_pairs.wait()
        time.sleep(0.01)  # a third helper, if let through, would overlap these two
        shorts_made.release()
        return accepted("short")

    outcomes = ProviderCalls(3).run([counted(hangs), *[counted(short)] * 4], lambda: True)
    assert [o.accepted for o in outcomes] == [accepted("first"), *[accepted("short")] * 4]
    assert in_flight["most"] == 3


def test_leaving_the_waves_early_stops_the_calls_not_yet_begun() -> None:
    made: list[int] = []
    left = threading.Event()

    def call_number(n: int) -> Call:
        def call() -> Accepted:
            made.append(n)
            if n == 0:
                time.sleep(INLINE_SECONDS * 3)  # the watchdog spills meanwhile
            else:
                assert left.wait(5)
            return accepted(str(n))

        return call

    waves = ProviderCalls(2).waves([call_number(n) for n in range(20)], lambda: True, 0.1)
    first = next(waves)  # the caller's call; the two helpers' calls are still running
    waves.close()
    left.set()
    time.sleep(INLINE_SECONDS * 2)
    assert [index for index, _ in first] == [0]
    assert sorted(made) == [0, 1, 2]  # the calls already taken, and no more


class Interrupted(BaseException):
    """Like dramatiq's time limit and shutdown: raised in a worker thread from outside."""


@pytest.mark.parametrize("after", [0.3, 1.5])  # in the first wave's second; after it
def test_an_exception_sent_to_the_waiting_thread_is_raised_while_calls_hang(after) -> None:
    release = threading.Event()
    raised_at: list[float] = []

    def hangs() -> Accepted:
        assert release.wait(10)
        return accepted("late")

    def worker() -> None:
        try:
            ProviderCalls(2).run([slow_call, hangs, hangs], lambda: True)
        except Interrupted:
            raised_at.append(time.perf_counter())

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(after)  # it now waits for the hanging calls' outcomes
    sent_at = time.perf_counter()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(Interrupted)
    )
    thread.join(3)
    release.set()
    assert raised_at and raised_at[0] - sent_at < 0.6


def test_a_pool_busy_with_other_calls_leaves_the_batch_to_the_callers_thread() -> None:
    """A batch left early still has calls hanging on the pool (all its threads): the next
    batch, spilled, makes its calls in the caller's thread rather than wait for a thread."""
    calls = ProviderCalls(2)  # a pool of two threads
    release = threading.Event()

    def hangs() -> Accepted:
        assert release.wait(10)
        return accepted("late")

    try:
        abandoned = calls.waves([slow_call, hangs, hangs, hangs], lambda: True, 0.01)
        next(abandoned)
        abandoned.close()  # two calls still hang on the pool's two threads
        began = time.perf_counter()
        outcomes = calls.run([slow_call, *[lambda: accepted("quick")] * 5], lambda: True)
        assert time.perf_counter() - began < 2
        assert [o.accepted for o in outcomes[1:]] == [accepted("quick")] * 5
    finally:
        release.set()


class Tally:
    """Which calls of one batch were made, how often, and the most in flight at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.made: Counter[int] = Counter()
        self.now = self.most = 0

    def call(self, index: int, pause: float) -> Call:
        def call() -> Accepted:
            with self.lock:
                self.made[index] += 1
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(pause)
            with self.lock:
                self.now -= 1
            return accepted(str(index))

        return call


def test_every_call_is_made_exactly_once_across_threads() -> None:
    """Eight threads, batches that spill at varied moments (the first call sleeps past the
    budget or not), calls that end at varied moments, threads switched often: every call
    once, outcomes in order, never more than ``per_batch`` of a batch at once."""
    calls = ProviderCalls(per_batch=4, batches=8)
    problems: list[str] = []

    def thread(seed: int) -> None:
        for batch in range(6):
            tally = Tally()
            first = INLINE_SECONDS * (1.5 if (seed + batch) % 2 else 0.2)
            pauses = [first] + [0.001 * ((seed * 7 + i) % 5) for i in range(1, 25)]
            outcomes = calls.run([tally.call(i, p) for i, p in enumerate(pauses)], lambda: True)
            if [o.accepted for o in outcomes] != [accepted(str(i)) for i in range(25)]:
                problems.append(f"thread {seed} batch {batch}: outcomes out of order or lost")
            if set(tally.made.values()) != {1} or len(tally.made) != 25:
                problems.append(f"thread {seed} batch {batch}: made {dict(tally.made)}")
            if tally.most > 4:
                problems.append(f"thread {seed} batch {batch}: {tally.most} at once")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=thread, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert problems == []


class _Killed(BaseException):
    """What an exception sent to a thread looks like to the call it interrupts."""


def test_helpers_killed_mid_batch_leave_no_call_waited_for_for_ever() -> None:
    """Both helpers die on their first call, after the caller's thread has stopped taking
    calls: the two calls no one took were never reported, and the batch never ended."""

    def killed_later() -> Accepted:
        time.sleep(0.2)  # the caller's thread has left its calls to the helpers by then
        raise _Killed

    calls: list[Call] = [slow_call, killed_later, killed_later, lambda: accepted("a")]
    calls.append(lambda: accepted("b"))
    result: list[list[CallOutcome]] = []
    runner = threading.Thread(
        target=lambda: result.append(ProviderCalls(2).run(calls, lambda: True)), daemon=True
    )
    runner.start()
    runner.join(5)
    assert not runner.is_alive(), "the batch waited for calls no one would make"
    [outcomes] = result
    assert outcomes[0].accepted == accepted("slow")
    assert all(o.skipped for o in outcomes[1:]), outcomes
