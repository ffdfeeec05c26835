"""The send pipeline for one message: claim, call the provider, record the outcome.

Every step is a conditional status change, so redelivery (normal with at-least-once queues)
never makes a second provider call for a message already claimed (invariant 2). A claim
older than ``claim_lease_seconds`` belongs to a worker that died: it may be taken again, and
the provider recognises the repeated reference.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from core import metrics
from core.activity import ActivityTouch
from core.message_states import record_changes, transition
from core.runtime import Runtime
from core.sealed_bodies import text_to_send
from schemas.enums import MessageStatus, StreamStatus
from schemas.events import StatusChange
from schemas.tables import Message, Stream
from workers.providers.base import Accepted, OutboundMessage, ProviderError
from workers.providers.registry import ProviderRegistry
from workers.queueing import enqueue_delivery, enqueue_receipt

log = structlog.get_logger(__name__)

_PAUSED = (StreamStatus.disabled.value, StreamStatus.restricted.value)


@dataclass(frozen=True, slots=True)
class Claim:
    message: OutboundMessage
    message_id: uuid.UUID
    stream_id: uuid.UUID
    stream_type: str
    demo: bool
    attempt: int


class Delivery:
    def __init__(self, runtime: Runtime, providers: ProviderRegistry) -> None:
        self.runtime = runtime
        self.providers = providers
        self._touch = ActivityTouch()

    # -------------------------------------------------------------- sending

    def deliver(self, message_id: str) -> None:
        """Send one message if it is still waiting; a no-op for anything already claimed."""
        started = time.perf_counter()
        key = uuid.UUID(message_id)
        log_ = log.bind(message_id=message_id)
        with self.runtime.session_factory() as session:
            claim = self._claim(session, key, log_)
            session.commit()
        if claim is None:
            return
        log_ = log_.bind(stream_id=str(claim.stream_id))
        try:
            provider = self.providers.for_stream(demo=claim.demo)
            with metrics.PROVIDER_CALL.labels(provider.name).time():
                accepted = provider.send(claim.message)
        except ProviderError as error:
            self._provider_failed(claim, error, log_)
        else:
            self._sent(claim, provider.name, accepted, log_)
        finally:
            metrics.WORKER_PROCESSING.labels(claim.stream_type).observe(
                time.perf_counter() - started
            )

    def _claim(self, session: Session, key: uuid.UUID, log_) -> Claim | None:  # type: ignore[no-untyped-def]
        now = self.runtime.clock()
        row = session.execute(
            select(Message, Stream.status, Stream.deleted_at, Stream.demo)
            .join(Stream, Stream.id == Message.stream_id)
            .where(Message.id == key)
        ).first()
        if row is None:
            log_.warning("delivery_unknown_message")
            return None
        message, stream_status, deleted_at, demo = row
        if message.status not in (MessageStatus.queued, MessageStatus.sending):
            log_.debug("delivery_skipped", status=message.status)
            return None
        if deleted_at is not None:
            transition(
                session,
                key,
                to=MessageStatus.failed,
                allowed_from=[MessageStatus.queued],
                at=now,
                detail="stream deleted",
                values={
                    "error_code": "stream_deleted",
                    "error_message": "The stream was deleted before sending.",
                },
            )
            return None
        if stream_status in _PAUSED:
            # Park it: the relay enqueues it again once the stream accepts sends.
            session.execute(
                update(Message)
                .where(Message.id == key, Message.status == MessageStatus.queued.value)
                .values(enqueued_at=None, updated_at=now)
            )
            log_.info("delivery_parked", stream_status=stream_status)
            return None
        lease_cutoff = now - timedelta(seconds=self.runtime.settings.claim_lease_seconds)
        claimed = session.execute(
            update(Message)
            .where(
                Message.id == key,
                or_(
                    Message.status == MessageStatus.queued.value,
                    and_(
                        Message.status == MessageStatus.sending.value,
                        Message.claimed_at < lease_cutoff,
                    ),
                ),
            )
            .values(
                status=MessageStatus.sending.value,
                claimed_at=now,
                updated_at=now,
                attempts=Message.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            log_.debug("delivery_already_claimed")
            return None
        record_changes(
            session,
            [
                StatusChange(
                    message_id=key,
                    stream_id=message.stream_id,
                    account_id=message.account_id,
                    stream_type=message.stream_type,
                    status=MessageStatus.sending,
                    at=now,
                    segments=message.segments,
                )
            ],
        )
        return Claim(
            message=OutboundMessage(
                reference=str(key),
                sender=message.sender,
                recipient=message.recipient,
                body=text_to_send(message, self.runtime.secret_box),
                segments=message.segments,
                encoding=message.encoding,
            ),
            message_id=key,
            stream_id=message.stream_id,
            stream_type=message.stream_type,
            demo=demo,
            attempt=message.attempts + 1,
        )

    def _sent(self, claim: Claim, provider: str, accepted: Accepted, log_) -> None:  # type: ignore[no-untyped-def]
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                claim.message_id,
                to=MessageStatus.sent,
                allowed_from=[MessageStatus.sending],
                at=now,
                values={"provider": provider, "provider_message_id": accepted.provider_message_id},
            )
            if moved and self._touch.due(claim.stream_id):
                session.execute(
                    update(Stream).where(Stream.id == claim.stream_id).values(last_activity_at=now)
                )
            session.commit()
        if not moved:
            log_.warning("sent_but_claim_lost")
            return
        metrics.SEGMENTS_SENT.labels(claim.stream_type).inc(claim.message.segments)
        log_.info("message_sent", provider=provider, segments=claim.message.segments)
        if accepted.receipt is not None:
            try:
                enqueue_receipt(
                    self.runtime.broker,
                    claim.stream_type,
                    str(claim.message_id),
                    accepted.receipt.status,
                    delay_ms=int(accepted.receipt.after_seconds * 1000),
                )
            except Exception as exc:
                log_.warning("receipt_enqueue_failed", error=type(exc).__name__)

    def _provider_failed(self, claim: Claim, error: ProviderError, log_) -> None:  # type: ignore[no-untyped-def]
        settings = self.runtime.settings
        now = self.runtime.clock()
        kind = "transient" if error.transient else "permanent"
        metrics.PROVIDER_ERRORS.labels(
            "sandbox" if claim.demo else settings.default_provider, kind
        ).inc()
        retry = error.transient and claim.attempt < settings.max_send_attempts
        with self.runtime.session_factory() as session:
            if retry:
                transition(
                    session,
                    claim.message_id,
                    to=MessageStatus.queued,
                    allowed_from=[MessageStatus.sending],
                    at=now,
                    detail=f"retry after {error.code}",
                    values={
                        "enqueued_at": None,
                        "error_code": error.code,
                        "error_message": error.message,
                    },
                )
            else:
                transition(
                    session,
                    claim.message_id,
                    to=MessageStatus.failed,
                    allowed_from=[MessageStatus.sending],
                    at=now,
                    detail=error.code,
                    values={"error_code": error.code, "error_message": error.message},
                )
            session.commit()
        if not retry:
            log_.warning("message_failed", error_code=error.code, attempt=claim.attempt)
            return
        delay = (
            error.retry_after
            if error.retry_after is not None
            else backoff_seconds(claim.attempt, settings.retry_backoff_seconds)
        )
        log_.info(
            "message_retry_scheduled",
            error_code=error.code,
            attempt=claim.attempt,
            delay_s=round(delay, 2),
        )
        self._requeue(claim, delay)

    def _requeue(self, claim: Claim, delay_seconds: float) -> None:
        try:
            enqueue_delivery(
                self.runtime.broker,
                claim.stream_type,
                str(claim.message_id),
                delay_ms=int(delay_seconds * 1000),
            )
        except Exception as exc:  # left to the relay
            log.warning(
                "requeue_failed", message_id=str(claim.message_id), error=type(exc).__name__
            )
            return
        with self.runtime.session_factory() as session:
            session.execute(
                update(Message)
                .where(Message.id == claim.message_id, Message.enqueued_at.is_(None))
                .values(enqueued_at=self.runtime.clock())
            )
            session.commit()

    # -------------------------------------------------------------- receipts

    def apply_receipt(self, message_id: str, status: str) -> None:
        """Record a delivery receipt. Only a ``sent`` message moves; a late or repeated
        receipt changes nothing."""
        outcome = MessageStatus(status)
        if outcome not in (MessageStatus.delivered, MessageStatus.undelivered):
            raise ValueError(f"not a receipt status: {status}")
        now = self.runtime.clock()
        key = uuid.UUID(message_id)
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                key,
                to=outcome,
                allowed_from=[MessageStatus.sent],
                at=now,
                values={
                    "error_code": "undelivered",
                    "error_message": "The carrier could not deliver it.",
                }
                if outcome is MessageStatus.undelivered
                else None,
            )
            session.commit()
        if moved:
            log.info("message_receipt", message_id=message_id, status=outcome.value)


def backoff_seconds(attempt: int, base: float, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** max(attempt - 1, 0))))
