"""Single-message and batch jobs of one worker process share their claim and their ``sent``
record (``Delivery.deliver`` and ``Delivery.deliver_many`` through
``workers.group_commit``), against real PostgreSQL and Redis: every message goes out once
(invariant 2), a failed shared step leaves every message of its group to be delivered
again (invariant 1), and the groups do form."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY
from sqlalchemy.exc import DataError

from core.clock import utcnow
from tests.deliveries import delivery_with, send, states
from tests.processes import wait_until
from workers.actors import declare_actors
from workers.group_commit import GroupCommit
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.sandbox import SandboxProvider
from workers.queueing import delivery_batch_actor_name


class CountingCarrier(SandboxProvider):
    """The sandbox, counting every call by reference; the first call can be held until the
    test lets it go, so that other threads' claims and records pile up behind it."""

    def __init__(self, *args, hold_first: bool = False, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.first_in_call = threading.Event()
        self.release = threading.Event()
        self._hold_first = hold_first
        self._calls_lock = threading.Lock()

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        # ``send`` comes here too, with one message.
        with self._calls_lock:
            first = not self.calls
            self.calls.extend(message.reference for message in messages)
        if first and self._hold_first:
            self.first_in_call.set()
            assert self.release.wait(10)
        return super().send_batch(messages)


def group_items(step: str) -> tuple[float, float]:
    """(groups, items) of ``streams_worker_group_items`` for ``step`` so far."""
    count = REGISTRY.get_sample_value("streams_worker_group_items_count", {"step": step}) or 0.0
    total = REGISTRY.get_sample_value("streams_worker_group_items_sum", {"step": step}) or 0.0
    return count, total


def test_single_jobs_of_many_threads_share_claims_and_records_and_each_goes_once(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 40, prefix="g")
    carrier = CountingCarrier(runtime.settings.sandbox, runtime.redis, hold_first=True)
    delivery = delivery_with(runtime, carrier)
    claims_before, records_before = group_items("claim"), group_items("record")
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(delivery.deliver, ids[0])
        assert carrier.first_in_call.wait(10)
        rest = [pool.submit(delivery.deliver, i) for i in ids[1:]]
        # Seven threads claim meanwhile; their claims form groups behind the held call.
        threading.Event().wait(0.3)
        carrier.release.set()
        first.result(30)
        for future in rest:
            future.result(30)
    assert sorted(carrier.calls) == sorted(ids)  # each message called once
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}
    claim_groups = group_items("claim")[0] - claims_before[0]
    claimed = group_items("claim")[1] - claims_before[1]
    recorded = group_items("record")[1] - records_before[1]
    assert claimed == 40 and recorded == 40
    assert claim_groups < 40  # some single jobs did share a claim transaction


def test_invariant_2_the_same_message_delivered_by_racing_threads_goes_out_once(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 5)
    carrier = CountingCarrier(runtime.settings.sandbox, runtime.redis, hold_first=True)
    delivery = delivery_with(runtime, carrier)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(delivery.deliver, ids[0])
        assert carrier.first_in_call.wait(10)
        # Redeliveries: every message (the held one too) four times over, all at once.
        copies = [pool.submit(delivery.deliver, i) for i in ids * 4]
        threading.Event().wait(0.3)
        carrier.release.set()
        first.result(30)
        for future in copies:
            future.result(30)
    assert sorted(carrier.calls) == sorted(ids)
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}


def test_batch_jobs_of_many_threads_share_claims_and_records_and_each_goes_once(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 60, prefix="m")
    batches = [ids[i : i + 10] for i in range(0, 60, 10)]
    carrier = CountingCarrier(runtime.settings.sandbox, runtime.redis)
    delivery = delivery_with(runtime, carrier)
    # The first record to run is held until every batch has been sent: the other five
    # batches' records then wait behind it, and go in one transaction after it.
    first_record_running, release = threading.Event(), threading.Event()
    steps: list[int] = []

    def held_record(items):  # type: ignore[no-untyped-def]
        steps.append(len(items))
        if len(steps) == 1:
            first_record_running.set()
            assert release.wait(10)
        return delivery._record_sent_group(items)

    delivery._records["transactional"] = GroupCommit("record", held_record)
    claims_before = group_items("claim")
    with ThreadPoolExecutor(len(batches)) as pool:
        futures = [pool.submit(delivery.deliver_many, b, queue="transactional") for b in batches]
        assert first_record_running.wait(10)
        assert wait_until(lambda: len(carrier.calls) == 60, timeout=10, interval=0.01)
        threading.Event().wait(0.3)
        release.set()
        results = [future.result(30) for future in futures]
    assert all(r.failed == [] and r.handed_back == [] for r in results)
    assert sorted(carrier.calls) == sorted(ids)  # each message called once
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}
    assert group_items("claim")[1] - claims_before[1] == 60
    assert sum(steps) == 60 and len(steps) == 2  # six batches, two record transactions


