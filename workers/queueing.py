"""The public way onto the queues. The ingress and the relay call these; the actors that
consume them are declared in ``workers.actors``.

Messages are built by actor name, so a process that only enqueues (the ingress) needs no
actor declared and imports nothing else from ``workers``.
"""

from __future__ import annotations

import dramatiq


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
