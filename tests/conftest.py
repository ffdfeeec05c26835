"""Real-service fixtures: a PostgreSQL database per test session (built by the Alembic
migrations) and a clean Redis database per test. No mocks of either.

Point them elsewhere with ``STREAMS_TEST_POSTGRES_URL`` (a server URL; a database is created
on it) and ``STREAMS_TEST_REDIS_URL``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.accounts import create_account
from core.clock import utcnow
from core.migrate import upgrade
from core.runtime import Runtime, build_runtime
from core.settings import SandboxSettings, Settings
from dispatcher.app import create_app
from schemas.tables import Base
from tests.fakes.http_sms import FakeHttpSms
from tests.fakes.server import serve
from workers import broker_epoch

POSTGRES_SERVER = os.environ.get(
    "STREAMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("STREAMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CLIENT_IP = "203.0.113.10"
#: Fixtures of their own modules (OTP: a movable clock, OTP streams).
pytest_plugins = ["tests.otp_codes", "tests.log_secrecy"]


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"streams_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_SERVER.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The test's Redis, empty but for the broker's sentinel, as ``streams migrate`` leaves
    a deployment's (``workers.broker_epoch``): a relay takes it for a Redis in use, not one
    that lost its data."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    broker_epoch.begin(client, utcnow(), marked_waiting=False)
    yield client
    client.flushdb()
    client.close()


def base_settings(database_url: str, **overrides: Any) -> Settings:
    """What every test's settings start from: the test database and Redis db, a fixed
    secret key, a sandbox that answers and reports delivery at once, and nothing read from
    the environment or a ``.env`` file."""
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        secret_key="test-secret-key-not-for-production",
        sandbox=SandboxSettings(latency_ms=0, receipt_delay_seconds=0),
        _env_file=None,
        **overrides,
    )


@pytest.fixture
def settings(database_url: str, redis_client: redis.Redis) -> Settings:
    return base_settings(database_url, relay_grace_seconds=0, relay_interval_seconds=0.2)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = build_runtime(settings)
    _empty_database(runtime)
    yield runtime
    runtime.close()


def _empty_database(runtime: Runtime) -> None:
    """Truncate every table. A background thread of the previous test (a pool being torn
    down, a flush) may still hold a connection; the test database is ours alone, so end
    such sessions rather than wait on, or deadlock with, them."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    for attempt in range(5):
        try:
            with runtime.engine.begin() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                connection.execute(text("SET LOCAL lock_timeout = '5s'"))
                connection.execute(text(f"TRUNCATE {tables} CASCADE"))
            return
        except DBAPIError:
            if attempt == 4:
                raise
            runtime.engine.dispose()


@pytest.fixture
def app(settings: Settings, runtime: Runtime) -> Any:
    return create_app(settings, runtime=runtime)


@pytest.fixture
def client_from(app: Any) -> Iterator[Callable[[str], TestClient]]:
    """``client_from("198.51.100.7")``: a client whose socket peer is that address."""
    clients: list[TestClient] = []

    def make(ip: str = CLIENT_IP) -> TestClient:
        client = TestClient(app, client=(ip, 40000), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_from: Callable[[str], TestClient]) -> TestClient:
    return client_from(CLIENT_IP)


@pytest.fixture
def account_key(runtime: Runtime) -> str:
    return create_account(runtime.session_factory, "Acme")[1]


@pytest.fixture
def other_account_key(runtime: Runtime) -> str:
    return create_account(runtime.session_factory, "Globex")[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For a test that calls ``core.logs.configure_logging``: put the logging back after."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


@pytest.fixture
def sms() -> Iterator[FakeHttpSms]:
    """A fake HTTP SMS API (``tests/fakes/http_sms.py``) on a local port, answering at once;
    a module that needs it slower defines its own."""
    fake = FakeHttpSms()
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake


@pytest.fixture
def make_stream(client: TestClient, account_key: str) -> Callable[..., dict[str, Any]]:
    """Create a stream through the API; returns its body plus ``token``."""

    def make(key: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"name": "Orders", "type": "transactional", "default_sender": "Acme", **fields}
        response = client.post("/api/v1/streams", json=body, headers=auth(key or account_key))
        assert response.status_code == 201, response.text
        stream = response.json()
        token = client.get(
            f"/api/v1/streams/{stream['id']}/token", headers=auth(key or account_key)
        )
        stream["token"] = token.json()["token"]
        return stream

    return make


def message(**fields: Any) -> dict[str, Any]:
    return {
        "recipient_phone": "+972524265292",
        "message_content": "Your parcel is on its way",
        **fields,
    }
