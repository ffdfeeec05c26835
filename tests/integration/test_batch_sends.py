"""A batch job's claims against the relay's lease, and a provider that cannot absorb a
second submission (invariant 2): a claim is used only while it is fresh, and what such a
provider took is recorded before the next call. A batch job's messages to a carrier that
takes several in one request go in as few requests as it allows, each message with its own
outcome."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from core.runtime import build_runtime
from core.settings import SandboxSettings
from schemas.tables import DeadLetter, Message, MessageEvent
from tests.conftest import auth, message
from tests.deliveries import delivery_with, send, states
from tests.processes import MovableClock
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.sandbox import SandboxProvider

PHONE = "+972524265292"
REFUSED = "+972524000001"  # sandbox magic numbers (workers/providers/sandbox.py)
TIMEOUT = "+972524000002"


def test_invariant_2_a_batch_gives_back_claims_older_than_half_the_lease(
    settings, client, make_stream
):
    ids = send(client, make_stream(), 3)
    # A carrier that takes one message per request, called one after another, each call
    # longer than half the lease: after the first, the others' claims are too old to use
    # (the relay may reclaim them while the call runs). Half the lease (1 s) leaves a
    # loaded machine time to make the first call (0.2 s did not, once in CI).
    own = settings.model_copy(
        update={
            "batch_send_concurrency": 1,
            "claim_lease_seconds": 2.0,
            "sandbox": SandboxSettings(latency_ms=1200, receipt_delay_seconds=0, max_batch=1),
        }
    )
    runtime = build_runtime(own)
    try:
        carrier = SandboxProvider(own.sandbox, runtime.redis)
        result = delivery_with(runtime, carrier).deliver_many(ids)
        assert sorted(result.handed_back) == sorted(ids[1:])
        assert result.failed == []
        assert carrier.submissions() == 1
        found = states(runtime, ids)
        assert found[ids[0]] == ("delivered", 1)
        assert [found[i] for i in ids[1:]] == [("queued", 0), ("queued", 0)]
        with runtime.session_factory() as session:
            details = session.scalars(
                select(MessageEvent.detail).where(MessageEvent.message_id == uuid.UUID(ids[1]))
            ).all()
        assert "claim given back" in details
    finally:
        runtime.close()


class NotIdempotentCarrier(SandboxProvider):
    """The sandbox, but like WhatsApp's Cloud API: no idempotency key. Before each call it
    notes what the database says of the messages it already took."""

    idempotent = False

    def __init__(self, runtime, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runtime = runtime
        self.taken: list[str] = []
        self.seen_before_call: list[dict[str, tuple[str, int]]] = []

    def send(self, message: OutboundMessage) -> Accepted:
        self.seen_before_call.append(states(self.runtime, self.taken) if self.taken else {})
        accepted = super().send(message)
        self.taken.append(message.reference)
        return accepted


def test_invariant_2_what_a_provider_without_idempotency_took_is_recorded_before_the_next(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 3)
    carrier = NotIdempotentCarrier(runtime, runtime.settings.sandbox, runtime.redis)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.taken == ids
    # By the third call, the first two are already out of `sending`, for good.
    assert set(carrier.seen_before_call[2].values()) == {("delivered", 1)}
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}


class CountingRequests(SandboxProvider):
    """The sandbox, noting the references of each request it gets (``send`` comes to
    ``send_batch`` with one message); ``answer`` can stand in for its answers."""

    def __init__(self, *args, answer=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.requests: list[list[str]] = []
        self._answer = answer

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        self.requests.append([message.reference for message in messages])
        if self._answer is not None:
            return self._answer(messages)
        return super().send_batch(messages)


def send_to(client, stream, recipients: list[str], **fields) -> list[str]:  # type: ignore[no-untyped-def]
    """One batch to ``stream``, a message per recipient; their ids in order."""
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(recipient_phone=r, **fields) for r in recipients]},
        headers=auth(stream["token"]),
    )
    assert answer.status_code == 202, answer.text
    return [item["message_id"] for item in answer.json()["results"]]


def errors(runtime, ids: list[str]) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    with runtime.session_factory() as session:
        rows = session.execute(
            select(Message.id, Message.error_code).where(
                Message.id.in_([uuid.UUID(i) for i in ids])
            )
        ).all()
    return {str(row.id): row.error_code for row in rows}


def provider_calls_timed() -> float:
    name = "streams_provider_call_duration_seconds_count"
    return REGISTRY.get_sample_value(name, {"provider": "sandbox"}) or 0.0


def carrier_taking(runtime, max_batch: int, **kwargs) -> CountingRequests:  # type: ignore[no-untyped-def]
    own = runtime.settings.sandbox.model_copy(update={"max_batch": max_batch})
    return CountingRequests(own, runtime.redis, **kwargs)


def test_a_batch_job_goes_to_a_carrier_that_takes_batches_in_as_few_requests_as_it_allows(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 10)
    carrier = carrier_taking(runtime, 4)
    timed_before = provider_calls_timed()
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [ids[0:4], ids[4:8], ids[8:10]]
    assert carrier.submissions() == 10
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}
    # The provider's latency is observed per message (the provider-errors alert divides
    # errors, counted per message, by it).
    assert provider_calls_timed() - timed_before == 10


def test_each_message_of_one_request_gets_its_own_outcome(runtime, client, make_stream):
    ids = send_to(client, make_stream(), [PHONE, REFUSED, TIMEOUT, PHONE])
    carrier = carrier_taking(runtime, 100)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [ids]
    found = states(runtime, ids)
    assert [found[i] for i in ids] == [
        ("delivered", 1),
        ("failed", 1),  # refused for good
        ("queued", 1),  # a timeout: retried later, its first attempt spent
        ("delivered", 1),
    ]
    assert errors(runtime, ids)[ids[1]] == "sandbox_refused"


def test_a_request_that_fails_as_a_whole_is_the_error_of_each_of_its_messages(
    runtime, client, make_stream
):
    def unavailable(messages):  # type: ignore[no-untyped-def]
        raise ProviderError("provider_unavailable", "HTTP 503", transient=True)

    ids = send(client, make_stream(), 3)
    carrier = carrier_taking(runtime, 100, answer=unavailable)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [ids] and carrier.submissions() == 0
    assert states(runtime, ids) == {i: ("queued", 1) for i in ids}  # each to be retried
    assert set(errors(runtime, ids).values()) == {"provider_unavailable"}


def test_a_request_refused_for_our_credentials_is_not_split_and_each_message_is_a_dead_letter(
    runtime, client, make_stream
):
    """The carrier refuses the request for our credentials: each message alone would be
    refused the same, so none is sent again in a request of its own. Each fails as a dead
    letter, to replay once the credentials are mended."""

    def refuses_our_key(messages):  # type: ignore[no-untyped-def]
        raise ProviderError("provider_auth_failed", "HTTP 401", transient=False, configuration=True)

    ids = send(client, make_stream(), 3)
    carrier = carrier_taking(runtime, 100, answer=refuses_our_key)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [ids], "one request, not split into one per message"
    assert states(runtime, ids) == {i: ("failed", 1) for i in ids}
    with runtime.session_factory() as session:
        letters = session.execute(select(DeadLetter.message_id, DeadLetter.reason)).all()
    assert sorted((str(m), r) for m, r in letters) == sorted((i, "configuration") for i in ids)


def test_answers_that_do_not_match_the_request_are_retried_not_trusted(
    runtime, client, make_stream
):
    """An adapter answering two messages for a request of three broke its contract: which
    message each answer is for cannot be told, so none is recorded as sent."""
    ids = send(client, make_stream(), 3)
    carrier = carrier_taking(runtime, 100)
    carrier._answer = lambda messages: SandboxProvider.send_batch(carrier, messages[:2])
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == []
    assert states(runtime, ids) == {i: ("queued", 1) for i in ids}
    assert set(errors(runtime, ids).values()) == {"provider_error"}


def test_a_message_whose_validity_passed_after_its_claim_is_left_out_of_the_request(
    runtime, client, make_stream
):
    """The workers were stalled between the claim and the request: the message whose
    validity has passed meanwhile expires instead of going out late, its claim not counted
    (no call was made); the others go in one request."""
    clock = MovableClock(datetime.now(UTC))
    runtime.clock = clock
    stream = make_stream()
    (early,) = send_to(client, stream, [PHONE])
    (short,) = send_to(client, stream, [PHONE], validity_seconds=30)
    (late,) = send_to(client, stream, [PHONE])
    ids = [early, short, late]
    carrier = carrier_taking(runtime, 100)
    delivery = delivery_with(runtime, carrier)
    claim_step = delivery._claims["transactional"]._step

    def claim_then_stall(keys):  # type: ignore[no-untyped-def]
        claimed = claim_step(keys)
        clock.advance(31)
        return claimed

    delivery._claims["transactional"]._step = claim_then_stall
    result = delivery.deliver_many(ids, queue="transactional")
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [[early, late]]
    found = states(runtime, ids)
    assert (found[early], found[short], found[late]) == (
        ("delivered", 1),
        ("expired", 0),
        ("delivered", 1),
    )


def test_a_request_of_several_refused_for_good_is_sent_again_message_by_message(
    runtime, client, make_stream
):
    """A bulk API refusing a whole request (a 400 for one bad item, say) says nothing of
    which message it was. Each is sent again at once in a request of its own, and that
    answer is its own: the bad one fails, the others go, and none spends an attempt or
    waits out a back-off for another's fault (even on its last attempt)."""

    def refuses_requests_of_several(messages):  # type: ignore[no-untyped-def]
        if len(messages) > 1:
            raise ProviderError("bad_request", "HTTP 400", transient=False)
        return SandboxProvider.send_batch(carrier, messages)

    runtime.settings = runtime.settings.model_copy(update={"max_send_attempts": 1})
    ids = send_to(client, make_stream(), [PHONE, REFUSED, PHONE])
    carrier = carrier_taking(runtime, 100, answer=refuses_requests_of_several)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.requests == [ids, *([i] for i in ids)]
    found = states(runtime, ids)
    assert [found[i] for i in ids] == [("delivered", 1), ("failed", 1), ("delivered", 1)]
    assert errors(runtime, ids)[ids[1]] == "sandbox_refused"  # its own answer


