"""The gates a loaded message passes before it is claimed, in order: its **expiry** (past
``expires_at`` it is ``expired``, never sent late), **quiet hours** (marketing waits, in
the database, for the recipient's window) and **admission** (the stream's and the
provider's rate limits and caps, fleet-wide: ``workers.admission``). A throttled message
waits briefly in its thread or is parked until its turn; it is never failed for it and
spends no retry (invariant 5). A message over a cap is ``rejected``; one counted in a cap
that is known never to have reached the carrier is given back (``Gates.give_back``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
import structlog

from core import metrics
from core.quiet_hours import SendingWindow, next_send_time, zones_for_number
from core.runtime import Runtime
from schemas.enums import StreamType
from schemas.tables import QUIET_HOURS_HOLD
from workers.admission import Admission, Limits, Release, Request
from workers.claims import LIMIT_SETTINGS, RATE_HOLD
from workers.jobs import Job
from workers.outcomes import VALIDITY_PASSED, Outcomes
from workers.providers.base import Provider, ProviderError
from workers.providers.registry import ProviderRegistry

_NO_LIMITS = Limits()

log = structlog.get_logger(__name__)


def rate_cost(job: Job) -> int:
    """What ``job`` takes of a rate: its segments, which SMS carriers count; one for a
    WhatsApp message, which has no segments (Meta's throughput counts messages a second per
    business phone number, and so does a WhatsApp stream's ``max_per_second``)."""
    return 1 if job.stream_type is StreamType.whatsapp else job.segments


class Gates:
    """The gates, with ``admission`` for the limits; ``sleep`` is how a thread waits for its
    turn inline."""

    def __init__(
        self,
        runtime: Runtime,
        admission: Admission,
        outcomes: Outcomes,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runtime = runtime
        self.admission = admission
        self.outcomes = outcomes
        self._sleep = sleep

    def passes(self, job: Job, provider: Provider, log_: Any) -> bool:
        """Expiry, quiet hours and admission. False when the message was held, expired or
        rejected instead (in a transaction of its own)."""
        now = self.runtime.clock()
        if job.expires_at is not None and now >= job.expires_at:
            self.outcomes.expire(job, VALIDITY_PASSED, log_)
            return False
        window = job.settings.get("quiet_hours")
        if job.stream_type is StreamType.marketing and window:
            opens = next_send_time(
                now,
                SendingWindow.parse(window["start"], window["end"]),
                (window["timezone"],)
                if window.get("timezone")
                else zones_for_number(job.recipient),
            )
            if opens > now:
                return self.outcomes.wait_until(job, opens, QUIET_HOURS_HOLD, log_)
        return self._admit(job, provider, log_)

    @staticmethod
    def limits(job: Job, provider: Provider) -> Limits:
        """The limits ``job`` is admitted under: its stream's settings and the provider's
        rate."""
        return dataclasses.replace(
            Gates.stream_limits(job), provider_per_second=provider.max_per_second
        )

    @staticmethod
    def stream_limits(job: Job) -> Limits:
        """The limits ``job``'s stream sets (``LIMIT_SETTINGS``), with no provider rate."""
        return Limits(**{field: job.settings.get(name) for name, field in LIMIT_SETTINGS.items()})

    def request(self, job: Job, provider: Provider) -> Request:
        """What admission is asked for ``job``, sent through ``provider``."""
        return Request(
            stream_id=str(job.stream_id),
            provider=provider.rate_scope(job.stream_id),
            recipient=job.recipient,
            message_id=str(job.message_id),
            cost=rate_cost(job),
            limits=self.limits(job, provider),
            day=self.runtime.clock().date(),
            expires_at=job.expires_at,
            # Invariant 6: a code goes ahead of marketing's backlog on a shared carrier.
            priority=job.stream_type is StreamType.otp,
        )

    def give_back(self, job: Job, attempt: int) -> None:
        """Claim ``attempt`` of ``job`` ended without reaching the carrier (refused for
        good, or its call never made). If it was the message's first claim, nothing of it
        ever did, so it leaves its stream's caps: it does not use up the day's messages or
        stop the recipient's next one. A later claim keeps the place: an earlier one may
        have been a timeout the carrier took, or a claim taken back with its call made.
        Should Redis fail, it stays counted: a cap errs on the side of sending less."""
        if attempt != 1 or not self.stream_limits(job).counts:
            return
        today = self.runtime.clock().date()
        release = Release(
            stream_id=str(job.stream_id),
            recipient=job.recipient,
            message_id=str(job.message_id),
            days=(today - timedelta(days=1), today, today + timedelta(days=1)),
        )
        try:
            self.admission.release(release)
        except redis.RedisError as exc:
            log.warning(
                "cap_release_failed", message_id=str(job.message_id), error=type(exc).__name__
            )
            return
        log.info("cap_place_given_back", message_id=str(job.message_id))

    def _admit(self, job: Job, provider: Provider, log_: Any) -> bool:
        settings = self.runtime.settings
        request = self.request(job, provider)
        if request.limits == _NO_LIMITS:
            return True  # nothing to count: spare the Redis round trip on every message
        ticket = self.admission.admit(
            dataclasses.replace(request, inline_budget=settings.throttle_inline_wait_seconds)
        )
        if ticket.verdict == "reject":
            self.outcomes.reject(job, ticket.reason or "limit", log_)
            return False
        if ticket.verdict == "admit":
            if ticket.wait_seconds:
                # Its turn, paid for (``workers.admission``): sleep until it, then send.
                metrics.RATE_LIMIT_DELAYS.labels(job.stream_type.value, ticket.scope).inc()
                self._sleep(ticket.wait_seconds)
                metrics.RATE_LIMIT_DELAY.labels(job.stream_type.value, ticket.scope).observe(
                    ticket.wait_seconds
                )
            return True
        metrics.RATE_LIMIT_DELAYS.labels(job.stream_type.value, ticket.scope).inc()
        metrics.RATE_LIMIT_DELAY.labels(job.stream_type.value, ticket.scope).observe(
            ticket.come_back_after
        )
        back = self.runtime.clock() + timedelta(seconds=ticket.come_back_after)
        return self.outcomes.wait_until(job, back, RATE_HOLD, log_)


def gated_providers(providers: ProviderRegistry) -> frozenset[tuple[bool, str]]:
    """The (demo, stream type) pairs whose messages must go through the gates whatever
    their stream's settings: their provider has a rate of its own, or there is none."""
    gated = set()
    for demo in (True, False):
        for stream_type in StreamType:
            try:
                provider = providers.for_stream(demo=demo, stream_type=stream_type.value)
            except ProviderError:
                gated.add((demo, stream_type.value))
                continue
            if provider.max_per_second is not None:
                gated.add((demo, stream_type.value))
    return frozenset(gated)
