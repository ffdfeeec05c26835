"""Send traffic to a real ``streams serve`` from the test: single sends and batches over
several kept-alive connections, each answer kept for the test to check."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import message


@dataclass
class Answers:
    """What the ingress said: status codes, and the ids of the messages it accepted."""

    statuses: list[int] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    bodies_by_status: dict[int, list[Any]] = field(default_factory=dict)

    def add(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        self.bodies_by_status.setdefault(response.status_code, []).append(body)
        if response.status_code == 202 and "results" in body:  # /v1/messages
            self.accepted_ids += [
                r["message_id"] for r in body["results"] if r["status"] != "rejected"
            ]
        elif response.status_code == 202:  # /v1/otp/send
            self.accepted_ids.append(body["message_id"])

    def merge(self, other: Answers) -> None:
        self.statuses += other.statuses
        self.accepted_ids += other.accepted_ids
        for status, bodies in other.bodies_by_status.items():
            self.bodies_by_status.setdefault(status, []).extend(bodies)


def requests_for(prefix: str, singles: int, batches: int, batch_size: int) -> list[list[dict]]:
    """Request bodies: ``singles`` one-message sends and ``batches`` of ``batch_size``, each
    message with an ``internal_id`` of its own, interleaved."""
    bodies = [[message(internal_id=f"{prefix}-s{i}")] for i in range(singles)]
    for b in range(batches):
        batch = [message(internal_id=f"{prefix}-b{b}-{i}") for i in range(batch_size)]
        bodies.insert((b * len(bodies)) // max(batches, 1), batch)
    return bodies


def send_all(
    base_url: str, token: str, bodies: list[list[dict]], *, connections: int = 8
) -> Answers:
    """POST every body to ``/v1/messages`` over ``connections`` clients; never raises for
    an HTTP status (a transport error is recorded as status 0)."""

    def worker(share: list[list[dict]]) -> Answers:
        answers = Answers()
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            for items in share:
                try:
                    answers.add(client.post("/v1/messages", json={"messages": items}))
                except httpx.TransportError:
                    answers.statuses.append(0)
        return answers

    total = Answers()
    with ThreadPoolExecutor(connections) as pool:
        for part in pool.map(worker, _deal(bodies, connections)):
            total.merge(part)
    return total


def _deal(items: list[Any], hands: int) -> Iterator[list[Any]]:
    for hand in range(hands):
        yield items[hand::hands]


@dataclass(frozen=True)
class Send:
    """One request of a traffic mix: where, with which token, what body."""

    path: str
    token: str
    body: dict[str, Any]


class SteadyTraffic:
    """Requests from ``make(n)`` (``n`` counts up from 0) over ``connections`` kept-alive
    clients, paced to ``rate`` requests per second overall (None: as fast as answers come),
    from ``start()`` until ``stop()``. Answers are collected; each entry of ``log`` is
    ``(time, status, request)``."""

    def __init__(
        self,
        base_url: str,
        make: Callable[[int], Send],
        *,
        connections: int = 4,
        rate: float | None = None,
        timeout: float = 30,
    ) -> None:
        self._base = base_url
        self._make = make
        self._connections = connections
        self._interval = connections / rate if rate else 0.0
        self._timeout = timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._count = itertools.count()
        self.answers = Answers()
        self.log: list[tuple[float, int, Send]] = []
        self.transport_errors: list[str] = []

    def start(self) -> None:
        for _ in range(self._connections):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout + 5)

    def count(self, status: int) -> int:
        with self._lock:
            return self.answers.statuses.count(status)

    def _run(self) -> None:
        with httpx.Client(base_url=self._base, timeout=self._timeout) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                send = self._make(next(self._count))
                try:
                    response = client.post(
                        send.path, json=send.body, headers={"Authorization": f"Bearer {send.token}"}
                    )
                except httpx.TransportError as exc:
                    with self._lock:
                        self.transport_errors.append(f"{type(exc).__name__}: {exc}")
                        self.answers.statuses.append(0)
                        self.log.append((time.monotonic(), 0, send))
                else:
                    with self._lock:
                        self.answers.add(response)
                        self.log.append((time.monotonic(), response.status_code, send))
                if self._interval:
                    next_at += self._interval
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