class PoisonIdCarrier(CountingCarrier):
    """Answers one reference with a provider id PostgreSQL cannot store (a NUL in it), and
    takes that message only once ``take_poisoned`` is set."""

    def __init__(self, *args, poisoned: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.poisoned = poisoned
        self.take_poisoned = threading.Event()

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        poisoned = [m.reference == self.poisoned for m in messages]
        if any(poisoned):
            assert self.take_poisoned.wait(10)
        answers = super().send_batch(messages)
        return [
            dataclasses.replace(answer, provider_message_id="bad\x00id")
            if bad and isinstance(answer, Accepted)
            else answer
            for answer, bad in zip(answers, poisoned, strict=True)
        ]


def test_invariant_2_a_record_refused_for_one_batch_fails_that_batch_alone(
    runtime, client, make_stream
):
    """One batch's record is refused by the database (a carrier answered an id it cannot
    store). The batches recorded in the same group are recorded again on their own: had
    they failed too, their messages, already taken by the carrier, would be sent again
    after the lease."""
    ids = send(client, make_stream(), 30, prefix="p")
    batches = [ids[0:10], ids[10:20], ids[20:30]]
    carrier = PoisonIdCarrier(runtime.settings.sandbox, runtime.redis, poisoned=ids[14])
    delivery = delivery_with(runtime, carrier)
    first_record_running, release = threading.Event(), threading.Event()
    steps: list[int] = []
    record_step = delivery._records["transactional"]._step

    def held_record(items):  # type: ignore[no-untyped-def]
        steps.append(len(items))
        if len(steps) == 1:
            first_record_running.set()
            assert release.wait(10)
        return record_step(items)

    # The poisoned batch finishes sending only once a clean batch's record is held, so it
    # joins the next group with the other clean batch.
    delivery._records["transactional"]._step = held_record
    with ThreadPoolExecutor(len(batches)) as pool:
        futures = [pool.submit(delivery.deliver_many, b, queue="transactional") for b in batches]
        assert first_record_running.wait(10)
        carrier.take_poisoned.set()
        assert wait_until(lambda: len(carrier.calls) == 30, timeout=10, interval=0.01)
        threading.Event().wait(0.3)
        release.set()
        outcomes = [future.exception(30) for future in futures]
    found = states(runtime, ids)
    poisoned_batch = next(n for n, batch in enumerate(batches) if ids[14] in batch)
    for n, batch in enumerate(batches):
        if n == poisoned_batch:
            assert isinstance(outcomes[n], DataError)
            assert {found[i] for i in batch} == {("sending", 1)}  # left to the lease
        else:
            assert outcomes[n] is None
            assert {found[i] for i in batch} == {("delivered", 1)}
    # A clean batch alone; the next two together, refused; then each alone again.
    assert steps == [10, 20, 10, 10]


def test_invariant_2_overlapping_batches_racing_in_threads_send_each_message_once(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 15, prefix="o")
    batches = [ids[0:10], ids[5:15], ids, ids[::-1], ids[3:12]]
    carrier = CountingCarrier(runtime.settings.sandbox, runtime.redis)
    delivery = delivery_with(runtime, carrier)
    start = threading.Barrier(len(batches))

    def deliver(batch: list[str]):  # type: ignore[no-untyped-def]
        start.wait(10)
        return delivery.deliver_many(batch, queue="transactional")

    with ThreadPoolExecutor(len(batches)) as pool:
        results = [f.result(30) for f in [pool.submit(deliver, b) for b in batches]]
    assert all(r.failed == [] for r in results)
    assert sorted(carrier.calls) == sorted(ids)
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}


def test_a_key_twice_in_one_claim_group_is_claimed_once(runtime, client, make_stream):
    (message_id,) = send(client, make_stream(), 1)
    key = uuid.UUID(message_id)
    delivery = delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis))
    first, second = delivery._claim_ungated_group([key, key])  # noqa: SLF001
    assert first is not None and first.item.job.message_id == key
    assert second is None