def test_a_split_request_stops_sending_once_the_worker_is_stopping(runtime, client, make_stream):
    """The worker begins stopping while a refused request of several is being split: the
    messages not sent yet are given back, not sent."""
    stopping = threading.Event()

    def refuses_then_stops(messages):  # type: ignore[no-untyped-def]
        if len(messages) > 1:
            stopping.set()
            raise ProviderError("bad_request", "HTTP 400", transient=False)
        return SandboxProvider.send_batch(carrier, messages)

    ids = send(client, make_stream(), 3)
    carrier = carrier_taking(runtime, 100, answer=refuses_then_stops)
    result = delivery_with(runtime, carrier).deliver_many(ids, stopping=stopping)
    assert carrier.requests == [ids]
    assert sorted(result.handed_back) == sorted(ids)
    assert states(runtime, ids) == {i: ("queued", 0) for i in ids}


def test_an_answer_that_is_neither_taken_nor_refused_is_an_error_of_that_message(
    runtime, client, make_stream
):
    """An adapter answering None for one message broke its contract. The message must not
    read as "not sent, its validity passed" (expired): it is retried, the others go."""

    def none_for_the_second(messages):  # type: ignore[no-untyped-def]
        answers = SandboxProvider.send_batch(carrier, messages)
        answers[1] = None
        return answers

    ids = send(client, make_stream(), 3)
    carrier = carrier_taking(runtime, 100, answer=none_for_the_second)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == []
    found = states(runtime, ids)
    assert [found[i] for i in ids] == [("delivered", 1), ("queued", 1), ("delivered", 1)]
    assert errors(runtime, ids)[ids[1]] == "provider_error"


def test_invariant_1_an_interrupt_in_a_request_gives_back_the_claims_of_requests_never_made(
    runtime, client, make_stream
):
    """The worker's thread is interrupted (dramatiq's time limit or shutdown raises in it)
    while the second of three requests is out. The messages of the third, never offered,
    go back to the queue at once; those of the first two, which the carrier may have
    taken, are left to the claim lease."""
    made = 0

    def interrupted_on_the_second(messages):  # type: ignore[no-untyped-def]
        nonlocal made
        made += 1
        if made == 2:
            raise KeyboardInterrupt
        return SandboxProvider.send_batch(carrier, messages)

    ids = send(client, make_stream(), 10)
    carrier = carrier_taking(runtime, 4, answer=interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        delivery_with(runtime, carrier).deliver_many(ids)
    assert carrier.requests == [ids[0:4], ids[4:8]]
    found = states(runtime, ids)
    assert [found[i] for i in ids[0:8]] == [("sending", 1)] * 8
    assert [found[i] for i in ids[8:10]] == [("queued", 0)] * 2
