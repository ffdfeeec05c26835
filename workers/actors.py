"""The dramatiq actors: for each queue, one that delivers messages and one that applies
delivery receipts. Declared on a given broker at start-up, never at import time."""

from __future__ import annotations

from collections.abc import Iterable

import dramatiq

from core.broker import QUEUES
from workers.delivery import Delivery
from workers.queueing import delivery_actor_name, receipt_actor_name


def declare_actors(
    broker: dramatiq.Broker, delivery: Delivery, queues: Iterable[str] = QUEUES
) -> None:
    """Register the actors of ``queues`` on ``broker``, bound to ``delivery``.

    Declaring again on the same broker rebinds them (a process that restarts its worker
    with new settings).
    """
    for queue in queues:
        broker.actors.pop(delivery_actor_name(queue), None)
        broker.actors.pop(receipt_actor_name(queue), None)
        dramatiq.actor(
            _deliver(delivery),
            actor_name=delivery_actor_name(queue),
            queue_name=queue,
            broker=broker,
        )
        dramatiq.actor(
            _receipt(delivery),
            actor_name=receipt_actor_name(queue),
            queue_name=queue,
            broker=broker,
        )


def _deliver(delivery: Delivery):  # type: ignore[no-untyped-def]
    def deliver(message_id: str) -> None:
        delivery.deliver(message_id)

    return deliver


def _receipt(delivery: Delivery):  # type: ignore[no-untyped-def]
    def receipt(message_id: str, status: str) -> None:
        delivery.apply_receipt(message_id, status)

    return receipt
