"""How claimed messages are split into provider requests, and how a request's outcome
becomes each message's (``workers.provider_requests``): pure parts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from workers.provider_calls import CallOutcome
from workers.provider_requests import NOT_SENT, each_answer, requests_for, within_contract
from workers.providers.base import Accepted, OutboundMessage, ProviderError

STREAM, OTHER_STREAM = uuid.uuid4(), uuid.uuid4()


class OneAtATime:
    name, idempotent, max_per_second = "one", True, None

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        return self.name

    def send(self, message: OutboundMessage) -> Accepted:
        raise AssertionError("not called here")


class Bulk(OneAtATime):
    name = "bulk"

    def __init__(self, max_batch: int, accounts: dict[uuid.UUID, str] | None = None) -> None:
        self.max_batch = max_batch
        self._accounts = accounts or {}

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        return self._accounts.get(stream_id, self.name)

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        raise AssertionError("not called here")


def sends(*providers):  # type: ignore[no-untyped-def]
    return [(provider, STREAM) for provider in providers]


def test_messages_to_a_bulk_provider_share_requests_up_to_its_batch_size_in_order():
    bulk, single = Bulk(max_batch=2), OneAtATime()
    assert requests_for(sends(bulk, single, bulk, single, bulk)) == [[0, 2], [1], [3], [4]]


def test_a_provider_without_batches_or_with_a_batch_of_one_gets_a_request_per_message():
    assert requests_for(sends(*[OneAtATime()] * 3)) == [[0], [1], [2]]
    assert requests_for(sends(*[Bulk(max_batch=1)] * 3)) == [[0], [1], [2]]


def test_two_bulk_providers_never_share_a_request():
    first, second = Bulk(max_batch=10), Bulk(max_batch=10)
    assert requests_for(sends(first, second, first, second)) == [[0, 2], [1, 3]]


def test_messages_from_two_carrier_accounts_never_share_a_request():
    """Streams sending from different accounts of one carrier (WhatsApp business numbers,
    say): a packed job can hold both, and a request is made with one account's rights."""
    bulk = Bulk(max_batch=10, accounts={STREAM: "bulk:a", OTHER_STREAM: "bulk:b"})
    streams = [STREAM, OTHER_STREAM, STREAM, OTHER_STREAM]
    assert requests_for([(bulk, stream) for stream in streams]) == [[0, 2], [1, 3]]


def test_an_answer_outside_the_contract_is_an_error():
    taken = Accepted(provider_message_id="p1")
    refused = ProviderError("x", "y", transient=False)
    assert within_contract(taken) is taken and within_contract(refused) is refused
    assert isinstance(within_contract(None), TypeError)
    assert "answered NoneType" in str(within_contract(None))
    assert isinstance(within_contract("p1"), TypeError)


def test_a_request_not_made_or_broken_off_is_the_outcome_of_each_of_its_messages():
    skipped = CallOutcome(skipped=True)
    assert each_answer(skipped, 3) == [CallOutcome(skipped=True)] * 3
    broke = RuntimeError("interrupted")
    assert each_answer(CallOutcome(error=broke), 2) == [CallOutcome(error=broke)] * 2


def test_each_message_of_a_request_gets_its_own_answer():
    taken = Accepted(provider_message_id="p1")
    refused = ProviderError("x", "y", transient=False)
    outcome = CallOutcome(accepted=[taken, refused, None, NOT_SENT])
    assert each_answer(outcome, 4) == [
        CallOutcome(accepted=taken),
        CallOutcome(error=refused),
        CallOutcome(),  # not sent: its validity passed
        CallOutcome(skipped=True),  # not sent: its claim goes back
    ]
