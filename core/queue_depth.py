"""Queue depth, read from dramatiq's Redis keys when Prometheus scrapes.

dramatiq's Redis broker (``dramatiq/brokers/redis/dispatch.lua``) keeps, for a queue ``q``
in namespace ``dramatiq``:

* ``dramatiq:q``: a list of the ids waiting to be fetched (what KEDA scales on);
* ``dramatiq:q.msgs``: a hash id → message of everything not yet acknowledged, i.e. the
  waiting ids plus those a worker has fetched (prefetched or in progress);
* ``dramatiq:q.DQ`` and ``dramatiq:q.DQ.msgs``: the same pair for delayed messages (retries
  with backoff, receipts due later). Workers fetch delayed messages early and hold them until
  their time, so the hash, not the list, counts what is still delayed;
* ``dramatiq:q.XQ``: a sorted set of dead-lettered ids (dramatiq gave up on them; kept 7 days).

``streams_queue_depth{queue, state}`` reports them as ``ready`` (the list), ``fetched``
(hash minus list), ``delayed`` (the delay hash) and ``dead`` (the sorted set). The four reads
of a queue run in one MULTI, so ``fetched`` is never computed from two different moments.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import redis
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

log = structlog.get_logger(__name__)

METRIC = "streams_queue_depth"
STATES = ("ready", "fetched", "delayed", "dead")


def ready_list_key(namespace: str, queue: str) -> str:
    """The Redis list of ids waiting on ``queue``: the length to autoscale a pool on."""
    return f"{namespace}:{queue}"


def delayed_list_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}.DQ"


def dead_letter_key(namespace: str, queue: str) -> str:
    return f"{namespace}:{queue}.XQ"


def read_depths(
    client: redis.Redis, namespace: str, queues: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per queue, the number of messages in each state (see the module docstring)."""
    pipeline = client.pipeline(transaction=True)
    for queue in queues:
        ready = ready_list_key(namespace, queue)
        pipeline.llen(ready)
        pipeline.hlen(ready + ".msgs")
        pipeline.hlen(delayed_list_key(namespace, queue) + ".msgs")
        pipeline.zcard(dead_letter_key(namespace, queue))
    values = pipeline.execute()
    depths: dict[str, dict[str, int]] = {}
    for index, queue in enumerate(queues):
        ready, unacked, delayed, dead = values[index * 4 : index * 4 + 4]
        depths[queue] = {
            "ready": ready,
            "fetched": max(unacked - ready, 0),
            "delayed": delayed,
            "dead": dead,
        }
    return depths


def empty_queues(client: redis.Redis, namespace: str, queues: Sequence[str]) -> set[str]:
    """The queues that hold nothing at all: no id ready, fetched by a worker or delayed."""
    depths = read_depths(client, namespace, queues)
    return {
        queue
        for queue, states in depths.items()
        if states["ready"] == states["fetched"] == states["delayed"] == 0
    }


class QueueDepthCollector:
    """A Prometheus collector: ``streams_queue_depth`` for ``queues`` at every scrape.

    When Redis does not answer, the metric is left out of that scrape (and a warning logged),
    so alerts see it absent rather than falsely zero.
    """

    def __init__(self, client: redis.Redis, namespace: str, queues: Sequence[str]) -> None:
        self._client = client
        self._namespace = namespace
        self._queues = tuple(queues)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            depths = read_depths(self._client, self._namespace, self._queues)
        except redis.RedisError as exc:
            log.warning("queue_depth_unavailable", error=type(exc).__name__)
            return
        family = self._family()
        for queue, states in depths.items():
            for state in STATES:
                family.add_metric([queue, state], states[state])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            METRIC,
            "Messages in each dramatiq queue, by state: ready (waiting to be fetched), fetched "
            "(held by a worker), delayed (waiting for their time) and dead (dead-lettered).",
            labels=["queue", "state"],
        )
