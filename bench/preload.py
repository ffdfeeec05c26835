"""A backlog made through the real ingress: single sends posted concurrently to a running
``streams serve``, their jobs then held aside until the clock starts.

``bench.backlog`` writes what the ingress would write, one job per message or per chunk,
chosen by the caller. Through the ingress the job shapes are the ingress' own: concurrent
single sends are stored by one group commit, and on the packed queues
(``STREAMS_PACKED_SINGLE_SEND_QUEUES``) that group goes out as batch jobs. This module sends
the messages, then moves the queue's two dramatiq keys (``dramatiq:<queue>`` and its
``.msgs`` hash, see ``bench.backlog``) aside under other names, so that a worker pool can
start idle and be timed from the moment they are moved back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import redis

from bench.ingress import SEND_ITEM, SEND_PATH
from core.broker import NAMESPACE


@dataclass(frozen=True)
class Preload:
    """What a preload through the ingress did."""

    accepted: int
    seconds: float
    #: Answers other than 202, by status code (must be empty for a usable run).
    refused: dict[int, int]

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def send_singles(base_url: str, token: str, count: int, concurrency: int) -> Preload:
    """POST ``count`` single sends to the ingress, ``concurrency`` at a time on kept-alive
    connections. A send counts as accepted when it is answered 202 (the message is stored
    and enqueued).

    The requests are written by hand on asyncio streams, not with httpx: an httpx client
    costs about as much CPU per request as the ingress itself, and on a small machine it
    would cap the load at a third of what the ingress accepts (300 against about 1,000
    sends a second on 2 cores), which would keep the ingress' groups small."""
    return asyncio.run(_send_singles(base_url, token, count, concurrency))


async def _send_singles(base_url: str, token: str, count: int, concurrency: int) -> Preload:
    url = httpx.URL(base_url)
    body = json.dumps({"messages": [SEND_ITEM]}, separators=(",", ":")).encode()
    request = (
        f"POST {SEND_PATH} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: Counter[int] = Counter()
    remaining = iter(range(count))

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            for _ in remaining:
                writer.write(request)
                statuses[await _read_response(reader)] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    accepted = statuses.pop(202, 0)
    return Preload(accepted=accepted, seconds=round(seconds, 3), refused=dict(statuses))


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a ``Content-Length`` body; returns its status code.
    Raises ``RuntimeError`` on a response this client cannot frame (chunked, no length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines if line)
    )
    if "content-length" not in headers:
        raise RuntimeError(f"a response without Content-Length: {status_line!r}")
    await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ", 2)[1])


def _keys(queue: str, prefix: str) -> tuple[str, str]:
    return f"{prefix}:{queue}", f"{prefix}:{queue}.msgs"


@contextmanager
def held_queue(redis_url: str, queue: str) -> Iterator[HeldQueue]:
    """Move the jobs waiting on ``queue`` aside (no consumer sees them) and yield a handle
    whose ``release()`` moves them back at once. Jobs still held on exit are released."""
    client = redis.Redis.from_url(redis_url)
    held = HeldQueue(client, queue)
    try:
        held.hold()
        yield held
    finally:
        if held.holding:
            held.release()
        client.close()


class HeldQueue:
    """A dramatiq queue's jobs under other names, until ``release``."""

    HELD_PREFIX = "bench:held"

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self._client = client
        self._live = _keys(queue, NAMESPACE)
        self._held = _keys(queue, self.HELD_PREFIX)
        self.holding = False
        self.jobs = 0

    def hold(self) -> None:
        """Rename the queue's list and hash; raises ``RuntimeError`` if it has no jobs."""
        self.jobs = int(self._client.llen(self._live[0]))
        if not self.jobs:
            raise RuntimeError(f"no jobs on {self._live[0]} to hold")
        self._move(self._live, self._held)
        self.holding = True

    def release(self) -> float:
        """Move the jobs back in one transaction; returns the seconds it took."""
        started = time.perf_counter()
        self._move(self._held, self._live)
        self.holding = False
        return time.perf_counter() - started

    def _move(self, source: tuple[str, str], target: tuple[str, str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        for old, new in zip(source, target, strict=True):
            pipe.rename(old, new)
        pipe.execute()
