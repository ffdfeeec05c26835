"""The sandbox carrier's own promises, with its ledger in real Redis and in memory: each
reference is taken once (a repeat gets the first answer), a request of several messages
answers each one by itself, and the ledger counts what the carrier took."""

from __future__ import annotations

import uuid

import pytest

from core.settings import SandboxSettings
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.sandbox import SandboxProvider


def outbound(recipient: str = "+972524265292") -> OutboundMessage:
    return OutboundMessage(
        reference=str(uuid.uuid4()),
        sender=None,
        recipient=recipient,
        body="Your parcel is on its way",
        segments=1,
        encoding="GSM-7",
    )


@pytest.fixture(params=["redis", "memory"])
def carrier(request, runtime) -> SandboxProvider:  # type: ignore[no-untyped-def]
    settings = SandboxSettings(_env_file=None, latency_ms=0, receipt_delay_seconds=0, max_batch=5)
    return SandboxProvider(settings, runtime.redis if request.param == "redis" else None)


def test_a_request_of_several_messages_answers_each_one_in_order(carrier):
    messages = [
        outbound(),
        outbound("+972524000001"),  # refused for good
        outbound("+972524000002"),  # a timeout
        outbound("+972524000003"),  # throttled
        outbound("+972524000004"),  # taken, not delivered
    ]
    answers = carrier.send_batch(messages)
    assert isinstance(answers[0], Accepted) and answers[0].receipt is not None
    assert answers[0].receipt.status == "delivered"
    refused, late, throttled = answers[1:4]
    assert isinstance(refused, ProviderError) and not refused.transient
    assert isinstance(late, ProviderError) and late.transient
    assert isinstance(throttled, ProviderError) and throttled.retry_after == 1.0
    assert isinstance(answers[4], Accepted) and answers[4].receipt is not None
    assert answers[4].receipt.status == "undelivered"
    assert carrier.submissions() == 2  # what it refused never reached it


def test_a_repeated_reference_gets_its_first_answer_alone_or_in_a_request(carrier):
    first, second = outbound(), outbound()
    taken = carrier.send(first)
    again = carrier.send_batch([second, first, second])
    assert isinstance(again[0], Accepted) and isinstance(again[2], Accepted)
    assert again[1] == taken  # the same provider id, and the receipt again
    assert again[2].provider_message_id == again[0].provider_message_id
    assert carrier.submissions() == 2
    assert carrier.send(second).provider_message_id == again[0].provider_message_id
    assert carrier.submissions() == 2


def test_a_request_over_its_largest_batch_is_refused_before_anything_is_taken(carrier):
    with pytest.raises(ValueError, match="6 messages in one request; the most is 5"):
        carrier.send_batch([outbound() for _ in range(6)])
    assert carrier.submissions() == 0


def test_a_refusal_from_send_is_raised(carrier):
    with pytest.raises(ProviderError) as refused:
        carrier.send(outbound("+972524000001"))
    assert refused.value.code == "sandbox_refused"
