"""The database engine and sessions. Built from settings; nothing connects at import time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, Table, create_engine, event, insert, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker

SessionFactory = sessionmaker[Session]


def build_engine(
    database_url: str, *, pool_size: int = 20, application_name: str | None = None
) -> Engine:
    """An engine for PostgreSQL (psycopg 3) or SQLite (the ``streams dev`` default).

    ``postgresql://`` URLs are pointed at the psycopg 3 driver. ``application_name`` is
    what PostgreSQL shows for this engine's connections (``pg_stat_activity``), so an
    operator can tell which pool a busy or waiting backend serves.
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
    connect_args = {"application_name": application_name} if application_name else {}
    return create_engine(
        url, pool_size=pool_size, max_overflow=0, pool_recycle=1800, connect_args=connect_args
    )


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
    add_on_conflict: tuple[Sequence[str], Sequence[str]] | None = None,
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows`` (dicts with the same keys) in one statement.

    On PostgreSQL the values travel as one array per column (``INSERT ... SELECT * FROM
    unnest(...)``): the statement stays short whatever the row count and its text is the
    same for every call, where a multi-row VALUES list of thousands of placeholders is
    re-parsed by the driver on every call, and an executemany goes through psycopg's
    pipeline mode, which costs more client CPU than the statement itself for a few rows.
    Elsewhere (SQLite) an ordinary executemany. Rows are inserted in the order given.

    Rows violating the unique key on ``skip_conflicts_on`` are skipped. With
    ``add_on_conflict=(key, columns)``, a row whose ``key`` exists adds its ``columns`` to
    the existing row's instead (a counter upsert; ``rows`` must not repeat a key). Returns
    the ``returning`` column of inserted rows.
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        statement: Any = (
            insert_ignoring_duplicates(session, table, list(skip_conflicts_on))
            if skip_conflicts_on
            else _insert_adding(session, table, *add_on_conflict)
            if add_on_conflict
            else insert(table)
        )
        if returning is None:
            session.execute(statement, list(rows))
            return []
        return list(session.execute(statement.returning(table.c[returning]), list(rows)).scalars())
    names = tuple(rows[0])
    statement = _unnest_insert(
        dialect,
        table,
        names,
        tuple(skip_conflicts_on),
        (tuple(add_on_conflict[0]), tuple(add_on_conflict[1])) if add_on_conflict else None,
        returning,
    )
    json_columns = _json_columns(table)
    params = {
        f"c{i}": [_json_text(row[name]) for row in rows]
        if name in json_columns
        else [row[name] for row in rows]
        for i, name in enumerate(names)
    }
    result = session.execute(statement, params)
    return list(result.scalars()) if returning is not None else []


@cache
def _json_columns(table: Table) -> frozenset[str]:
    """JSON columns travel as text arrays: psycopg cannot adapt a list of dicts."""
    return frozenset(c.name for c in table.columns if isinstance(c.type, JSON))


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


@cache
def _unnest_insert(  # type: ignore[no-untyped-def]
    dialect: Dialect,
    table: Table,
    names: tuple[str, ...],
    skip_conflicts_on: tuple[str, ...],
    add_on_conflict: tuple[tuple[str, ...], tuple[str, ...]] | None,
    returning: str | None,
):
    quote = dialect.identifier_preparer.quote
    arrays = ", ".join(
        f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
        if name not in _json_columns(table)
        else f"CAST(CAST(:c{i} AS TEXT[]) AS JSON[])"
        for i, name in enumerate(names)
    )
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"SELECT * FROM unnest({arrays})"
    )
    if skip_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(quote(c) for c in skip_conflicts_on)}) DO NOTHING"
    elif add_on_conflict:
        sql += " " + on_conflict_adding_sql(dialect, table, *add_on_conflict)
    if returning is not None:
        sql += f" RETURNING {quote(returning)}"
    return text(sql)


def dialect_insert(dialect_name: str, table: Any) -> Any:
    """The INSERT construct of a dialect by name: PostgreSQL's and SQLite's both have
    ``ON CONFLICT`` (``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
    from sqlalchemy.dialects import postgresql, sqlite

    module = postgresql if dialect_name == "postgresql" else sqlite
    return module.insert(table)


def on_conflict_adding_sql(
    dialect: Dialect, table: Table, key: Sequence[str], columns: Sequence[str]
) -> str:
    """``ON CONFLICT (key) DO UPDATE SET column = table.column + excluded.column``: the
    counter upsert of ``bulk_insert(add_on_conflict=...)``, for SQL written by hand."""
    quote = dialect.identifier_preparer.quote
    sums = ", ".join(
        f"{quote(c)} = {quote(table.name)}.{quote(c)} + excluded.{quote(c)}" for c in columns
    )
    return f"ON CONFLICT ({', '.join(quote(c) for c in key)}) DO UPDATE SET {sums}"


def _dialect_insert(session: Session, table: Any) -> Any:
    return dialect_insert(session.get_bind().dialect.name, table)


def _insert_adding(session: Session, table: Any, key: Sequence[str], columns: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET column = column + excluded.column``."""
    statement = _dialect_insert(session, table)
    return statement.on_conflict_do_update(
        index_elements=list(key),
        set_={c: table.c[c] + statement.excluded[c] for c in columns},
    )


def insert_ignoring_duplicates(session: Session, table: Any, conflict_columns: list[str]) -> Any:
    """An INSERT that skips rows violating the unique key on ``conflict_columns``."""
    return _dialect_insert(session, table).on_conflict_do_nothing(index_elements=conflict_columns)
