"""The contract every provider adapter keeps."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    #: Our message id. Adapters pass it to the carrier as the idempotency key / client
    #: reference, so a send repeated after a crash is recognised, not sent twice.
    reference: str
    sender: str | None
    recipient: str
    body: str
    segments: int
    encoding: str
    #: The stream it belongs to (WhatsApp credentials are per stream).
    stream_id: str | None = None
    #: WhatsApp: a template and its parameters, or media (``messages.content``); None = text.
    content: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery receipt the provider will report ``after_seconds`` from now."""

    status: Literal["delivered", "undelivered"]
    after_seconds: float


@dataclass(frozen=True, slots=True)
class Accepted:
    provider_message_id: str
    receipt: Receipt | None = None


class ProviderError(Exception):
    """The provider did not take the message, or we cannot tell whether it did.

    ``transient`` errors (timeouts, 5xx, throttling) may succeed later; others never will.
    ``outcome_unknown``: the request may have reached a provider that is not idempotent (it
    timed out while waiting for the answer, say), or a provider took it and answered without
    the message's id; offering it again could send it twice. Such an error is never
    transient: the message fails and becomes a dead letter, keeps its place in its stream's
    caps, and only a replay, the operator's decision, offers it again.
    ``configuration``: the carrier refused our set-up with it, not this message (credentials
    refused, a permission or account problem, no adapter for the provider). Every message
    would be refused alike until the set-up is mended, so the message fails as a dead
    letter that a replay sends once it is; it never reached the carrier.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        configuration: bool = False,
    ) -> None:
        if transient and outcome_unknown:
            raise ValueError("an error whose outcome is unknown is never retried on its own")
        if configuration and (transient or outcome_unknown):
            raise ValueError("a refusal of our set-up is a known, permanent answer")
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.configuration = configuration

    def with_message(self, message: str) -> ProviderError:
        """The same error in other words."""
        return ProviderError(
            self.code,
            message,
            transient=self.transient,
            retry_after=self.retry_after,
            outcome_unknown=self.outcome_unknown,
            configuration=self.configuration,
        )


class Provider(Protocol):
    name: str
    #: Whether the carrier takes a second submission of one reference as the first (an
    #: idempotency key). Where it does not, a message it took must never be offered again,
    #: so the worker records each send at once instead of with its batch.
    idempotent: bool
    #: The carrier's throughput, enforced across every worker by admission (None: it
    #: declares none): segments a second for SMS, messages for WhatsApp
    #: (``workers.gates.rate_cost``).
    max_per_second: float | None

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        """What ``max_per_second`` is counted over for a stream's messages: the provider as
        a whole, or the carrier account the stream sends from (a WhatsApp business phone
        number has a throughput of its own)."""
        ...

    def send(self, message: OutboundMessage) -> Accepted:
        """Hand one message to the carrier. Raises ``ProviderError``."""
        ...


class BatchProvider(Provider, Protocol):
    """A provider whose carrier takes several messages in one request, as carriers with a
    bulk API do. The worker hands it the messages of a batch job together (when it is
    ``idempotent``: a request whose answer is lost is then safe to make again)."""

    #: The most messages it takes in one request.
    max_batch: int

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        """Hand ``messages`` (at most ``max_batch``, all from one carrier account:
        ``rate_scope``) to the carrier in one request; each one's answer, in order. Raises
        ``ProviderError`` when the request as a whole failed: a passing error, or a refusal
        of our set-up (``configuration``), is then every message's answer; another permanent
        one names none of them, so each message is sent again in a request of its own."""
        ...


def batch_limit(provider: Provider) -> int:
    """How many messages ``provider`` takes in one request (1: it has no batch request)."""
    if not callable(getattr(provider, "send_batch", None)):
        return 1
    return max(1, int(getattr(provider, "max_batch", 1)))
