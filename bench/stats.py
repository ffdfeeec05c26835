"""Stats latency on a big database: ``GET /api/v1/streams/{id}/stats`` over 30 days with ten
million message rows (target: p99 < 50 ms).

    .venv/bin/python bench/stats.py                     # 10,000,000 messages, 300 requests
    .venv/bin/python bench/stats.py --messages 1000000  # a quicker run
    .venv/bin/python bench/stats.py --keep              # keep the database for a rerun
    .venv/bin/python bench/stats.py --reuse NAME        # measure again on a kept database

What it does:

1. creates ``streams_bench_stats_<random>`` on ``--postgres-url`` with the migrations;
2. one account, ten streams: one "big" stream holds half the messages, spread over the last 30
   days (a message every ~0.5 s, so every minute and hour bucket is filled: the worst case
   for the rollup), the nine others share the rest over 60 days;
3. loads the messages with ``COPY ... FROM STDIN (FORMAT BINARY)`` in one stream of rows, with
   the table's indexes and constraints dropped first and rebuilt after (much faster than
   maintaining them row by row);
4. builds the matching ``stream_stats`` rows from the loaded messages in one SQL pass, exactly
   as the rollup hook would have written them (accepted and queued at creation, sending at
   +1 s, sent at +2 s, then delivered / undelivered at +5 s, or failed at +2 s);
5. starts a real ``streams serve`` on it and times ``--requests`` sequential requests per
   case over a kept-alive connection, client side (HTTP, auth and JSON included).

It prints the load times, the table sizes and p50 / p99 / max per case.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.accounts import create_account  # noqa: E402
from core.database import build_engine, build_session_factory  # noqa: E402
from core.migrate import upgrade  # noqa: E402

STREAMS = str(Path(sys.executable).parent / "streams")
STREAM_COUNT = 10
COLUMNS = (
    "id, account_id, stream_id, stream_type, internal_id, sender, recipient, body, segments, "
    "encoding, status, error_code, provider, attempts, enqueued_at, claimed_at, created_at, "
    "updated_at"
)
#: status → (share, seconds after creation of the final change)
OUTCOMES = [("delivered", 0.95), ("undelivered", 0.02), ("failed", 0.02), ("queued", 0.01)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", metavar="NAME", help="measure on a database kept earlier")
    args = parser.parse_args()

    name = args.reuse or f"streams_bench_stats_{uuid.uuid4().hex[:8]}"
    server = args.postgres_url.rsplit("/", 1)[0]
    url = f"{server}/{name}"
    try:
        if not args.reuse:
            with psycopg.connect(args.postgres_url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            upgrade(url)
            build(url, args.messages)
        measure(url, args.requests)
    finally:
        if args.keep or args.reuse:
            print(f"database kept: {name} (rerun with --reuse {name})")
        else:
            with psycopg.connect(args.postgres_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


# ---------------------------------------------------------------- building


def build(url: str, messages: int) -> None:
    engine = build_engine(url)
    account_id, key = create_account(build_session_factory(engine), "bench")
    engine.dispose()
    now = datetime.now(UTC).replace(microsecond=0)
    streams = [uuid.uuid4() for _ in range(STREAM_COUNT)]
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE bench_meta (account_key text, big uuid, small uuid)")
        connection.execute(
            "INSERT INTO bench_meta VALUES (%s, %s, %s)", (key, streams[0], streams[1])
        )
        for index, stream_id in enumerate(streams):
            connection.execute(
                "INSERT INTO streams (id, account_id, name, type, status, disabled, allowed_ips,"
                " demo, settings, last_activity_at, created_at, updated_at) VALUES (%s, %s, %s,"
                " 'marketing', 'ready', false, '[]', true, '{}', %s, %s, %s)",
                (stream_id, account_id, f"bench {index}", now, now - timedelta(days=61), now),
            )
        constraints = _drop_constraints(connection)

        started = time.perf_counter()
        _copy_messages(connection, account_id, streams, messages, now)
        print(f"COPY {messages:,} messages: {time.perf_counter() - started:.0f} s", flush=True)

        started = time.perf_counter()
        for statement in constraints:
            connection.execute(statement)
        print(f"indexes and constraints rebuilt: {time.perf_counter() - started:.0f} s", flush=True)

        started = time.perf_counter()
        _build_rollup(connection)
        print(f"rollup built from the messages: {time.perf_counter() - started:.0f} s", flush=True)

        started = time.perf_counter()
        connection.execute("VACUUM ANALYZE messages")
        connection.execute("VACUUM ANALYZE stream_stats")
        print(f"vacuum analyze: {time.perf_counter() - started:.0f} s", flush=True)


def _drop_constraints(connection: psycopg.Connection) -> list[str]:
    """Drop the indexes and constraints of ``messages`` (and the foreign keys pointing at
    it); returns the statements that recreate them, in a valid order."""
    rows = connection.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype"
        " FROM pg_constraint WHERE conrelid = 'messages'::regclass"
        " OR confrelid = 'messages'::regclass"
    ).fetchall()
    constraint_names = {row[1] for row in rows}
    indexes = connection.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages'"
    ).fetchall()
    # Foreign keys into messages first (they depend on its primary key), then the rest.
    for table, name, _definition, _kind in sorted(rows, key=lambda r: r[3] != "f"):
        connection.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    plain = [(n, d) for n, d in indexes if n not in constraint_names]
    for name, _definition in plain:
        connection.execute(f'DROP INDEX "{name}"')
    order = {"p": 0, "u": 1, "f": 2}
    recreate = [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'
        for table, name, definition, kind in sorted(rows, key=lambda r: order.get(r[3], 3))
    ]
    return recreate + [definition for _name, definition in plain]


def _copy_messages(connection, account_id, streams, count: int, now: datetime) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    big_share = count // 2
    big_span = 30 * 86400
    small_span = 60 * 86400
    recipients = [f"+1555{n:07d}" for n in rng.sample(range(10_000_000), 2000)]
    bodies = [
        ("Your order has shipped", 1, "GSM-7"),
        ("Sale! " * 40, 2, "GSM-7"),
        ("Привет, ваш код готов", 1, "UCS-2"),
    ]
    weights = [share for _status, share in OUTCOMES]
    statuses = [status for status, _share in OUTCOMES]
    epoch_now = now.timestamp()
    statement = f"COPY messages ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(
            [
                "uuid",
                "uuid",
                "uuid",
                "varchar",
                "varchar",
                "varchar",
                "varchar",
                "text",
                "int4",
                "varchar",
                "varchar",
                "varchar",
                "varchar",
                "int4",
                "timestamptz",
                "timestamptz",
                "timestamptz",
                "timestamptz",
            ]
        )
        chosen = rng.choices(statuses, weights=weights, k=count)
        for index in range(count):
            if index < big_share:
                stream_id = streams[0]
                created = epoch_now - big_span + index * big_span / big_share
            else:
                stream_id = streams[1 + index % (STREAM_COUNT - 1)]
                created = epoch_now - small_span * rng.random()
            status = chosen[index]
            body, segments, encoding = bodies[index % 3]
            if status == "queued" and index < big_share:
                created = epoch_now - rng.random() * 60  # a backlog is recent
            created_at = datetime.fromtimestamp(created, UTC)
            copy.write_row(
                (
                    uuid.UUID(int=rng.getrandbits(128)),
                    account_id,
                    stream_id,
                    "marketing",
                    None,
                    "Bench",
                    recipients[index % 2000],
                    body,
                    segments,
                    encoding,
                    status,
                    "sandbox_refused" if status == "failed" else None,
                    None if status == "queued" else "sandbox",
                    0 if status == "queued" else 1,
                    created_at,
                    None if status == "queued" else created_at,
                    created_at,
                    created_at,
                )
            )
            if index % 1_000_000 == 999_999:
                print(f"  {index + 1:,} rows", flush=True)


def _build_rollup(connection: psycopg.Connection) -> None:
    """``stream_stats`` as the rollup hook writes it, for every change the messages went
    through, in minute, hour and day buckets, in one pass over the messages."""
    connection.execute("SET work_mem = '256MB'")
    connection.execute(
        """
        INSERT INTO stream_stats (stream_id, bucket_seconds, bucket_start, status, messages,
                                  segments)
        SELECT m.stream_id, g.seconds,
               to_timestamp(floor(extract(epoch FROM m.created_at + e.after) / g.seconds)
                            * g.seconds),
               e.status, count(*), sum(m.segments)
        FROM messages m
        CROSS JOIN LATERAL (VALUES
            ('accepted', interval '0 s', true),
            ('queued', interval '0 s', true),
            ('sending', interval '1 s', m.status <> 'queued'),
            ('sent', interval '2 s', m.status IN ('delivered', 'undelivered')),
            ('delivered', interval '5 s', m.status = 'delivered'),
            ('undelivered', interval '5 s', m.status = 'undelivered'),
            ('failed', interval '2 s', m.status = 'failed')
        ) AS e(status, after, happened)
        CROSS JOIN (VALUES (60), (3600), (86400)) AS g(seconds)
        WHERE e.happened
        GROUP BY 1, 2, 3, 4
        """
    )


# ---------------------------------------------------------------- measuring


def measure(url: str, requests: int) -> None:
    with psycopg.connect(url) as connection:
        key, big, small = connection.execute("SELECT * FROM bench_meta").fetchone()
        sizes = connection.execute(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM stream_stats),"
            " pg_size_pretty(pg_total_relation_size('messages')),"
            " pg_size_pretty(pg_total_relation_size('stream_stats'))"
        ).fetchone()
    print(f"messages: {sizes[0]:,} rows ({sizes[2]}); stream_stats: {sizes[1]:,} rows ({sizes[3]})")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    env |= {
        "STREAMS_DATABASE_URL": url,
        "STREAMS_SECRET_KEY": "bench-secret-key-not-for-production",
        "STREAMS_LOG_LEVEL": "WARNING",
        "STREAMS_LOG_FORMAT": "json",
    }
    server = subprocess.Popen(
        [STREAMS, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base)
        now = datetime.now(UTC)
        cases = [
            ("big stream, 30 days", big, timedelta(days=30)),
            ("small stream, 30 days", small, timedelta(days=30)),
            ("big stream, 24 hours", big, timedelta(hours=24)),
            ("big stream, 6 hours (minute series)", big, timedelta(hours=6)),
            ("small stream, 60 days", small, timedelta(days=60)),
        ]
        print(f"{'case':<38} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  ({requests} requests)")
        rng = random.Random(3)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            for label, stream_id, span in cases:
                timings = []
                for attempt in range(requests + 20):
                    # A different window each time, with ragged minutes at both ends.
                    end = now - timedelta(minutes=rng.randint(0, 600), seconds=rng.randint(0, 59))
                    params = {
                        "from": (end - span).isoformat(),
                        "to": end.isoformat(),
                    }
                    started = time.perf_counter()
                    response = client.get(f"/api/v1/streams/{stream_id}/stats", params=params)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    if attempt >= 20:  # warm-up excluded
                        timings.append(elapsed * 1000)
                timings.sort()
                p99 = timings[max(0, int(len(timings) * 0.99) - 1)]
                print(
                    f"{label:<38} {statistics.median(timings):>7.1f} {p99:>7.1f}"
                    f" {timings[-1]:>7.1f}",
                    flush=True,
                )
        body = response.json()
        print(f"last answer: accepted={body['accepted']:,}, counts={body['counts']}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("streams serve did not start")


if __name__ == "__main__":
    sys.exit(main())
