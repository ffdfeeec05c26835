"""Group commit for single sends: concurrent requests share one transaction.

A single send used to pay for a whole transaction (insert, history row, commit) on a request
thread. Here each request validates its item in the event loop, then waits on a future while
a committer stores everything that arrived meanwhile in one transaction, per stream with
``store_prepared``, and commits once. A request's 202 still comes only after its own row is
committed (invariant 1) and enqueued. While one group commits, the next one gathers, so
groups grow with load and a lone request waits for no timer.

A group's messages go onto their queues one job each, except on the packed queues
(``packed_single_send_queues``, marketing and transactional by default), where they go as
batch jobs, as a batch send's do: the group is already formed, so packing it adds no wait
at the ingress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import anyio.to_thread
import structlog

from core.activity import ActivityTouch
from core.runtime import Runtime
from dispatcher.auth import StreamAccess
from dispatcher.errors import ApiError
from dispatcher.ingress_quota import IngressGate
from dispatcher.intake import PreparedItem, store_prepared
from schemas.messages import SendResult
from workers.queueing import enqueue_committed, single_send_chunk_size

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Waiting:
    access: StreamAccess
    item: PreparedItem
    future: asyncio.Future[SendResult]


class GroupCommitter:
    """One per process; its task runs on the event loop that serves requests (started on
    first use)."""

    def __init__(
        self,
        runtime: Runtime,
        touch: ActivityTouch,
        gate: IngressGate | None = None,
        max_group: int = 512,
    ) -> None:
        """``gate``: the streams' ingress quota, asked for a whole group in one call."""
        self._runtime = runtime
        self._touch = touch
        self._gate = gate
        self._max_group = max_group
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def store(self, access: StreamAccess, item: PreparedItem) -> SendResult:
        """Store one valid item; returns once it is committed. Raises what the database
        raised (the caller's error handlers turn an outage into 503)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None or self._task is None or self._task.done():
            # The committer belongs to the loop that serves requests (one per process under
            # uvicorn; a test client may start a new one per request).
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._commit_groups(self._queue))
        future: asyncio.Future[SendResult] = loop.create_future()
        self._queue.put_nowait(_Waiting(access, item, future))
        return await future

    async def _commit_groups(self, queue: asyncio.Queue[_Waiting]) -> None:
        while True:
            group = [await queue.get()]
            while not queue.empty() and len(group) < self._max_group:
                group.append(queue.get_nowait())
            try:
                results = await anyio.to_thread.run_sync(self._commit_and_enqueue, group)
            except Exception as exc:
                for waiting in group:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                continue
            for waiting, result in zip(group, results, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(result, ApiError):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)

    def _commit_and_enqueue(self, group: list[_Waiting]) -> list[SendResult | ApiError]:
        """Ask the ingress quota for the group (one call: asked per request before the
        group, it cost each send a thread hop and a round trip, and the groups formed
        smaller), then commit what it let in, then enqueue, before anyone is answered: a
        202 means stored and (unless the broker failed, then the relay takes over) on its
        queue, as for a batch. A refused send gets its 429 and nothing is stored for it."""
        refusals = (
            self._gate.admit_many([(waiting.access, 1) for waiting in group])
            if self._gate is not None
            else [None] * len(group)
        )
        let_in = [waiting for waiting, refused in zip(group, refusals, strict=True) if not refused]
        results, to_enqueue = self._commit(let_in) if let_in else ([], {})
        self._enqueue(to_enqueue)
        stored = iter(results)
        return [refused or next(stored) for refused in refusals]

    def _commit(self, group: list[_Waiting]) -> tuple[list[SendResult], dict[str, list[uuid.UUID]]]:
        """Store the group in one transaction; results in group order, ids by queue."""
        now = self._runtime.clock()
        by_stream: dict[uuid.UUID, list[tuple[int, _Waiting]]] = {}
        for position, waiting in enumerate(group):
            by_stream.setdefault(waiting.access.stream_id, []).append((position, waiting))
        results: dict[int, SendResult] = {}
        to_enqueue: dict[str, list[uuid.UUID]] = {}
        with self._runtime.session_factory() as session:
            for entries in by_stream.values():
                access = entries[0][1].access
                items = [dataclasses.replace(w.item, index=position) for position, w in entries]
                stored, ids = store_prepared(session, access, items, now, self._touch)
                results.update(stored)
                to_enqueue.setdefault(access.type.queue_name, []).extend(ids)
            session.commit()
        return [results[position] for position in range(len(group))], to_enqueue

    def _enqueue(self, to_enqueue: dict[str, list[uuid.UUID]]) -> None:
        settings = self._runtime.settings
        for queue, ids in to_enqueue.items():
            enqueue_committed(
                self._runtime, queue, ids, chunk_size=single_send_chunk_size(settings, queue)
            )
