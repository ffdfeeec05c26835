"""The public way onto the queues. The ingress and the relay call these; the actors that
consume them are declared in ``workers.actors``.

Messages are built by actor name, so a process that only enqueues (the ingress) needs no
actor declared and imports nothing else from ``workers``.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import structlog

from core import metrics
from core.broker import CALLBACK_QUEUE
from schemas.events import StatusChange
from schemas.tables import WaitingFollowUp

if TYPE_CHECKING:
    from core.runtime import Runtime
    from core.settings import Settings

log = structlog.get_logger(__name__)


def delivery_actor_name(queue: str) -> str:
    return f"deliver_{queue}"


def delivery_batch_actor_name(queue: str) -> str:
    return f"deliver_batch_{queue}"


def receipt_actor_name(queue: str) -> str:
    return f"receipt_{queue}"


def enqueue_delivery(
    broker: dramatiq.Broker, queue: str, message_id: str, *, delay_ms: int | None = None
) -> None:
    """Put one message on its type's queue. Raises the broker's connection errors: the
    caller leaves the message to the relay when that happens."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=queue,
            actor_name=delivery_actor_name(queue),
            args=(message_id,),
            kwargs={},
            options={},
        ),
        delay=delay_ms,
    )


def single_send_chunk_size(settings: Settings, queue: str) -> int:
    """Messages per job for sends that each came alone (the ingress' single sends, the
    relay's releases): ``enqueue_chunk_size`` on the packed queues
    (``packed_single_send_queues``), 1 elsewhere, so that no single send there (OTP above
    all) waits in a batch job behind another message's provider call."""
    return settings.enqueue_chunk_size if queue in settings.packed_single_send_queues else 1


def enqueue_deliveries(
    broker: dramatiq.Broker, queue: str, message_ids: list[str], *, delay_ms: int | None = None
) -> None:
    """One job for several messages of one queue (one broker round trip instead of many,
    and one claim and one record for them all), delayed by ``delay_ms`` if given; a single
    id goes as an ordinary delivery job."""
    if len(message_ids) == 1:
        enqueue_delivery(broker, queue, message_ids[0], delay_ms=delay_ms or None)
        return
    broker.enqueue(
        dramatiq.Message(
            queue_name=queue,
            actor_name=delivery_batch_actor_name(queue),
            args=(message_ids,),
            kwargs={},
            options={},
        ),
        delay=delay_ms or None,
    )


def enqueue_receipt(
    broker: dramatiq.Broker, queue: str, message_id: str, status: str, *, delay_ms: int | None
) -> None:
    """Deliver a (simulated) delivery receipt to the message's pool, possibly later."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=queue,
            actor_name=receipt_actor_name(queue),
            args=(message_id, status),
            kwargs={},
            options={},
        ),
        delay=delay_ms or None,
    )


def enqueue_committed(
    runtime: Runtime, queue: str, message_ids: list[uuid.UUID], *, chunk_size: int | None = None
) -> int:
    """Enqueue messages already committed as ``queued``; they are marked enqueued shortly
    after (``core.enqueue_marks``).

    This is the second half of invariant 1: if the broker fails part-way, the rest keep
    ``enqueued_at = NULL`` and the relay enqueues them later. Never raises; returns how
    many reached the broker.
    """
    done: list[uuid.UUID] = []
    size = chunk_size or runtime.settings.enqueue_chunk_size
    try:
        for start in range(0, len(message_ids), size):
            chunk = message_ids[start : start + size]
            enqueue_deliveries(runtime.broker, queue, [str(m) for m in chunk])
            done.extend(chunk)
    except Exception as exc:  # the broker's connection errors vary by client version
        missed = len(message_ids) - len(done)
        metrics.ENQUEUE_FAILURES.labels(queue).inc(missed)
        log.warning(
            "enqueue_failed_left_to_relay", queue=queue, missed=missed, error=type(exc).__name__
        )
    runtime.enqueue_marks.add(done)
    return len(done)


# ---------------------------------------------------------------- customer callbacks

CALLBACK_ACTOR = "deliver_callback"
STATUS_FOLLOWUP_ACTOR = "follow_status_changes"
#: Status changes worth telling a customer about (``queued``/``sending`` are not: the 202
#: already said so).
NOTIFIED_STATUSES = frozenset(
    {"sent", "delivered", "undelivered", "failed", "rejected", "expired", "canceled"}
)


def enqueue_callback(
    broker: dramatiq.Broker, delivery_id: str, *, delay_ms: int | None = None
) -> None:
    """Put one stored callback (a ``callback_deliveries`` row) on the callbacks queue."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=CALLBACK_QUEUE,
            actor_name=CALLBACK_ACTOR,
            args=(delivery_id,),
            kwargs={},
            options={},
        ),
        delay=delay_ms or None,
    )


def enqueue_status_followup(broker: dramatiq.Broker, changes: Sequence[Sequence[Any]]) -> None:
    """Put one follow-up job for ``changes`` (``[message_id, status, at, detail]`` items) on
    the callbacks queue."""
    broker.enqueue(
        dramatiq.Message(
            queue_name=CALLBACK_QUEUE,
            actor_name=STATUS_FOLLOWUP_ACTOR,
            args=(changes,),
            kwargs={},
            options={},
        )
    )


def status_followup_listener(runtime: Runtime) -> Callable[[Sequence[StatusChange]], None]:
    """A ``StatusFeed`` listener: each committed batch of notable changes becomes one job on
    the callbacks queue (customer callbacks, early receipts). Changes whose maker knew that
    nothing follows them (``StatusChange.follow_up``) are left out, so streams without
    callbacks cost no job per message. Only a Redis enqueue happens in
    the committing thread, so sending never waits on a customer.

    When that enqueue fails (Redis unreachable), the changes are written to
    ``waiting_followups`` instead, and the callback sweep enqueues them later
    (``workers.callback_sweep``): the changes are committed, so their callbacks must not be
    lost with the job. The job is idempotent (``core.callback_events.status_event_id``)."""

    def status_followups(changes: Sequence[StatusChange]) -> None:
        notable = [
            [str(c.message_id), c.status.value, c.at.isoformat(), c.detail]
            for c in changes
            if c.follow_up and c.status.value in NOTIFIED_STATUSES
        ]
        if not notable:
            return
        try:
            enqueue_status_followup(runtime.broker, notable)
        except Exception as exc:  # the broker's connection errors vary by client version
            log.warning(
                "status_followup_enqueue_failed", count=len(notable), error=type(exc).__name__
            )
            _keep_for_the_sweep(runtime, notable)

    return status_followups


def _keep_for_the_sweep(runtime: Runtime, changes: Sequence[Sequence[Any]]) -> None:
    try:
        with runtime.session_factory() as session:
            kept = WaitingFollowUp(changes=[list(c) for c in changes], created_at=runtime.clock())
            session.add(kept)
            session.commit()
    except Exception as exc:  # the database too: nothing more can be done here
        log.error("status_followup_lost", count=len(changes), error=type(exc).__name__)


_SUBSCRIBED_FEEDS: weakref.WeakSet[object] = weakref.WeakSet()


def subscribe_status_followups(runtime: Runtime) -> None:
    """Subscribe the follow-up listener to ``runtime``'s status feed, once per feed (the
    ingress and the workers share one runtime in ``streams dev`` and in tests)."""
    if runtime.status_feed in _SUBSCRIBED_FEEDS:
        return
    _SUBSCRIBED_FEEDS.add(runtime.status_feed)
    runtime.status_feed.subscribe(status_followup_listener(runtime))
