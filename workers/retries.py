"""What follows a provider's refusal (``ProviderError``): a permanent error fails the
message at once; a transient one is retried with exponential back-off and jitter (at least
the provider's ``Retry-After``, jittered too) until ``max_send_attempts``, and then fails as a dead
letter, as does a send whose outcome is unknown (it can be replayed once checked) and one
refused for our set-up rather than for itself (credentials: it can be replayed once they are
mended). A retry that could only come after the message's validity expires it now
instead."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from core import metrics
from core.message_states import transition
from core.runtime import Runtime
from schemas.enums import MessageStatus
from workers.claims import RETRY_HOLD
from workers.jobs import Job
from workers.outcomes import Outcomes, hold
from workers.providers.base import ProviderError


class Retries:
    """The retry policy of the runtime's settings (``max_send_attempts``, back-off)."""

    def __init__(
        self, runtime: Runtime, outcomes: Outcomes, give_back: Callable[[Job, int], None]
    ) -> None:
        """``give_back``: told that a claim of a message ended without reaching the
        carrier, it decides whether the message leaves its stream's caps
        (``workers.gates.Gates.give_back``)."""
        self.runtime = runtime
        self.outcomes = outcomes
        self._give_back = give_back

    def after_error(
        self, job: Job, provider: str, attempt: int, error: ProviderError, log_: Any
    ) -> None:
        """Settle attempt ``attempt`` of the claimed ``job``, which ``provider`` refused
        with ``error``: fail it, expire it, or put it back as ``queued`` and enqueue its
        retry for when its back-off ends. Each only while the message is still on that
        attempt; another worker's claim since decides instead. ``attempt`` numbers the
        claim; the budget and the back-off count the attempts of the current round (since
        the message's last replay)."""
        settings = self.runtime.settings
        metrics.PROVIDER_ERRORS.labels(provider, error_kind(error)).inc()
        used = attempt - job.attempts_base
        if not error.transient or used >= settings.max_send_attempts:
            failed = self.outcomes.fail(
                job,
                error.code,
                error.message,
                log_,
                from_status=MessageStatus.sending,
                dead_letter=dead_letter_reason(error),
                claim=attempt,
            )
            # Refused for good: this claim's call did not reach the carrier. A passing
            # error may be a timeout whose request it took; an unknown outcome says so.
            if failed and not error.transient and not error.outcome_unknown:
                self._give_back(job, attempt)
            return
        delay = retry_delay_seconds(
            used,
            settings.retry_backoff_seconds,
            settings.retry_backoff_max_seconds,
            error.retry_after,
        )
        now = self.runtime.clock()
        if job.expires_at is not None and now + timedelta(seconds=delay) >= job.expires_at:
            # The retry would come too late: the message expires now, as one that a limit
            # or quiet hours would hold past its validity does, rather than waiting as
            # queued for a send that can no longer happen.
            why = (
                f"attempt {attempt} failed ({error.code}: {error.message}); "
                f"a retry in {delay:.1f}s would come after it expires"
            )
            expired = self.outcomes.end(
                job,
                MessageStatus.expired,
                code="expired",
                reason=why,
                allowed_from=(MessageStatus.sending,),
                detail=f"attempt {attempt} failed ({error.code}); no time left to retry",
                claim=attempt,
            )
            if expired:
                log_.info("message_expired", why=why)
            return
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                job.message_id,
                to=MessageStatus.queued,
                allowed_from=[MessageStatus.sending],
                at=now,
                detail=f"attempt {attempt} failed ({error.code}); retry in {delay:.1f}s",
                values={"error_code": error.code, "error_message": error.message},
                claim=attempt,
            )
            if moved is None:  # another worker claimed it since: its outcome, not ours
                log_.warning("failed_but_claim_lost", error_code=error.code)
                return
            hold(
                session,
                job.message_id,
                now,
                until=now + timedelta(seconds=delay),
                reason=RETRY_HOLD,
            )
            session.commit()
        log_.info(
            "message_retry_scheduled",
            error_code=error.code,
            attempt=attempt,
            delay_s=round(delay, 2),
        )
        self.outcomes.enqueue_held(job, timedelta(seconds=delay), RETRY_HOLD, log_)


def error_kind(error: ProviderError) -> str:
    """The ``kind`` of ``streams_provider_errors_total`` that ``error`` counts in."""
    if error.outcome_unknown:
        return "unknown"
    if error.configuration:
        return "configuration"
    return "transient" if error.transient else "permanent"


def dead_letter_reason(error: ProviderError) -> str | None:
    """Why a message failing with ``error`` is kept as a dead letter; None for a refusal of
    the message itself, which a replay would only repeat."""
    if error.transient:
        return "retries_exhausted"
    if error.outcome_unknown:
        return "outcome_unknown"
    return "configuration" if error.configuration else None


#: Messages a carrier refused together with one ``Retry-After`` come back spread over this
#: share of it beyond it.
RETRY_AFTER_SPREAD = 0.25


def retry_delay_seconds(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """The wait before retrying ``attempt``: the back-off, and never less than the
    carrier's ``Retry-After``. A carrier throttling a burst answers each of its messages
    with the same ``Retry-After``; had they all waited exactly that, they would come back
    in the same instant and meet the same refusal, so each waits up to a quarter more."""
    delay = backoff_seconds(attempt, base, cap)
    if retry_after is None:
        return delay
    return max(delay, retry_after + random.uniform(0, retry_after * RETRY_AFTER_SPREAD))


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of
    min(cap, base × 2^(attempt-1)), so retries spread out but never come back at once."""
    # The exponent is bounded first: 2 ** 1100 is an int no float can hold, and any
    # exponent past 64 is past every cap anyway.
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