def test_invariant_1_a_failed_shared_record_leaves_every_message_of_its_group_to_retry(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 6)
    carrier = CountingCarrier(runtime.settings.sandbox, runtime.redis, hold_first=True)
    delivery = delivery_with(runtime, carrier)
    failures = {"left": 1}

    def record_or_fail(sent):  # type: ignore[no-untyped-def]
        # The database goes away during the second group's record (the first is the held
        # message's, alone).
        if len(sent) > 1 and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("server closed the connection unexpectedly")
        return delivery._record_sent_group(sent)  # noqa: SLF001

    delivery._records[""] = GroupCommit("record", record_or_fail)  # noqa: SLF001
    errors: list[str] = []
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(delivery.deliver, ids[0])
        assert carrier.first_in_call.wait(10)
        rest = {i: pool.submit(delivery.deliver, i) for i in ids[1:]}
        threading.Event().wait(0.3)
        carrier.release.set()
        first.result(30)
        for message_id, future in rest.items():
            try:
                future.result(30)
            except ConnectionError:
                errors.append(message_id)
    assert len(errors) >= 2, "the failing group held more than one job"
    found = states(runtime, ids)
    # The jobs that failed are left claimed (`sending`): after the lease, a redelivery sends
    # them again under the same reference, which the carrier takes as the first.
    assert {found[i] for i in errors} == {("sending", 1)}
    assert {found[i] for i in ids if i not in errors} == {("delivered", 1)}
    # The lease passes: a redelivery takes them again, and the carrier knows the reference.
    lease = timedelta(seconds=runtime.settings.claim_lease_seconds + 1)
    runtime.clock = lambda: utcnow() + lease
    submissions = carrier.submissions()
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(delivery.deliver, i) for i in ids]:
            future.result(30)
    found = states(runtime, ids)
    assert {found[i] for i in errors} == {("delivered", 2)}
    assert {found[i] for i in ids if i not in errors} == {("delivered", 1)}
    assert carrier.submissions() == submissions  # the carrier took nothing twice


def test_invariant_6_an_otp_job_never_waits_on_a_marketing_group(runtime, client, make_stream):
    (marketing,) = send(client, make_stream(type="marketing"), 1, prefix="m")
    (otp,) = send(client, make_stream(type="otp"), 1, prefix="o")
    delivery = delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis))
    in_claim, release = threading.Event(), threading.Event()

    def slow_claim(keys):  # type: ignore[no-untyped-def]
        in_claim.set()  # a marketing claim that takes its time (a big group, a slow disk)
        assert release.wait(10)
        return delivery._claim_ungated_group(keys)  # noqa: SLF001

    delivery._claims["marketing"] = GroupCommit("claim", slow_claim)  # noqa: SLF001
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(delivery.deliver, marketing, "marketing")
        assert in_claim.wait(10)
        delivery.deliver(otp, "otp")  # returns while the marketing claim is still running
        assert states(runtime, [otp, marketing]) == {
            otp: ("delivered", 1),
            marketing: ("queued", 0),
        }
        release.set()
        held.result(10)
    assert states(runtime, [marketing]) == {marketing: ("delivered", 1)}


def test_invariant_6_an_otp_batch_job_never_waits_on_a_marketing_batch_group(
    runtime, client, make_stream
):
    """The same through the batch actors as declared for a worker: each passes its queue,
    so an OTP batch claims in the OTP group while a marketing batch's claim is held."""
    marketing = send(client, make_stream(type="marketing"), 2, prefix="m")
    otp = send(client, make_stream(type="otp"), 2, prefix="o")
    delivery = delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis))
    in_claim, release = threading.Event(), threading.Event()

    def slow_claim(keys):  # type: ignore[no-untyped-def]
        in_claim.set()
        assert release.wait(10)
        return delivery._claim_ungated_group(keys)  # noqa: SLF001

    delivery._claims["marketing"] = GroupCommit("claim", slow_claim)  # noqa: SLF001
    broker = StubBroker()
    declare_actors(broker, delivery, ["marketing", "otp"])
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(broker.get_actor(delivery_batch_actor_name("marketing")).fn, marketing)
        assert in_claim.wait(10)
        broker.get_actor(delivery_batch_actor_name("otp")).fn(otp)
        assert states(runtime, otp + marketing) == {
            **{i: ("delivered", 1) for i in otp},
            **{i: ("queued", 0) for i in marketing},
        }
        release.set()
        held.result(10)
    assert states(runtime, marketing) == {i: ("delivered", 1) for i in marketing}
