"""What waits on a dramatiq queue in Redis, read back for tests of how messages are
enqueued (one job each, or batch jobs)."""

from __future__ import annotations

import json
from typing import Any

from core.broker import NAMESPACE


def jobs_on(redis_client: Any, queue: str) -> list[tuple[str, list[str]]]:
    """(actor, message ids) of every job waiting on ``queue`` (``<queue>.DQ`` for the delayed
    ones)."""
    return [(job["actor_name"], ids) for job, ids in _jobs(redis_client, queue)]


def delayed_jobs_on(redis_client: Any, queue: str) -> list[tuple[int, list[str]]]:
    """(eta in epoch milliseconds, message ids) of every delayed job of ``queue``."""
    return [(job["options"]["eta"], ids) for job, ids in _jobs(redis_client, f"{queue}.DQ")]


def _jobs(redis_client: Any, queue: str) -> list[tuple[dict[str, Any], list[str]]]:
    jobs = []
    for raw in redis_client.hvals(f"{NAMESPACE}:{queue}.msgs"):
        job = json.loads(raw)
        args = job["args"][0]
        jobs.append((job, args if isinstance(args, list) else [args]))
    return jobs
