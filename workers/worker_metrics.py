"""Worker-side metrics as a dramatiq middleware: what is in progress, how each job ended, and
how long a delivery waited in its queue plus how long it took.

``streams_worker_jobs_total{queue,outcome}`` counts every job once per attempt: ``done`` when
it returned, ``failed`` when it raised (dramatiq's Retries then tries it again later, or gives
up and it becomes a ``worker_error`` dead letter). A job that keeps raising (a worker with the
wrong secret key, the database gone, a bug) shows here on its first attempt, hours before
its retries run out.

``streams_delivery_latency_seconds{queue}`` runs from the moment the message was put on the
queue (or, for a delayed message, the moment it was due) to the end of the attempt. For a
first attempt that is the time from acceptance to the provider's answer: the figure the OTP
latency alert watches (a backlog elsewhere must not move it, invariant 6). Only jobs that
ended without raising are observed: a failed attempt delivered nothing, and its quick end
would make the latency look healthy while nothing goes out.
"""

from __future__ import annotations

import time
from threading import Lock

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from core import metrics
from workers.queueing import delivery_actor_name, delivery_batch_actor_name

#: ``streams_worker_jobs_total``'s outcomes: the job returned, or it raised.
JOB_DONE = "done"
JOB_FAILED = "failed"


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
        outcome = JOB_DONE if exception is None else JOB_FAILED
        self._finish(message, outcome=outcome)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(message, outcome=None)

    def _finish(self, message: MessageProxy, *, outcome: str | None) -> None:
        """Count the job out; ``outcome`` None for a skipped job (neither counted as a job
        nor observed)."""
        queue = q_name(message.queue_name)
        with self._lock:
            if message.message_id not in self._in_progress:
                return
            self._in_progress.discard(message.message_id)
        metrics.WORKER_IN_PROGRESS.labels(queue).dec()
        if outcome is None:
            return
        metrics.WORKER_JOBS.labels(queue, outcome).inc()
        if outcome != JOB_DONE:
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
