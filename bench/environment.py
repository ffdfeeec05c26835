"""Throwaway state for one benchmark run: a fresh PostgreSQL database built by the real
migrations, a flushed Redis database, and an account with one ready stream.

Everything made here is removed again when its context manager exits, also on errors and
Ctrl-C.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import redis

from core.accounts import create_account
from core.database import build_engine, build_session_factory
from core.migrate import upgrade
from workers import broker_epoch

BENCH_STREAM = {
    "name": "ingress benchmark",
    "type": "transactional",
    "default_sender": "Acme",
    "demo": True,
}


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """Create ``streams_bench_<random>`` on the server at ``server_url`` (a URL of an existing
    database with the right to create others), migrate it to head, yield its URL, and drop it
    (forcibly, even with connections left open) on exit."""
    name = f"streams_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_redis(url: str) -> Iterator[str]:
    """Flush the Redis database at ``url`` before and after use; yields ``url``. Like a
    deployment's after ``streams migrate``, it holds the broker's sentinel
    (``workers.broker_epoch``), so the relay does not take the backlog a benchmark puts on
    its queues for jobs a lost Redis left behind.

    The database must be one nothing else uses: everything in it is deleted.
    """
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        broker_epoch.begin(client, datetime.now(UTC), marked_waiting=False)
        yield url
    finally:
        client.flushdb()
        client.close()


def create_bench_account(database_url: str) -> str:
    """Create an account directly in the database; returns its API key."""
    engine = build_engine(database_url, pool_size=1)
    try:
        _, key = create_account(build_session_factory(engine), "ingress benchmark")
    finally:
        engine.dispose()
    return key


def create_bench_stream(
    base_url: str, account_key: str, stream: Mapping[str, Any] = BENCH_STREAM
) -> str:
    """Create a ready stream through the management API (by default a transactional demo
    stream, ``BENCH_STREAM``; ``stream`` is the create body); returns its send token. Raises
    ``httpx.HTTPStatusError`` if the API refuses."""
    headers = {"Authorization": f"Bearer {account_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        created = client.post("/api/v1/streams", json=dict(stream))
        created.raise_for_status()
        made = created.json()
        if made.get("status") != "ready":
            raise RuntimeError(f"the benchmark stream is {made.get('status')!r}, not ready")
        token = client.get(f"/api/v1/streams/{made['id']}/token")
        token.raise_for_status()
        return str(token.json()["token"])


def stored_message_counts(database_url: str) -> dict[str, int]:
    """How many messages the database holds (a 202 must mean a stored row), and how many of
    them are not marked as enqueued (left to the relay)."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE enqueued_at IS NULL) FROM messages"
        ).fetchone()
    stored, unmarked = row if row else (0, 0)
    return {"stored_in_postgres": int(stored), "not_marked_enqueued": int(unmarked)}


#: Counters of ``pg_stat_database`` worth a look per run: transactions and new sessions.
DATABASE_COUNTERS = ("xact_commit", "xact_rollback", "sessions", "tup_inserted", "tup_updated")


def database_activity(database_url: str) -> dict[str, int]:
    """PostgreSQL's cumulative counters for the database at ``database_url`` (see
    ``DATABASE_COUNTERS``). Backends report them with a delay of up to a second, and this
    probe adds one session and one transaction of its own."""
    columns = ", ".join(DATABASE_COUNTERS)
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            f"SELECT {columns} FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return dict(zip(DATABASE_COUNTERS, (int(v or 0) for v in row or ()), strict=False))


def queued_in_redis(redis_url: str, queue: str) -> dict[str, int]:
    """How many message ids wait on the dramatiq queue ``queue`` (namespace ``dramatiq``),
    and how many message bodies its hash holds."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {
            "ids_in_redis_queue": int(client.llen(f"dramatiq:{queue}")),
            "bodies_in_redis_queue": int(client.hlen(f"dramatiq:{queue}.msgs")),
        }
    finally:
        client.close()
