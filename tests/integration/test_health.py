"""``/healthz`` (the process is up) and ``/readyz`` (the database and Redis really answer)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from dispatcher.app import create_app
from tests.processes import free_port, private_redis


def test_ready_when_the_database_and_redis_answer(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_not_ready_when_redis_is_down_but_still_alive(settings, runtime):
    with private_redis() as (url, stop, start):
        app = create_app(settings.model_copy(update={"redis_url": url}))
        client = TestClient(app)
        assert client.get("/readyz").status_code == 200
        stop()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert "redis" in response.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
        start()
        assert client.get("/readyz").status_code == 200
        app.state.runtime.close()


def test_not_ready_when_the_database_is_unreachable(settings, runtime):
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/streams"
    app = create_app(settings.model_copy(update={"database_url": nowhere}))
    try:
        response = TestClient(app).get("/readyz")
        assert response.status_code == 503
        assert "database" in response.json()["error"]["message"]
    finally:
        app.state.runtime.close()
