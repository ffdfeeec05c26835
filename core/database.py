"""The database engine and sessions. Built from settings; nothing connects at import time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, insert, text
from sqlalchemy.orm import Session, sessionmaker

SessionFactory = sessionmaker[Session]


def build_engine(database_url: str, *, pool_size: int = 20) -> Engine:
    """An engine for PostgreSQL (psycopg 3) or SQLite (the ``streams dev`` default).

    ``postgresql://`` URLs are pointed at the psycopg 3 driver.
    """
    url = database_url
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        _ensure_sqlite_directory(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per checkout. A connection that died with the
    # server fails its statement, is invalidated, and the request answers 503 (retryable).
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)


def build_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, expire_on_commit=False)


def _ensure_sqlite_directory(url: str) -> None:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def bulk_insert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    skip_conflicts_on: Sequence[str] = (),
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows`` (dicts with the same keys) in one statement.

    On PostgreSQL the values travel as one array per column (``INSERT ... SELECT * FROM
    unnest(...)``): the statement stays short whatever the row count, where a multi-row
    VALUES list of thousands of placeholders is re-parsed by the driver on every call.
    Elsewhere (SQLite) an ordinary executemany. Rows violating the unique key on
    ``skip_conflicts_on`` are skipped. Returns the ``returning`` column of inserted rows.
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql" or len(rows) < _UNNEST_FROM_ROWS:
        statement: Any = insert(table)
        if skip_conflicts_on:
            from sqlalchemy.dialects import postgresql, sqlite

            module = postgresql if dialect.name == "postgresql" else sqlite
            statement = module.insert(table).on_conflict_do_nothing(
                index_elements=list(skip_conflicts_on)
            )
        if returning is None:
            session.execute(statement, list(rows))
            return []
        return list(session.execute(statement.returning(table.c[returning]), list(rows)).scalars())
    quote = dialect.identifier_preparer.quote
    names = list(rows[0])
    arrays = ", ".join(
        f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
        for i, name in enumerate(names)
    )
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"SELECT * FROM unnest({arrays})"
    )
    if skip_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(quote(c) for c in skip_conflicts_on)}) DO NOTHING"
    if returning is not None:
        sql += f" RETURNING {quote(returning)}"
    params = {f"c{i}": [row[name] for row in rows] for i, name in enumerate(names)}
    result = session.execute(text(sql), params)
    return list(result.scalars()) if returning is not None else []


_UNNEST_FROM_ROWS = 4
