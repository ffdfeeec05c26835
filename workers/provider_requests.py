"""The requests that hand claimed messages to a provider, and each message's answer.

A request is one message, or several to a provider that takes batches (a carrier with a
bulk API: ``workers.providers.base.BatchProvider``), up to its ``max_batch``. Only
idempotent providers are handed batches (``workers.delivery`` sends the others one at a
time): a request whose answer is lost is then safe to make again.

Whatever a request comes to, each of its messages gets an answer of its own
(``Answer``): the carrier's answer for it, or the request's error. Two rules make a
request of several no worse for a message than a request of its own:

- a permanent refusal of the whole request (a bulk API's 400) names none of its
  messages, so for each it is a passing error: each is tried again alone;
- a message whose validity passed before the request is left out of it, not sent late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import cast

from core import metrics
from workers.jobs import Job
from workers.provider_calls import Call, CallOutcome
from workers.providers.base import (
    Accepted,
    BatchProvider,
    OutboundMessage,
    Provider,
    ProviderError,
    batch_limit,
)

#: What a request answered for one of its messages: taken; refused (``ProviderError``, or
#: another error: the adapter broke its contract); or None: not sent, its validity passed
#: before the request.
Answer = Accepted | Exception | None


def requests_for(providers: Sequence[Provider]) -> list[list[int]]:
    """The requests that send messages to ``providers`` (one provider per message), as
    indices into it, in order: one per message, except that the messages to a provider
    that takes batches go together, up to its ``max_batch`` per request."""
    requests: list[list[int]] = []
    filling: dict[int, list[int]] = {}  # id(provider): its request still taking messages
    for index, provider in enumerate(providers):
        limit = batch_limit(provider)
        request = filling.get(id(provider))
        if request is None or len(request) >= limit:
            request = []
            requests.append(request)
            if limit > 1:
                filling[id(provider)] = request
        request.append(index)
    return requests


def provider_request(
    jobs: Sequence[Job], provider: Provider, clock: Callable[[], datetime]
) -> Call:
    """The request that hands ``jobs`` to ``provider`` (one of them, or several when it
    takes batches), to make in any thread. It returns each job's ``Answer``, in order, and
    raises nothing but what stops a thread: one message's error is that message's alone.
    A job whose validity has passed by ``clock()`` is left out (its answer None); when all
    have, no request is made. ``streams_provider_call_duration_seconds`` is observed once
    per message sent, each with the request's time."""

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
            taken = _send(provider, list(going.values()))
            for index, answer in zip(going, taken, strict=True):
                answers[index] = answer
        return answers

    return call


def _send(provider: Provider, outbound: list[OutboundMessage]) -> list[Answer]:
    """One request for ``outbound``: each message's answer, in order."""
    began = time.perf_counter()
    try:
        if len(outbound) == 1:
            taken: Sequence[object] = [provider.send(outbound[0])]
        else:
            taken = cast(BatchProvider, provider).send_batch(outbound)
            if len(taken) != len(outbound):
                raise ValueError(f"{len(taken)} answers to a request of {len(outbound)}")
    except ProviderError as error:
        taken = [each_ones(error, len(outbound))] * len(outbound)
    except Exception as error:
        taken = [error] * len(outbound)
    finally:
        took = time.perf_counter() - began
        timed = metrics.PROVIDER_CALL.labels(provider.name)
        for _ in outbound:
            timed.observe(took)
    return [checked(answer) for answer in taken]


def each_ones(error: ProviderError, size: int) -> ProviderError:
    """A request's refusal as the answer of each of its ``size`` messages: itself, except
    that a permanent refusal of a request of several becomes a passing error (it cannot
    be pinned on one of them; each is tried again alone, where the answer is its own)."""
    if size == 1 or error.transient or error.outcome_unknown:
        return error
    return ProviderError(
        error.code,
        f"{error.message} (a request of {size} messages was refused; each is tried again alone)",
        transient=True,
        retry_after=error.retry_after,
    )


def checked(answer: object) -> Answer:
    """A provider's answer for one message, as the adapter contract allows: ``Accepted`` or
    an error. Anything else (None, say, which would read as "not sent") breaks the contract
    and is that message's error."""
    if isinstance(answer, Accepted | Exception):
        return answer
    return TypeError(f"a provider answered {type(answer).__name__} for a message")


def each_answer(call: CallOutcome[list[Answer]], size: int) -> list[CallOutcome[Accepted]]:
    """The outcome of a request of ``size`` messages (``workers.provider_calls``) as each
    message's: the request's own when it was not made (skipped) or broke off (an error no
    answer caught), else each message's answer (None: not sent, a call that chose not to
    go)."""
    if call.accepted is None:
        return [CallOutcome(error=call.error, skipped=call.skipped)] * size
    return [
        CallOutcome(error=answer) if isinstance(answer, Exception) else CallOutcome(accepted=answer)
        for answer in call.accepted
    ]
