"""Send traffic to a real ``streams serve`` from the test: single sends and batches over
several kept-alive connections, each answer kept for the test to check."""

from __future__ import annotations

from collections.abc import Iterator
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
        if response.status_code == 202:
            self.accepted_ids += [
                r["message_id"] for r in body["results"] if r["status"] != "rejected"
            ]

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
