"""The statements some code runs, and their plans: for tests that hold a query to its index.
A statement is captured as the code sends it, then explained with its own parameters, under
the custom plan PostgreSQL makes for those values and under the generic plan it may settle
on for a statement psycopg has prepared."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event


def statements_run(
    engine: Engine, work: Callable[[], None], keep: Callable[[str], bool]
) -> list[tuple[str, dict[str, Any]]]:
    """The statements, with their parameters, that ``work`` ran on ``engine`` and ``keep``
    accepts."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(_conn, _cursor, statement: str, parameters: Any, _context, _many) -> None:
        if keep(statement):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def generic_plan(
    connection: Connection, statement: str, parameters: dict[str, Any], *, analyze: bool = False
) -> str:
    """The plan PostgreSQL uses for ``statement`` once it settles on a generic plan, as it may
    for a statement psycopg has prepared (the values of the parameters unknown to it); with
    ``analyze``, run, with the rows each step read."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", placeholder, statement)
    raw = connection.connection.driver_connection
    values = psycopg.ClientCursor(raw).mogrify(
        ", ".join(["%s"] * len(names)), [parameters[name] for name in names]
    )
    with raw.cursor() as cursor:
        cursor.execute(f"PREPARE planned AS {prepared}")
        try:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            explain = "EXPLAIN (ANALYZE, TIMING OFF)" if analyze else "EXPLAIN"
            cursor.execute(f"{explain} EXECUTE planned({values})")
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE planned")
            cursor.execute("RESET plan_cache_mode")


def run_plans(
    connection: Connection, statement: str, parameters: dict[str, Any]
) -> tuple[str, str]:
    """``statement`` run under EXPLAIN ANALYZE with its custom plan, then its generic one."""
    custom = connection.exec_driver_sql(
        "EXPLAIN (ANALYZE, TIMING OFF) " + statement, parameters
    ).scalars()
    return "\n".join(custom), generic_plan(connection, statement, parameters, analyze=True)
