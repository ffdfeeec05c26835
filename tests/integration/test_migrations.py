"""The Alembic migrations build exactly the tables the code declares, on PostgreSQL and on
SQLite (the ``streams dev`` default)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from core.database import build_engine
from core.migrate import upgrade
from schemas.tables import Base


def drift(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_migrations_match_the_models_on_postgresql(database_url):
    engine = build_engine(database_url)
    try:
        assert drift(engine) == []
    finally:
        engine.dispose()


def test_migrations_run_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    upgrade(url)  # a second run is a no-op
    engine = create_engine(url)
    try:
        assert drift(engine) == []
    finally:
        engine.dispose()
