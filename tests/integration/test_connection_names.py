"""Each process names its PostgreSQL connections after its role, so ``pg_stat_activity``
tells an operator which pool a busy or waiting backend serves."""

from __future__ import annotations

from sqlalchemy import text

from core.runtime import build_runtime


def _application_name(runtime) -> str:  # type: ignore[no-untyped-def]
    with runtime.session_factory() as session:
        return session.scalar(
            text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        )


def test_a_runtime_names_its_connections_after_its_role(settings):
    worker = build_runtime(settings, role="streams-worker otp")
    plain = build_runtime(settings)
    try:
        assert _application_name(worker) == "streams-worker otp"
        assert _application_name(plain) == "streams"
    finally:
        worker.close()
        plain.close()
