"""Backlogs of queued messages, made fast: rows written with COPY, jobs pushed with a pipeline.

Going through the ingress costs a fraction of a millisecond of server CPU per message (see
``bench/ingress.py``): fine for thousands, minutes of a busy ingress for a million. This
module writes exactly what the ingress writes (``accept_messages`` in
``dispatcher/intake.py``) by the fastest route on each side:

* **PostgreSQL**: one ``messages`` row per message (status ``queued``, ``attempts`` 0,
  ``enqueued_at`` set, as after the ingress' enqueue mark) and, if asked, its ``queued``
  history row, both with ``COPY ... FROM STDIN`` (psycopg 3 ``cursor.copy``).
* **Redis**: the dramatiq job of each message, reproduced from
  ``workers.queueing.enqueue_delivery`` → ``RedisBroker.enqueue`` →
  ``dramatiq/brokers/redis/dispatch.lua`` (command ``enqueue``): the encoded message goes
  into the hash ``dramatiq:<queue>.msgs`` under a fresh ``redis_message_id`` and that id is
  appended to the list ``dramatiq:<queue>``. We do the same with one ``HSET`` of many fields
  and one ``RPUSH`` of many ids per chunk, in a pipeline. The workers' consumers cannot tell
  the difference (``check_job_encoding`` compares our bytes with dramatiq's own at start).

The Lua script also refreshes the enqueuer's heartbeat and, rarely, runs queue maintenance;
neither matters to a consumer, so neither is reproduced.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq
import psycopg
import redis

from core.accounts import create_account
from core.broker import NAMESPACE
from core.clock import utcnow
from core.credentials import digest, new_stream_token
from core.database import build_engine, build_session_factory
from core.segments import count_segments
from core.stream_rules import missing_steps
from schemas.enums import MessageStatus, StreamType
from schemas.streams import OTP_DEFAULTS
from schemas.tables import Stream
from workers.queueing import delivery_actor_name, delivery_batch_actor_name

#: A one-segment and a two-segment GSM-7 text (161 characters: 2 × 153 septets).
SHORT_TEXT = "Benchmark message"
LONG_TEXT = ("Benchmark message, two segments long. " * 5)[:161]
RECIPIENT = "+972524265292"
SENDER = "Acme"
_CHUNK = 2_000


@dataclass(frozen=True)
class BenchStream:
    """What the loader needs to know about a stream."""

    id: uuid.UUID
    account_id: uuid.UUID
    type: StreamType

    @property
    def queue(self) -> str:
        return self.type.queue_name


def new_account(database_url: str, name: str) -> tuple[uuid.UUID, str]:
    """Create an account directly in the database (``core.accounts.create_account``);
    returns its id and API key."""
    engine = build_engine(database_url, pool_size=1)
    try:
        return create_account(build_session_factory(engine), name)
    finally:
        engine.dispose()


def create_stream_row(
    database_url: str,
    account_id: uuid.UUID,
    *,
    name: str,
    stream_type: StreamType,
    settings: dict[str, object] | None = None,
) -> BenchStream:
    """A ready demo stream (sandbox carrier) written through the ORM, with a token like one
    the management API makes (and, for OTP, its default code settings). Raises
    ``RuntimeError`` if the rules would not call it ready."""
    defaults = OTP_DEFAULTS if stream_type is StreamType.otp else {}
    settings = {**defaults, **(settings or {})}
    missing = missing_steps(stream_type, default_sender=SENDER, demo=True, settings=settings)
    if missing:
        raise RuntimeError(f"a {stream_type.value} bench stream misses {missing}")
    engine = build_engine(database_url, pool_size=1)
    now = utcnow()
    stream = Stream(
        id=uuid.uuid4(),
        account_id=account_id,
        name=name,
        type=stream_type.value,
        status="ready",
        disabled=False,
        allowed_ips=[],
        default_sender=SENDER,
        demo=True,
        settings=settings,
        token_digest=digest(new_stream_token()),
        created_at=now,
        updated_at=now,
        callbacks_changed_at=now,
    )
    try:
        with build_session_factory(engine)() as session:
            session.add(stream)
            session.commit()
    finally:
        engine.dispose()
    return BenchStream(stream.id, account_id, stream_type)


@dataclass(frozen=True)
class LoadedBacklog:
    """Messages written to PostgreSQL: their ids in order, segments per id, and timings."""

    ids: list[uuid.UUID]
    segments: dict[uuid.UUID, int]
    enqueued_at: datetime
    copy_seconds: float

    @property
    def total_segments(self) -> int:
        return sum(self.segments.values())


def texts_for(count: int, two_segment_share: float) -> Iterator[str]:
    """``count`` texts, of which about ``two_segment_share`` take two segments, spread evenly
    (Bresenham), so any stretch of the queue has the same mix."""
    owed = 0.0
    for _ in range(count):
        owed += two_segment_share
        if owed >= 1.0:
            owed -= 1.0
            yield LONG_TEXT
        else:
            yield SHORT_TEXT


_MESSAGE_COLUMNS = (
    "id", "account_id", "stream_id", "stream_type", "sender", "recipient", "body", "segments",
    "encoding", "status", "attempts", "enqueued_at", "created_at", "updated_at",
)  # fmt: skip


def copy_messages(
    database_url: str,
    stream: BenchStream,
    count: int,
    *,
    two_segment_share: float = 0.0,
    with_events: bool = True,
    send_at: datetime | None = None,
) -> LoadedBacklog:
    """COPY ``count`` queued messages of ``stream`` (and their ``queued`` history rows, unless
    ``with_events`` is False) in one transaction, then ANALYZE them; returns their ids in
    queue order. With ``send_at``, the messages are ``scheduled`` for then instead, off the
    broker (``enqueued_at`` NULL), for the relay to release."""
    started = time.perf_counter()
    now = utcnow()
    counted = {text: count_segments(text) for text in (SHORT_TEXT, LONG_TEXT)}
    ids: list[uuid.UUID] = []
    segments: dict[uuid.UUID, int] = {}
    status = MessageStatus.scheduled if send_at is not None else MessageStatus.queued
    enqueued_at = None if send_at is not None else now
    columns = ", ".join((*_MESSAGE_COLUMNS, "send_at"))
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY messages ({columns}) FROM STDIN") as copy:
            for text in texts_for(count, two_segment_share):
                message_id = uuid.uuid4()
                size = counted[text]
                ids.append(message_id)
                segments[message_id] = size.segments
                copy.write_row(
                    (
                        message_id, stream.account_id, stream.id, stream.type.value, SENDER,
                        RECIPIENT, text, size.segments, size.encoding,
                        status.value, 0, enqueued_at, now, now, send_at,
                    )
                )  # fmt: skip
        if with_events:
            with cursor.copy("COPY message_events (message_id, status, at) FROM STDIN") as copy:
                for message_id in ids:
                    copy.write_row((message_id, status.value, now))
        connection.commit()
    analyze_messages(database_url)
    return LoadedBacklog(ids, segments, now, time.perf_counter() - started)


def analyze_messages(database_url: str) -> None:
    """ANALYZE the message tables after a backlog was written: what autovacuum would do
    within a minute in production. Without it the planner knows nothing of the rows just
    written (it assumes a few per stream and status) and plans a claim by id as a scan of
    the stream's whole backlog: a drain would measure that planner artefact, growing with
    the backlog, instead of the pipeline."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("ANALYZE messages, message_events")


