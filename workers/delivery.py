"""The send pipeline for one message, step by step:

1. **load**: skip what is no longer waiting; fail messages of deleted streams; park those
   of paused streams (the relay brings them back when the stream is enabled).
2. **expiry**: past ``expires_at`` the message is ``expired``, never sent late.
3. **quiet hours**: marketing waits, in the database, for the recipient's window.
4. **admission**: the stream's and the provider's rate limits and caps, fleet-wide
   (``workers.admission``). A throttled message waits briefly in its thread or is parked
   until its turn; it is never failed for it and spends no retry (invariant 5).
5. **claim**: ``queued → sending`` with a conditional update, so a redelivered message is
   never sent twice (invariant 2). A claim older than the lease belonged to a dead worker
   and may be taken again; the provider recognises the repeated reference.
6. **send**: the provider call. Transient errors are retried with exponential backoff and
   jitter up to ``max_send_attempts``, then the message fails and becomes a dead letter;
   permanent errors fail at once.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from core import metrics
from core.activity import ActivityTouch
from core.clock import as_utc
from core.dead_letters import record_dead_letter
from core.message_states import record_changes, transition
from core.quiet_hours import SendingWindow, next_send_time, zones_for_number
from core.runtime import Runtime
from core.sealed_bodies import text_to_send
from schemas.enums import MessageStatus, StreamStatus, StreamType
from schemas.events import StatusChange
from schemas.tables import Message, Stream
from workers.admission import Admission, Limits, Request
from workers.opt_out import reject_if_opted_out
from workers.providers.base import Accepted, OutboundMessage, Provider, ProviderError
from workers.providers.registry import ProviderRegistry
from workers.queueing import enqueue_delivery, enqueue_receipt

log = structlog.get_logger(__name__)

_PAUSED = (StreamStatus.disabled.value, StreamStatus.restricted.value)
_WAITING = (MessageStatus.queued,)
_NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Job:
    """What the pipeline knows about one waiting message."""

    message_id: uuid.UUID
    stream_id: uuid.UUID
    account_id: uuid.UUID
    stream_type: StreamType
    sender: str | None
    recipient: str
    body: str
    segments: int
    encoding: str
    attempts: int
    expires_at: datetime | None
    demo: bool
    settings: dict[str, Any]
    #: WhatsApp template or media (``messages.content``); None for text.
    content: dict[str, Any] | None = None

    def outbound(self) -> OutboundMessage:
        return OutboundMessage(
            reference=str(self.message_id),
            sender=self.sender,
            recipient=self.recipient,
            body=self.body,
            segments=self.segments,
            encoding=self.encoding,
            stream_id=str(self.stream_id),
            content=self.content,
        )


class Delivery:
    def __init__(
        self,
        runtime: Runtime,
        providers: ProviderRegistry,
        admission: Admission,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runtime = runtime
        self.providers = providers
        self.admission = admission
        self._sleep = sleep
        self._touch = ActivityTouch()

    # ------------------------------------------------------------------ the pipeline

    def deliver(self, message_id: str) -> None:
        """Take one message as far as it can go now. Safe to call any number of times."""
        started = time.perf_counter()
        key = uuid.UUID(message_id)
        log_ = log.bind(message_id=message_id)
        with self.runtime.session_factory() as session:
            job = self._load(session, key, log_)
            session.commit()
        if job is None:
            return
        log_ = log_.bind(stream_id=str(job.stream_id))
        try:
            provider = self.providers.for_stream(demo=job.demo, stream_type=job.stream_type.value)
        except ProviderError as error:
            self._fail(job, error.code, error.message, log_)
            return
        if not self._passes_gates(job, provider, log_):
            return
        attempt = self._claim(job)
        if attempt is None:
            log_.debug("delivery_already_claimed")
            return
        try:
            with metrics.PROVIDER_CALL.labels(provider.name).time():
                accepted = provider.send(job.outbound())
        except ProviderError as error:
            self._provider_failed(job, provider.name, attempt, error, log_)
        except Exception as exc:
            # An adapter broke its contract (it raises only ProviderError). Left to escape,
            # the message would sit in `sending` until the claim lease and then loop through
            # reclaims with no bound on attempts; as a passing error it is retried within
            # policy and then fails with a reason.
            log_.error("provider_adapter_error", provider=provider.name, error=type(exc).__name__)
            unexpected = ProviderError(
                "provider_error",
                f"The {provider.name} provider failed unexpectedly ({type(exc).__name__}).",
                transient=True,
            )
            self._provider_failed(job, provider.name, attempt, unexpected, log_)
        else:
            self._sent(job, provider.name, accepted, log_)
        finally:
            metrics.WORKER_PROCESSING.labels(job.stream_type.value).observe(
                time.perf_counter() - started
            )

    def _load(self, session: Session, key: uuid.UUID, log_: Any) -> Job | None:
        row = session.execute(
            select(Message, Stream.status, Stream.deleted_at, Stream.demo, Stream.settings)
            .join(Stream, Stream.id == Message.stream_id)
            .where(Message.id == key)
        ).first()
        if row is None:
            log_.warning("delivery_unknown_message")
            return None
        message, stream_status, deleted_at, demo, settings = row
        now = self.runtime.clock()
        if not self._waiting(message, now):
            log_.debug("delivery_skipped", status=message.status)
            return None
        if deleted_at is not None:
            transition(
                session,
                key,
                to=MessageStatus.failed,
                allowed_from=_WAITING,
                at=now,
                detail="stream deleted",
                values={
                    "error_code": "stream_deleted",
                    "error_message": "The stream was deleted before sending.",
                },
            )
            return None
        if stream_status in _PAUSED:
            self._hold(session, key, now, until=None, reason="stream_paused")
            log_.info("delivery_parked", stream_status=stream_status)
            return None
        if message.status == MessageStatus.queued and reject_if_opted_out(session, message, now):
            return None
        return Job(
            message_id=message.id,
            stream_id=message.stream_id,
            account_id=message.account_id,
            stream_type=StreamType(message.stream_type),
            sender=message.sender,
            recipient=message.recipient,
            body=text_to_send(message, self.runtime.secret_box),
            segments=message.segments,
            encoding=message.encoding,
            attempts=message.attempts,
            expires_at=as_utc(message.expires_at) if message.expires_at else None,
            demo=demo,
            settings=dict(settings or {}),
            content=message.content,
        )

    def _waiting(self, message: Message, now: datetime) -> bool:
        if message.status == MessageStatus.queued:
            return True
        lease = timedelta(seconds=self.runtime.settings.claim_lease_seconds)
        return (
            message.status == MessageStatus.sending
            and message.claimed_at is not None
            and as_utc(message.claimed_at) < now - lease
        )

    def _passes_gates(self, job: Job, provider: Provider, log_: Any) -> bool:
        """Expiry, quiet hours and admission. False when the message was held, expired or
        rejected instead."""
        now = self.runtime.clock()
        if job.expires_at is not None and now >= job.expires_at:
            self._expire(job, "validity passed before it could be sent", log_)
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
                return self._wait_until(job, opens, "quiet_hours", log_)
        return self._admit(job, provider, log_)

    def _admit(self, job: Job, provider: Provider, log_: Any) -> bool:
        settings = self.runtime.settings
        request = Request(
            stream_id=str(job.stream_id),
            provider=provider.name,
            recipient=job.recipient,
            message_id=str(job.message_id),
            cost=job.segments,
            limits=Limits(
                per_second=job.settings.get("max_per_second"),
                provider_per_second=getattr(provider, "max_per_second", None),
                per_day=job.settings.get("max_per_day"),
                per_recipient_per_hour=job.settings.get("max_per_recipient_per_hour"),
            ),
            day=self.runtime.clock().date(),
        )
        if request.limits == _NO_LIMITS:
            return True  # nothing to count: spare the Redis round trip on every message
        waited = 0.0
        budget = settings.throttle_inline_wait_seconds
        while True:
            ticket = self.admission.admit(
                dataclasses.replace(request, inline_budget=max(budget - waited, 0.0))
            )
            if ticket.verdict == "admit":
                if waited:
                    metrics.RATE_LIMIT_DELAY.labels(job.stream_type.value).observe(waited)
                return True
            if ticket.verdict == "reject":
                self._reject(job, ticket.reason or "limit", log_)
                return False
            metrics.RATE_LIMIT_DELAYS.labels(job.stream_type.value).inc()
            if waited + ticket.wait_seconds > settings.throttle_inline_wait_seconds:
                metrics.RATE_LIMIT_DELAY.labels(job.stream_type.value).observe(
                    waited + ticket.come_back_after
                )
                back = self.runtime.clock() + timedelta(seconds=ticket.come_back_after)
                return self._wait_until(job, back, "rate_limited", log_)
            # A little jitter, so threads waiting for the same turn do not all ask at once.
            pause = ticket.wait_seconds + random.uniform(0, 0.002)
            self._sleep(pause)
            waited += pause

    def _claim(self, job: Job) -> int | None:
        """``queued → sending`` (or a stale ``sending``); returns the attempt number."""
        now = self.runtime.clock()
        cutoff = now - timedelta(seconds=self.runtime.settings.claim_lease_seconds)
        with self.runtime.session_factory() as session:
            attempts = session.execute(
                update(Message)
                .where(
                    Message.id == job.message_id,
                    or_(
                        Message.status == MessageStatus.queued.value,
                        and_(
                            Message.status == MessageStatus.sending.value,
                            Message.claimed_at < cutoff,
                        ),
                    ),
                )
                .values(
                    status=MessageStatus.sending.value,
                    claimed_at=now,
                    updated_at=now,
                    attempts=Message.attempts + 1,
                    not_before=None,
                    hold_reason=None,
                )
                .returning(Message.attempts)
                .execution_options(synchronize_session=False)
            ).scalar()
            if attempts is None:
                return None
            record_changes(session, [self._change(job, MessageStatus.sending, now)])
            session.commit()
        return attempts

    # ------------------------------------------------------------------ outcomes

    def _sent(self, job: Job, provider: str, accepted: Accepted, log_: Any) -> None:
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                job.message_id,
                to=MessageStatus.sent,
                allowed_from=[MessageStatus.sending],
                at=now,
                values={"provider": provider, "provider_message_id": accepted.provider_message_id},
            )
            if moved and self._touch.due(job.stream_id):
                session.execute(
                    update(Stream).where(Stream.id == job.stream_id).values(last_activity_at=now)
                )
            session.commit()
        if not moved:
            log_.warning("sent_but_claim_lost")
            return
        metrics.SEGMENTS_SENT.labels(job.stream_type.value).inc(job.segments)
        log_.info("message_sent", provider=provider, segments=job.segments)
        if accepted.receipt is not None:
            try:
                enqueue_receipt(
                    self.runtime.broker,
                    job.stream_type.queue_name,
                    str(job.message_id),
                    accepted.receipt.status,
                    delay_ms=int(accepted.receipt.after_seconds * 1000),
                )
            except Exception as exc:
                log_.warning("receipt_enqueue_failed", error=type(exc).__name__)

    def _provider_failed(
        self, job: Job, provider: str, attempt: int, error: ProviderError, log_: Any
    ) -> None:
        settings = self.runtime.settings
        metrics.PROVIDER_ERRORS.labels(
            provider, "transient" if error.transient else "permanent"
        ).inc()
        if not error.transient:
            self._fail(job, error.code, error.message, log_, from_status=MessageStatus.sending)
            return
        if attempt >= settings.max_send_attempts:
            self._fail(
                job,
                error.code,
                error.message,
                log_,
                from_status=MessageStatus.sending,
                dead_letter="retries_exhausted",
            )
            return
        delay = backoff_seconds(
            attempt, settings.retry_backoff_seconds, settings.retry_backoff_max_seconds
        )
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            transition(
                session,
                job.message_id,
                to=MessageStatus.queued,
                allowed_from=[MessageStatus.sending],
                at=now,
                detail=f"attempt {attempt} failed ({error.code}); retry in {delay:.1f}s",
                values={"error_code": error.code, "error_message": error.message},
            )
            self._hold(
                session, job.message_id, now, until=now + timedelta(seconds=delay), reason="retry"
            )
            session.commit()
        log_.info(
            "message_retry_scheduled",
            error_code=error.code,
            attempt=attempt,
            delay_s=round(delay, 2),
        )
        self._enqueue_retry(job, delay, log_)

    def _enqueue_retry(self, job: Job, delay: float, log_: Any) -> None:
        """Put the retry on the broker with its back-off delay and mark it enqueued, so it
        does not wait for a relay sweep. If the broker is down, the message stays held and
        the relay releases it when due."""
        try:
            enqueue_delivery(
                self.runtime.broker,
                job.stream_type.queue_name,
                str(job.message_id),
                delay_ms=int(delay * 1000),
            )
        except Exception as exc:
            log_.warning("retry_enqueue_failed_left_to_relay", error=type(exc).__name__)
            return
        with self.runtime.session_factory() as session:
            session.execute(
                update(Message)
                .where(
                    Message.id == job.message_id,
                    Message.status == MessageStatus.queued.value,
                    Message.hold_reason == "retry",
                    Message.enqueued_at.is_(None),
                )
                .values(enqueued_at=self.runtime.clock())
                .execution_options(synchronize_session=False)
            )
            session.commit()

    def _end(
        self,
        job: Job,
        status: MessageStatus,
        *,
        code: str,
        reason: str,
        allowed_from: tuple[MessageStatus, ...] = _WAITING,
        detail: str | None = None,
        dead_letter: str | None = None,
    ) -> None:
        """Move the message to a final ``status`` with its error, in one transaction (and
        keep it as a dead letter when asked)."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                job.message_id,
                to=status,
                allowed_from=allowed_from,
                at=now,
                detail=detail or code,
                values={"error_code": code, "error_message": reason},
            )
            if moved and dead_letter:
                record_dead_letter(
                    session, job.message_id, reason=dead_letter, error_message=reason, at=now
                )
            session.commit()

    def _fail(
        self,
        job: Job,
        code: str,
        reason: str,
        log_: Any,
        *,
        from_status: MessageStatus = MessageStatus.queued,
        dead_letter: str | None = None,
    ) -> None:
        self._end(
            job,
            MessageStatus.failed,
            code=code,
            reason=reason,
            allowed_from=(from_status,),
            dead_letter=dead_letter,
        )
        log_.warning("message_failed", error_code=code, dead_letter=bool(dead_letter))

    def _reject(self, job: Job, reason: str, log_: Any) -> None:
        self._end(job, MessageStatus.rejected, code=reason, reason=_REJECTIONS.get(reason, reason))
        metrics.MESSAGES_REJECTED.labels(job.stream_type.value, reason).inc()
        log_.info("message_rejected", reason=reason)

    def _expire(self, job: Job, why: str, log_: Any) -> None:
        self._end(job, MessageStatus.expired, code="expired", reason=why, detail=why)
        log_.info("message_expired", why=why)

    def _wait_until(self, job: Job, until: datetime, reason: str, log_: Any) -> bool:
        """Park the message until ``until`` (or expire it if that is too late). False."""
        if job.expires_at is not None and until >= job.expires_at:
            self._expire(job, f"cannot be sent before it expires ({reason})", log_)
            return False
        with self.runtime.session_factory() as session:
            self._hold(session, job.message_id, self.runtime.clock(), until=until, reason=reason)
            session.commit()
        metrics.MESSAGES_HELD.labels(job.stream_type.value, reason).inc()
        log_.debug("message_held", reason=reason, until=until.isoformat())
        return False

    @staticmethod
    def _hold(
        session: Session, key: uuid.UUID, now: datetime, *, until: datetime | None, reason: str
    ) -> None:
        """Take a queued message off the broker: the relay enqueues it again at ``until``
        (or, with no time, when its stream accepts sends again)."""
        session.execute(
            update(Message)
            .where(Message.id == key, Message.status == MessageStatus.queued.value)
            .values(enqueued_at=None, not_before=until, hold_reason=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )

    def _change(self, job: Job, status: MessageStatus, at: datetime) -> StatusChange:
        return StatusChange(
            message_id=job.message_id,
            stream_id=job.stream_id,
            account_id=job.account_id,
            stream_type=job.stream_type.value,
            status=status,
            at=at,
            segments=job.segments,
        )

    # ------------------------------------------------------------------ receipts

    def apply_receipt(self, message_id: str, status: str) -> None:
        """Record a delivery receipt. Only a ``sent`` message moves; a late or repeated
        receipt changes nothing."""
        outcome = MessageStatus(status)
        if outcome not in (MessageStatus.delivered, MessageStatus.undelivered):
            raise ValueError(f"not a receipt status: {status}")
        failure = {
            "error_code": "undelivered",
            "error_message": "The carrier could not deliver it.",
        }
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                uuid.UUID(message_id),
                to=outcome,
                allowed_from=[MessageStatus.sent],
                at=self.runtime.clock(),
                values=failure if outcome is MessageStatus.undelivered else None,
            )
            session.commit()
        if moved:
            log.info("message_receipt", message_id=message_id, status=outcome.value)


_REJECTIONS = {
    "max_per_day": "The stream's daily message limit is reached.",
    "max_per_recipient_per_hour": "The stream's hourly limit for this recipient is reached.",
}


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of
    min(cap, base × 2^(attempt-1)), so retries spread out but never come back at once."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
