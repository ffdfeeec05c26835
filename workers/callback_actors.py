"""The ``callbacks`` queue's actors: one attempt at a stored callback, and the follow-up of
committed status changes. Declared on a given broker at start-up, never at import time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq

from core.broker import CALLBACK_QUEUE
from workers.callbacks import CallbackSender
from workers.queueing import CALLBACK_ACTOR, STATUS_FOLLOWUP_ACTOR
from workers.status_followup import StatusFollowUp


def declare_callback_actors(
    broker: dramatiq.Broker, sender: CallbackSender, followup: StatusFollowUp
) -> None:
    """Register the callbacks queue's actors on ``broker``. Their own retries are the
    callback rows' (backoff, dead letters); dramatiq's retries only cover crashes such as a
    database outage. Declaring again on the same broker rebinds them."""
    for name in (CALLBACK_ACTOR, STATUS_FOLLOWUP_ACTOR):
        broker.actors.pop(name, None)

    def deliver_callback(delivery_id: str) -> None:
        sender.deliver(delivery_id)

    def follow_status_changes(changes: Sequence[Sequence[Any]]) -> None:
        followup.follow(changes)

    dramatiq.actor(
        deliver_callback, actor_name=CALLBACK_ACTOR, queue_name=CALLBACK_QUEUE, broker=broker
    )
    dramatiq.actor(
        follow_status_changes,
        actor_name=STATUS_FOLLOWUP_ACTOR,
        queue_name=CALLBACK_QUEUE,
        broker=broker,
    )