def job_bytes(
    queue: str,
    actor: str,
    args: Sequence[object],
    redis_message_id: str,
    *,
    message_id: str | None = None,
    timestamp_ms: int | None = None,
) -> bytes:
    """One dramatiq job as ``RedisBroker.enqueue`` stores it (no delay): the fields of
    ``dramatiq.Message`` in order, compact JSON."""
    return json.dumps(
        {
            "queue_name": queue,
            "actor_name": actor,
            "args": list(args),
            "kwargs": {},
            "options": {"redis_message_id": redis_message_id},
            "message_id": message_id or str(uuid.uuid4()),
            "message_timestamp": timestamp_ms or int(time.time() * 1000),
        },
        separators=(",", ":"),
    ).encode()


def check_job_encoding() -> None:
    """Raise ``RuntimeError`` if dramatiq would encode a job differently from ``job_bytes``
    (a dramatiq upgrade changed the format): the workers would then read garbage."""
    ours = job_bytes("q", "a", ["x"], "r", message_id="m", timestamp_ms=1)
    theirs = dramatiq.Message(
        queue_name="q",
        actor_name="a",
        args=("x",),
        kwargs={},
        options={"redis_message_id": "r"},
        message_id="m",
        message_timestamp=1,
    ).encode()
    if theirs != ours:
        raise RuntimeError(f"dramatiq encodes jobs differently now: {theirs!r} != {ours!r}")


def push_jobs(
    redis_url: str, queue: str, actor: str, args_list: Iterable[Sequence[object]]
) -> tuple[int, float]:
    """Append one job per ``args`` to the dramatiq queue ``queue`` for ``actor``, in order.
    Returns how many and the seconds it took."""
    started = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    hash_key, list_key = f"{NAMESPACE}:{queue}.msgs", f"{NAMESPACE}:{queue}"
    pushed = 0
    try:
        pipe = client.pipeline(transaction=False)
        fields: dict[str, bytes] = {}
        for args in args_list:
            redis_message_id = str(uuid.uuid4())
            fields[redis_message_id] = job_bytes(queue, actor, args, redis_message_id)
            if len(fields) >= _CHUNK:
                pushed += _queue_chunk(pipe, hash_key, list_key, fields)
                fields = {}
                if len(pipe) >= 20:
                    pipe.execute()
        pushed += _queue_chunk(pipe, hash_key, list_key, fields)
        pipe.execute()
    finally:
        client.close()
    return pushed, time.perf_counter() - started


def _queue_chunk(pipe: Any, hash_key: str, list_key: str, fields: dict[str, bytes]) -> int:
    """Queue one chunk of jobs on the pipeline ``pipe``; returns how many."""
    if not fields:
        return 0
    pipe.hset(hash_key, mapping=fields)  # the body first, as dispatch.lua does
    pipe.rpush(list_key, *fields)
    return len(fields)


def push_deliveries(
    redis_url: str, queue: str, ids: Sequence[uuid.UUID], *, job_size: int = 1
) -> tuple[int, float]:
    """The delivery jobs of ``ids`` on their type's queue: one ``deliver_<queue>`` job per
    message (``enqueue_delivery``: single sends and the relay's releases on the queues that are
    not packed, and on every queue before 7 December 2026), or with ``job_size`` > 1 one
    ``deliver_batch_<queue>`` job per ``job_size`` messages (``enqueue_deliveries``: how the
    ingress enqueues a batch send, ``STREAMS_ENQUEUE_CHUNK_SIZE``). Returns the number of
    jobs and the seconds it took."""
    if job_size <= 1:
        return push_jobs(redis_url, queue, delivery_actor_name(queue), ((str(i),) for i in ids))
    chunks = (ids[start : start + job_size] for start in range(0, len(ids), job_size))
    return push_jobs(
        redis_url,
        queue,
        delivery_batch_actor_name(queue),
        ((tuple(str(i) for i in chunk),) for chunk in chunks),
    )
