"""The public way onto the queues. The ingress and the relay call these; the actors that
consume them are declared in ``workers.actors``.

Messages are built by actor name, so a process that only enqueues (the ingress) needs no
actor declared and imports nothing else from ``workers``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import dramatiq
import structlog

from core.broker import CALLBACK_QUEUE
from schemas.events import StatusChange

if TYPE_CHECKING:
    from core.runtime import Runtime

log = structlog.get_logger(__name__)


def delivery_actor_name(queue: str) -> str:
    return f"deliver_{queue}"


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


def status_followup_listener(
    broker: dramatiq.Broker,
) -> Callable[[Sequence[StatusChange]], None]:
    """A ``StatusFeed`` listener: each committed batch of notable changes becomes one job on
    the callbacks queue (customer callbacks, early receipts). Only a Redis enqueue happens in
    the committing thread, so sending never waits on a customer."""

    def status_followups(changes: Sequence[StatusChange]) -> None:
        notable = [
            [str(c.message_id), c.status.value, c.at.isoformat(), c.detail]
            for c in changes
            if c.status.value in NOTIFIED_STATUSES
        ]
        if not notable:
            return
        try:
            broker.enqueue(
                dramatiq.Message(
                    queue_name=CALLBACK_QUEUE,
                    actor_name=STATUS_FOLLOWUP_ACTOR,
                    args=(notable,),
                    kwargs={},
                    options={},
                )
            )
        except Exception as exc:  # the broker's connection errors vary by client version
            log.warning(
                "status_followup_enqueue_failed", count=len(notable), error=type(exc).__name__
            )

    return status_followups


_SUBSCRIBED_FEEDS: weakref.WeakSet[object] = weakref.WeakSet()


def subscribe_status_followups(runtime: Runtime) -> None:
    """Subscribe the follow-up listener to ``runtime``'s status feed, once per feed (the
    ingress and the workers share one runtime in ``streams dev`` and in tests)."""
    if runtime.status_feed in _SUBSCRIBED_FEEDS:
        return
    _SUBSCRIBED_FEEDS.add(runtime.status_feed)
    runtime.status_feed.subscribe(status_followup_listener(runtime.broker))
