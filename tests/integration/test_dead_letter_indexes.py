"""The dead letters list walks, for each of its filters, an index in the list's own order
(migration 0014): a page reads a page of index entries and sorts nothing, and the total of a
filter that matches a few letters counts those few, however many letters the account has
besides."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import text

from tests.conftest import auth
from tests.message_rows import account_of
from tests.query_plans import run_plans, statements_run

MANY = 50_000
FEW = 40
PER_PAGE = 20
#: Letters recorded at one time, as the relay records a batch of lapsed claims: the list's
#: order rests on its tie-breaker, the id, too.
TIED = 25


@dataclass
class Account:
    key: str
    busy: str
    quiet: str


def _letters(runtime, stream: dict, count: int, *, newest: datetime, replayed: bool | None) -> None:
    """``count`` failed messages of ``stream`` and their dead letters, ``TIED`` at a time a
    second apart back from ``newest``; replayed, not replayed, or every other one (``None``)."""
    replayed_at = {True: "now()", False: "NULL", None: "CASE WHEN g % 2 = 0 THEN now() END"}
    with runtime.engine.begin() as connection:
        connection.execute(
            text(
                "WITH letters AS ("
                " SELECT gen_random_uuid() AS message_id, g,"
                f" :newest - (g / {TIED}) * interval '1 second' AS at"
                " FROM generate_series(0, :count - 1) AS g),"
                " failed AS ("
                " INSERT INTO messages (id, account_id, stream_id, stream_type, recipient, body,"
                " segments, encoding, status, attempts, created_at, updated_at)"
                " SELECT message_id, :account_id, :stream_id, :queue, '+972524265292',"
                " 'Your parcel is on its way', 1, 'GSM-7', 'failed', 3, at, at FROM letters)"
                " INSERT INTO dead_letters (id, message_id, account_id, stream_id, queue, reason,"
                " error_message, attempts, created_at, replayed_at)"
                " SELECT gen_random_uuid(), message_id, :account_id, :stream_id, :queue,"
                f" 'retries_exhausted', 'HTTP 503', 3, at, {replayed_at[replayed]} FROM letters"
            ),
            {
                "account_id": account_of(runtime, stream),
                "stream_id": uuid.UUID(stream["id"]),
                "queue": stream["type"],
                "newest": newest,
                "count": count,
            },
        )


def _account(runtime, make_stream, key: str, *, busy_replayed: bool) -> Account:
    """An account with ``MANY`` letters of one stream, all replayed or none, and, older than
    those, ``FEW`` of another stream, every other one replayed."""
    busy, quiet = make_stream(key), make_stream(key, name="Codes", type="otp")
    now = runtime.clock()
    _letters(runtime, busy, MANY, newest=now, replayed=busy_replayed)
    _letters(runtime, quiet, FEW, newest=now - timedelta(days=30), replayed=None)
    return Account(key, busy["id"], quiet["id"])


def _other_accounts(runtime, accounts: int = 100, streams: int = 5, letters: int = 10) -> None:
    """Letters of many other accounts and streams, a few each, as the table holds beside a
    large account's: without them, a generic plan would take any account or stream for a
    quarter of the table. Their message is any one; the list joins it only for its status."""
    with runtime.engine.begin() as connection:
        connection.execute(
            text(
                "WITH others AS ("
                " INSERT INTO accounts (id, name, key_digest, created_at)"
                " SELECT gen_random_uuid(), 'Other', md5(a::text), now()"
                " FROM generate_series(1, :accounts) AS a RETURNING id),"
                " their_streams AS ("
                " INSERT INTO streams (id, account_id, name, type, status, disabled,"
                " allowed_ips, demo, settings, created_at, updated_at)"
                " SELECT gen_random_uuid(), others.id, 'Orders', 'transactional', 'ready',"
                " false, '[]', false, '{}', now(), now()"
                " FROM others, generate_series(1, :streams) RETURNING id, account_id)"
                " INSERT INTO dead_letters (id, message_id, account_id, stream_id, queue,"
                " reason, error_message, attempts, created_at, replayed_at)"
                " SELECT gen_random_uuid(), (SELECT id FROM messages LIMIT 1),"
                " their_streams.account_id, their_streams.id, 'transactional',"
                " 'retries_exhausted', 'HTTP 503', 3, now() - g * interval '1 minute',"
                " CASE WHEN g % 2 = 0 THEN now() END"
                " FROM their_streams, generate_series(1, :letters) AS g"
            ),
            {"accounts": accounts, "streams": streams, "letters": letters},
        )


def test_each_filter_of_the_dead_letters_list_reads_a_page_of_its_own_index(
    runtime, client, account_key, other_account_key, make_stream
):
    never_replayed = _account(runtime, make_stream, account_key, busy_replayed=False)
    all_replayed = _account(runtime, make_stream, other_account_key, busy_replayed=True)
    _other_accounts(runtime)
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # As autovacuum leaves a table letters were added to: analyzed, its pages all visible.
        connection.execute(text("VACUUM ANALYZE dead_letters"))

    # (account, filter, total): first the few letters, those of the quiet stream and those in
    # the state the account's busy stream is not in, behind the busy stream's many; then the
    # many.
    lists = [
        (never_replayed, f"stream_id={never_replayed.quiet}", FEW),
        (never_replayed, "replayed=true", FEW // 2),
        (all_replayed, f"stream_id={all_replayed.quiet}", FEW),
        (all_replayed, "replayed=false", FEW // 2),
        (never_replayed, f"stream_id={never_replayed.busy}", MANY),
        (never_replayed, "replayed=false", MANY + FEW // 2),
        (all_replayed, "replayed=true", MANY + FEW // 2),
    ]
    for account, query, total in lists:
        reads = statements_run(
            runtime.engine,
            partial(_list, client, account, query, total),
            lambda statement: (
                statement.lstrip().startswith("SELECT") and "FROM dead_letters" in statement
            ),
        )
        [count, page] = sorted(reads, key=lambda read: "count(" not in read[0])
        with runtime.engine.connect() as connection:
            for plan in run_plans(connection, *page):
                assert _letters_read(plan) <= PER_PAGE, (query, plan)
                assert "Sort" not in plan, (query, plan)  # the index gives the list's order
            if total <= FEW:
                # A total counts the filter's letters. One that matches half the table may as
                # well be counted from the table; one that matches a few must not read more.
                for plan in run_plans(connection, *count):
                    assert _letters_read(plan) == total, (query, plan)


def _list(client, account: Account, query: str, total: int) -> None:
    listed = client.get(
        f"/api/v1/dead-letters?{query}&per_page={PER_PAGE}", headers=auth(account.key)
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == total, (query, listed.json()["total"])
    assert len(listed.json()["items"]) == PER_PAGE, query


def _letters_read(plan: str) -> int:
    """The entries the plan's scans of dead_letters and of its indexes read, those their
    filters dropped included (a bitmap heap scan reads what its index scans found)."""
    read = 0
    lines = plan.splitlines()
    for at, line in enumerate(lines):
        scan = re.search(
            r"(?:Seq Scan|Index Scan|Index Only Scan) .*on (?:dead_letters|ix_dead_letters_\w+) "
            r".*actual rows=(\d+) loops=(\d+)",
            line,
        )
        if scan is None:
            continue
        rows, loops = int(scan.group(1)), int(scan.group(2))
        for detail in lines[at + 1 :]:
            if "->" in detail:
                break
            dropped = re.search(r"Rows Removed by Filter: (\d+)", detail)
            if dropped:
                rows += int(dropped.group(1))
        read += rows * loops
    return read
