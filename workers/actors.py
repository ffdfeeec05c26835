"""The dramatiq actors. For each queue: one that delivers a message, one that delivers a
batch of them (how the ingress enqueues large sends), and one that applies delivery
receipts. Declared on a given broker at start-up, never at import time."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import dramatiq
import structlog

from core.broker import QUEUES
from workers.delivery import Delivery
from workers.queueing import (
    delivery_actor_name,
    delivery_batch_actor_name,
    enqueue_deliveries,
    enqueue_delivery,
    receipt_actor_name,
)

log = structlog.get_logger(__name__)


def declare_actors(
    broker: dramatiq.Broker,
    delivery: Delivery,
    queues: Iterable[str] = QUEUES,
    *,
    stopping: threading.Event | None = None,
) -> None:
    """Register the actors of ``queues`` on ``broker``, bound to ``delivery``.

    Declaring again on the same broker rebinds them (a process that restarts its worker
    with new settings).
    """
    for queue in queues:
        for name in (
            delivery_actor_name(queue),
            delivery_batch_actor_name(queue),
            receipt_actor_name(queue),
        ):
            broker.actors.pop(name, None)
        dramatiq.actor(
            _deliver(delivery, queue),
            actor_name=delivery_actor_name(queue),
            queue_name=queue,
            broker=broker,
        )
        dramatiq.actor(
            _deliver_batch(delivery, broker, queue, stopping or threading.Event()),
            actor_name=delivery_batch_actor_name(queue),
            queue_name=queue,
            broker=broker,
        )
        dramatiq.actor(
            _receipt(delivery),
            actor_name=receipt_actor_name(queue),
            queue_name=queue,
            broker=broker,
        )


def _deliver(delivery: Delivery, queue: str):  # type: ignore[no-untyped-def]
    def deliver(message_id: str) -> None:
        delivery.deliver(message_id, queue)

    return deliver


def _deliver_batch(  # type: ignore[no-untyped-def]
    delivery: Delivery, broker: dramatiq.Broker, queue: str, stopping: threading.Event
):
    def deliver_batch(message_ids: list[str]) -> None:
        # The batch is loaded, claimed and recorded at once (``Delivery.deliver_many``). A
        # message whose own step raised goes back as a job of its own, so it gets
        # dramatiq's retries and dead-lettering without holding up, or re-running, the
        # others. When the worker is stopping, what has not been claimed goes back to the
        # queue.
        if stopping.is_set():
            enqueue_deliveries(broker, queue, message_ids)
            log.info("batch_handed_back", remaining=len(message_ids))
            return
        result = delivery.deliver_many(message_ids, queue=queue, stopping=stopping)
        if result.handed_back:
            enqueue_deliveries(broker, queue, result.handed_back)
            log.info("batch_handed_back", remaining=len(result.handed_back))
        for message_id, error in result.failed:
            log.error("batch_item_failed", message_id=message_id, exc_info=error)
            enqueue_delivery(broker, queue, message_id)

    return deliver_batch


def _receipt(delivery: Delivery):  # type: ignore[no-untyped-def]
    def receipt(message_id: str, status: str) -> None:
        delivery.apply_receipt(message_id, status)

    return receipt
