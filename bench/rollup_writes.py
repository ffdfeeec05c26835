"""What keeping the stats rollup exact costs the writers: status changes per second with and
without it, on one stream (the worst case: every transaction increments the same rows).

    .venv/bin/python bench/rollup_writes.py [--threads 1,4,16] [--changes 4000]

Each variant moves distinct messages ``queued → sending`` through ``core.message_states
.transition`` (a conditional UPDATE and a history row), one message per transaction, from
``--threads`` threads at once, as a worker pool does:

* ``none``: no rollup (the floor);
* ``in_transaction``: the rollup as shipped (``core.stats_rollup``): an upsert of the minute and
  hour rows in the same transaction, just before COMMIT;
* ``delta_append``: the alternative, an append-only delta row per transaction (no row lock
  shared between writers), to be compacted into the rollup later.

It builds a throw-away database on ``--postgres-url`` and drops it afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import event, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.accounts import create_account  # noqa: E402
from core.database import build_engine, build_session_factory  # noqa: E402
from core.message_states import transition  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.stats_rollup import MINUTE, bucket_start, install_stats_rollup  # noqa: E402
from core.status_feed import PENDING_KEY  # noqa: E402
from schemas.enums import MessageStatus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--changes", type=int, default=4000, help="transactions per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    name = f"streams_bench_rollup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres_url.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        run(url, [int(t) for t in args.threads.split(",")], args.changes, args.rounds)
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


def run(url: str, thread_counts: list[int], changes: int, rounds: int) -> None:
    engine = build_engine(url, pool_size=max(thread_counts))
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE stream_stat_deltas (id bigserial PRIMARY KEY, stream_id uuid, "
                "bucket_start timestamptz, status text, messages int, segments int)"
            )
        )
    account_id, _ = create_account(build_session_factory(engine), "bench")
    stream_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO streams (id, account_id, name, type, status, disabled, allowed_ips,"
                " demo, settings, created_at, updated_at) VALUES (:id, :account, 'bench',"
                " 'marketing', 'ready', false, '[]', true, '{}', now(), now())"
            ),
            {"id": stream_id, "account": account_id},
        )

    variants: dict[str, Callable[[], object]] = {
        "none": lambda: build_session_factory(engine),
        "in_transaction": lambda: _with(build_session_factory(engine), install_stats_rollup),
        "delta_append": lambda: _with(build_session_factory(engine), _install_delta_append),
    }
    print(f"{'threads':>7} {'variant':>15} {'changes/s':>10}  (median of {rounds} rounds)")
    for threads in thread_counts:
        for variant, make_factory in variants.items():
            rates = []
            for _ in range(rounds):
                ids = _fresh_messages(engine, account_id, stream_id, changes)
                rates.append(_drive(make_factory(), ids, threads))
            print(f"{threads:>7} {variant:>15} {statistics.median(rates):>10.0f}", flush=True)
    engine.dispose()


def _with(factory, install):  # type: ignore[no-untyped-def]
    install(factory)
    return factory


def _install_delta_append(factory) -> None:  # type: ignore[no-untyped-def]
    def before_commit(session: Session) -> None:
        changes = session.info.get(PENDING_KEY)
        if changes:
            session.execute(
                text(
                    "INSERT INTO stream_stat_deltas (stream_id, bucket_start, status, messages,"
                    " segments) VALUES (:s, :b, :st, 1, :seg)"
                ),
                [
                    {
                        "s": c.stream_id,
                        "b": bucket_start(c.at, MINUTE),
                        "st": c.status.value,
                        "seg": c.segments,
                    }
                    for c in changes
                ],
            )

    event.listen(factory, "before_commit", before_commit)


def _fresh_messages(engine, account_id, stream_id, count: int) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    ids = [uuid.uuid4() for _ in range(count)]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, account_id, stream_id, stream_type, recipient, body,"
                " segments, encoding, status, attempts, created_at, updated_at)"
                " SELECT unnest(CAST(:ids AS uuid[])), :account, :stream, 'marketing',"
                " '+15550000000', 'bench', 1, 'GSM-7', 'queued', 0, now(), now()"
            ),
            {"ids": [str(i) for i in ids], "account": account_id, "stream": stream_id},
        )
    return ids


def _drive(factory, ids: list[uuid.UUID], threads: int) -> float:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    chunks = [ids[i::threads] for i in range(threads)]

    def work(chunk: list[uuid.UUID]) -> None:
        for message_id in chunk:
            with factory() as session:
                transition(
                    session,
                    message_id,
                    to=MessageStatus.sending,
                    allowed_from=[MessageStatus.queued],
                    at=datetime.now(UTC),
                )
                session.commit()

    workers = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(ids) / (time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
