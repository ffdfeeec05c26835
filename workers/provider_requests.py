"""The requests that hand claimed messages to a provider, and each message's answer.

A request is one message, or several to a provider that takes batches (a carrier with a
bulk API: ``workers.providers.base.BatchProvider``), up to its ``max_batch``, all sent
from one carrier account (the provider's ``rate_scope``). Only idempotent providers are
handed batches (``workers.delivery`` sends the others one at a time): a request whose
answer is lost is then safe to make again.

Whatever a request comes to, each of its messages gets an answer of its own
(``Answer``): the carrier's answer for it, or the request's error. Two rules keep a
request of several from costing a message anything a request of its own would not:

- a permanent refusal of the whole request (a bulk API's 400 for one bad item) names
  none of its messages, so each is sent again at once in a request of its own, and that
  answer is its own (no attempt spent, no back-off); a refusal of our set-up
  (credentials: ``ProviderError.configuration``) is every message's answer as it is;
- a message whose validity passed before the request is left out of it, not sent late.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, cast

import structlog

from core import metrics
from workers.jobs import Job
from workers.provider_calls import CallOutcome
from workers.providers.base import (
    Accepted,
    BatchProvider,
    OutboundMessage,
    Provider,
    ProviderError,
    batch_limit,
)

log = structlog.get_logger(__name__)


class _NotSent:
    """The answer of a message left unsent when its request was split: the worker began
    stopping, or the batch's claims went stale, before its turn. Its claim goes back."""

    def __repr__(self) -> str:
        return "NOT_SENT"


NOT_SENT: Final = _NotSent()

#: What a request answered for one of its messages: taken; refused (``ProviderError``, or
#: another error: the adapter broke its contract); None: not sent, its validity passed
#: before the request; or ``NOT_SENT``.
Answer = Accepted | Exception | _NotSent | None


def requests_for(sends: Sequence[tuple[Provider, uuid.UUID]]) -> list[list[int]]:
    """The requests that send messages, each given as (its provider, its stream), as
    indices into ``sends``, in order: one per message, except that the messages to a
    provider that takes batches go together, up to its ``max_batch`` per request, when
    they go from the same carrier account (``rate_scope``)."""
    requests: list[list[int]] = []
    filling: dict[tuple[int, str], list[int]] = {}  # (provider, account): request filling
    for index, (provider, stream_id) in enumerate(sends):
        limit = batch_limit(provider)
        if limit == 1:
            requests.append([index])
            continue
        key = (id(provider), provider.rate_scope(stream_id))
        request = filling.get(key)
        if request is None or len(request) >= limit:
            request = filling[key] = []
            requests.append(request)
        request.append(index)
    return requests


def provider_request(
    jobs: Sequence[Job],
    provider: Provider,
    clock: Callable[[], datetime],
    go_on: Callable[[], bool],
) -> Callable[[], list[Answer]]:
    """The request that hands ``jobs`` to ``provider`` (one of them, or several when it
    takes batches), to make in any thread. It returns each job's ``Answer``, in order, and
    raises nothing but what stops a thread: one message's error is that message's alone.
    A job whose validity has passed by ``clock()`` is left out (its answer None); when all
    have, no request is made. When a request of several is refused for good, each message
    is sent alone while ``go_on()`` holds (``NOT_SENT`` once it does not).
    ``streams_provider_call_duration_seconds`` is observed once per message in each
    request, with that request's time."""

    def call() -> list[Answer]:
        now = clock()
        answers: list[Answer] = [None] * len(jobs)
        going: dict[int, OutboundMessage] = {}
        for index, job in enumerate(jobs):
            if job.expires_at is not None and now >= job.expires_at:
                continue
            try:
                going[index] = job.outbound()
            except Exception as error:
                answers[index] = error
        if going:
            taken = _send(provider, list(going.values()), go_on)
            for index, answer in zip(going, taken, strict=True):
                answers[index] = answer
        return answers

    return call


def _send(
    provider: Provider, outbound: list[OutboundMessage], go_on: Callable[[], bool]
) -> list[Answer]:
    """Each message's answer to a request for ``outbound``; a request of several refused
    for good is split into requests of one."""
    try:
        return _request(provider, outbound)
    except ProviderError as error:
        if len(outbound) == 1 or error.transient or error.outcome_unknown or error.configuration:
            return [error] * len(outbound)
        log.info(
            "batch_request_refused_sending_alone",
            provider=provider.name,
            messages=len(outbound),
            error_code=error.code,
        )
        return [_alone(provider, message) if go_on() else NOT_SENT for message in outbound]
    except Exception as error:
        return [error] * len(outbound)


def _alone(provider: Provider, message: OutboundMessage) -> Answer:
    try:
        return _request(provider, [message])[0]
    except Exception as error:
        return error


def _request(provider: Provider, outbound: list[OutboundMessage]) -> list[Answer]:
    """One request: each message's answer, in order. Raises what the provider raised for
    the request as a whole, and ``ValueError`` for the wrong number of answers."""
    began = time.perf_counter()
    try:
        if len(outbound) == 1:
            return [within_contract(provider.send(outbound[0]))]
        taken = cast(BatchProvider, provider).send_batch(outbound)
        if len(taken) != len(outbound):
            raise ValueError(f"{len(taken)} answers to a request of {len(outbound)}")
        return [within_contract(answer) for answer in taken]
    finally:
        took = time.perf_counter() - began
        timed = metrics.PROVIDER_CALL.labels(provider.name)
        for _ in outbound:
            timed.observe(took)


def within_contract(answer: object) -> Answer:
    """A provider's answer for one message, as the adapter contract allows: ``Accepted`` or
    an error. Anything else (None, say, which would read as "not sent") breaks the contract
    and is that message's error."""
    if isinstance(answer, Accepted | Exception):
        return answer
    return TypeError(f"a provider answered {type(answer).__name__} for a message")


def each_answer(call: CallOutcome[list[Answer]], size: int) -> list[CallOutcome[Accepted]]:
    """The outcome of a request of ``size`` messages (``workers.provider_calls``) as each
    message's: the request's own when it was not made (skipped) or broke off (an error no
    answer caught), else each message's answer (``NOT_SENT``: skipped; None: not sent, a
    call that chose not to go)."""
    if call.accepted is None:
        return [CallOutcome(error=call.error, skipped=call.skipped)] * size
    return [_outcome_of(answer) for answer in call.accepted]


def _outcome_of(answer: Answer) -> CallOutcome[Accepted]:
    if isinstance(answer, _NotSent):
        return CallOutcome(skipped=True)
    if isinstance(answer, Exception):
        return CallOutcome(error=answer)
    return CallOutcome(accepted=answer)
