"""How claimed messages are split into provider requests, and how a request's outcome
becomes each message's (``workers.provider_requests``): pure parts."""

from __future__ import annotations

from collections.abc import Sequence

from workers.provider_calls import CallOutcome
from workers.provider_requests import checked, each_answer, each_ones, requests_for
from workers.providers.base import Accepted, OutboundMessage, ProviderError


class OneAtATime:
    name, idempotent, max_per_second = "one", True, None

    def send(self, message: OutboundMessage) -> Accepted:
        raise AssertionError("not called here")


class Bulk(OneAtATime):
    name = "bulk"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        raise AssertionError("not called here")


def test_messages_to_a_bulk_provider_share_requests_up_to_its_batch_size_in_order():
    bulk, single = Bulk(max_batch=2), OneAtATime()
    providers = [bulk, single, bulk, single, bulk]
    assert requests_for(providers) == [[0, 2], [1], [3], [4]]


def test_a_provider_without_batches_or_with_a_batch_of_one_gets_a_request_per_message():
    assert requests_for([OneAtATime()] * 3) == [[0], [1], [2]]
    assert requests_for([Bulk(max_batch=1)] * 3) == [[0], [1], [2]]


def test_two_bulk_providers_never_share_a_request():
    first, second = Bulk(max_batch=10), Bulk(max_batch=10)
    assert requests_for([first, second, first, second]) == [[0, 2], [1, 3]]


def test_a_permanent_refusal_of_several_is_a_passing_error_for_each():
    refused = ProviderError("bad_request", "HTTP 400", transient=False, retry_after=2.0)
    each = each_ones(refused, 3)
    assert each.transient and each.code == "bad_request" and each.retry_after == 2.0
    assert "a request of 3 messages was refused; each is tried again alone" in each.message


def test_a_refusal_of_one_or_a_passing_one_is_kept_as_it_is():
    refused = ProviderError("bad_request", "HTTP 400", transient=False)
    late = ProviderError("provider_timeout", "timeout", transient=True)
    unknown = ProviderError("lost", "no answer", transient=False, outcome_unknown=True)
    assert each_ones(refused, 1) is refused
    assert each_ones(late, 5) is late
    assert each_ones(unknown, 5) is unknown


def test_an_answer_outside_the_contract_is_an_error():
    taken = Accepted(provider_message_id="p1")
    refused = ProviderError("x", "y", transient=False)
    assert checked(taken) is taken and checked(refused) is refused
    assert isinstance(checked(None), TypeError)
    assert "answered NoneType" in str(checked(None))
    assert isinstance(checked("p1"), TypeError)


def test_a_request_not_made_or_broken_off_is_the_outcome_of_each_of_its_messages():
    skipped = CallOutcome(skipped=True)
    assert each_answer(skipped, 3) == [CallOutcome(skipped=True)] * 3
    broke = RuntimeError("interrupted")
    assert each_answer(CallOutcome(error=broke), 2) == [CallOutcome(error=broke)] * 2


def test_each_message_of_a_request_gets_its_own_answer():
    taken = Accepted(provider_message_id="p1")
    refused = ProviderError("x", "y", transient=False)
    outcome = CallOutcome(accepted=[taken, refused, None])
    assert each_answer(outcome, 3) == [
        CallOutcome(accepted=taken),
        CallOutcome(error=refused),
        CallOutcome(),  # not sent: its validity passed
    ]
