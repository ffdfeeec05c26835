"""Worker-side metrics as a dramatiq middleware: what is in progress, and how long a delivery
waited in its queue plus how long it took.

``streams_delivery_latency_seconds{queue}`` runs from the moment the message was put on the
queue (or, for a delayed message, the moment it was due) to the end of the attempt. For a
first attempt that is the time from acceptance to the provider's answer: the figure the OTP
latency alert watches (a backlog elsewhere must not move it, invariant 6).
"""

from __future__ import annotations

import time
from threading import Lock

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from core import metrics
from workers.queueing import delivery_actor_name, delivery_batch_actor_name


class WorkerMetrics(dramatiq.Middleware):
    def __init__(self) -> None:
        # A middleware before this one may skip a message before we saw it start; only what
        # was counted in is counted out.
        self._in_progress: set[str] = set()
        self._lock = Lock()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self._lock:
            self._in_progress.add(message.message_id)
        metrics.WORKER_IN_PROGRESS.labels(q_name(message.queue_name)).inc()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finish(message, observe=True)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(message, observe=False)

    def _finish(self, message: MessageProxy, *, observe: bool) -> None:
        queue = q_name(message.queue_name)
        with self._lock:
            if message.message_id not in self._in_progress:
                return
            self._in_progress.discard(message.message_id)
        metrics.WORKER_IN_PROGRESS.labels(queue).dec()
        if not observe:
            return
        if message.actor_name == delivery_actor_name(queue):
            metrics.DELIVERY_LATENCY.labels(queue).observe(delivery_latency(message, time.time()))
        elif message.actor_name == delivery_batch_actor_name(queue) and message.args:
            # A job of several messages: each waited as long as the job (an upper bound for
            # the first ones in it).
            latency = delivery_latency(message, time.time())
            for _ in message.args[0]:
                metrics.DELIVERY_LATENCY.labels(queue).observe(latency)


def delivery_latency(message: dramatiq.Message | MessageProxy, now: float) -> float:
    """Seconds since the message was enqueued, or since it was due when it was delayed."""
    enqueued = message.message_timestamp / 1000
    due = message.options.get("eta", 0) / 1000
    return max(now - max(enqueued, due), 0.0)
