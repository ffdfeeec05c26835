"""``GET /api/v1/realtime``: a snapshot per stream each second over Server-Sent Events, fed
through Redis from any process, filtered, account-scoped, and leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from core import metrics
from core.realtime_activity import READER_CLIENT_NAME
from dispatcher.app import create_app
from dispatcher.realtime_feed import FEED_TASK_NAME
from tests.conftest import REDIS_URL, auth, message
from tests.processes import free_port, wait_until, worker_pool
from workers.pool import start_worker


@contextmanager
def serving(app: Any) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """The app on a real uvicorn server (SSE needs a real connection), in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", loop
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        loop.close()


@contextmanager
def feed(base: str, key: str, **params: Any) -> Iterator[Callable[[float], list[dict]]]:
    """Open the feed; yields ``read(seconds)``: the snapshots received in that time."""
    with httpx.stream(
        "GET", base + "/api/v1/realtime", params=params, headers=auth(key), timeout=10
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()

        def read(seconds: float, until: Callable[[dict], bool] | None = None) -> list[dict]:
            deadline = time.monotonic() + seconds
            snapshots: list[dict] = []
            event = None
            for line in lines:
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "snapshot":
                    snapshot = json.loads(line.removeprefix("data: "))
                    snapshot["received"] = time.monotonic()
                    snapshots.append(snapshot)
                    if until is not None and until(snapshot):
                        break
                if time.monotonic() > deadline:
                    break
            return snapshots

        yield read


def ids(snapshots: list[dict]) -> set[str]:
    return {s["stream_id"] for s in snapshots}


@pytest.fixture
def served(app):
    with serving(app) as (base, loop):
        yield base, loop


@pytest.fixture
def streams(make_stream, other_account_key):
    return {
        "orders": make_stream(name="Orders", tags=["shop"], demo=True),
        "login": make_stream(name="Login codes", type="otp", tags=["auth"], demo=True),
        "foreign": make_stream(key=other_account_key, name="Orders elsewhere", demo=True),
    }


def test_a_snapshot_arrives_within_two_seconds_of_activity(
    served, client, runtime, account_key, streams
):
    base, _ = served
    orders, login = streams["orders"]["id"], streams["login"]["id"]
    with feed(base, account_key) as read:
        first = read(1.5)
        assert ids(first) == {orders, login}
        sent_at = time.monotonic()
        accepted = client.post(
            "/v1/messages",
            json={"messages": [message() for _ in range(3)]},
            headers=auth(streams["orders"]["token"]),
        )
        assert accepted.status_code == 202
        seen = read(3, until=lambda s: s["stream_id"] == orders and s["in_per_second"] == 3)
        hit = seen[-1]
        assert hit["stream_id"] == orders and hit["in_per_second"] == 3
        assert hit["received"] - sent_at <= 2.0
        assert hit["in_flight"] == 3
        assert hit["status"] == "sending"
        assert {s["stream_id"] for s in seen} <= {orders, login}
        assert all(s["in_flight"] == 0 for s in seen if s["stream_id"] == login)

        worker = start_worker(runtime, ["transactional"], threads=2)
        try:
            seen = read(5, until=lambda s: s["stream_id"] == orders and s["out_per_second"] == 3)
            assert seen[-1]["out_per_second"] == 3
            seen = read(5, until=lambda s: s["stream_id"] == orders and s["in_flight"] == 0)
            assert seen[-1]["in_flight"] == 0
        finally:
            worker.stop(timeout=5_000)
        quiet = [s for s in read(1.5) if s["stream_id"] == login]
        assert quiet and all(
            (s["in_per_second"], s["out_per_second"], s["in_flight"], s["errors_last_minute"])
            == (0, 0, 0, 0)
            for s in quiet
        )


def test_invariant_4_another_accounts_streams_never_appear(
    served, client, account_key, other_account_key, streams
):
    base, _ = served
    client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(streams["foreign"]["token"])
    )
    with feed(base, account_key) as read:
        mine = read(2.5)
    with feed(base, other_account_key) as read:
        theirs = read(2.5)
    assert streams["foreign"]["id"] not in ids(mine) and ids(mine)
    assert ids(theirs) == {streams["foreign"]["id"]}
    assert any(s["in_flight"] == 1 for s in theirs)


def test_filters_by_name_tag_and_status(served, client, account_key, streams):
    base, _ = served
    orders, login = streams["orders"]["id"], streams["login"]["id"]
    client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(streams["orders"]["token"])
    )
    cases = [
        ({"name": "ORD"}, {orders}),
        ({"tag": "auth"}, {login}),
        ({"tag": ["shop", "auth"]}, set()),
        ({"status": "sending"}, {orders}),
        ({"status": "ready"}, {login}),
        ({"name": "%"}, set()),
    ]
    for params, expected in cases:
        with feed(base, account_key, **params) as read:
            assert ids(read(1.5)) == expected, params


def test_activity_in_another_process_reaches_the_feed_through_redis(
    served, client, settings, account_key, streams, tmp_path
):
    """The worker runs in its own process; the feed learns of its sends and errors only
    through the Redis counters."""
    base, _ = served
    orders = streams["orders"]["id"]
    client.post(
        "/v1/messages",
        json={"messages": [message() for _ in range(4)]},
        headers=auth(streams["orders"]["token"]),
    )
    with (
        worker_pool(settings, tmp_path / "worker.log", sandbox_failure_rate=1),
        feed(base, account_key) as read,
    ):
        seen = read(20, until=lambda s: s["stream_id"] == orders and s["errors_last_minute"] == 4)
    assert seen[-1]["errors_last_minute"] == 4, (tmp_path / "worker.log").read_text()[-2000:]


def test_a_client_that_leaves_leaves_nothing_running(served, app, runtime, account_key, streams):
    base, loop = served
    limiter = app.state.feed_limiter
    gauge_before = metrics.REALTIME_FEEDS._value.get()

    def readers() -> list[str]:
        return [
            entry
            for entry in runtime.redis.client_list()
            if entry["name"] == READER_CLIENT_NAME and entry["db"] == REDIS_URL.rsplit("/", 1)[1]
        ]

    def feed_tasks() -> int:
        async def count() -> int:
            return sum(1 for t in asyncio.all_tasks() if t.get_name() == FEED_TASK_NAME)

        return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=5)

    with feed(base, account_key) as read:
        assert read(1.5)
        assert limiter.open_feeds() == 1
        assert len(readers()) == 1
        assert feed_tasks() == 2  # the producer and the disconnect watcher
        assert metrics.REALTIME_FEEDS._value.get() == gauge_before + 1
    assert wait_until(lambda: limiter.open_feeds() == 0 and feed_tasks() == 0, timeout=5)
    assert wait_until(lambda: readers() == [], timeout=5)
    assert metrics.REALTIME_FEEDS._value.get() == gauge_before


def test_an_account_may_hold_five_feeds(served, account_key, other_account_key, streams):
    base, _ = served
    with (
        feed(base, account_key) as a,
        feed(base, account_key) as b,
        feed(base, account_key) as c,
        feed(base, account_key) as d,
        feed(base, account_key) as e,
    ):
        for read in (a, b, c, d, e):
            assert read(0.1) is not None
        refused = httpx.get(base + "/api/v1/realtime", headers=auth(account_key), timeout=5)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_feeds"
        with feed(base, other_account_key) as theirs:
            assert ids(theirs(1.5)) == {streams["foreign"]["id"]}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "busy"}, "status"),
        ({"tag": "x" * 65}, "tag[0]"),
        ({"tag": "\ufdfa" * 4}, "tag[0]"),
        ({"name": "n" * 201}, "name"),
        # Refused before the feed starts: a NUL would end a running feed at its first query.
        ({"name": "a\x00"}, "name"),
        ({"tag": "a\x00"}, "tag[0]"),
    ],
)
def test_invariant_7_bad_filters_are_refused_naming_the_field(client, account_key, params, field):
    response = client.get("/api/v1/realtime", params=params, headers=auth(account_key))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_the_feed_needs_an_account_key(client, streams):
    assert client.get("/api/v1/realtime").status_code == 401
    response = client.get("/api/v1/realtime", headers=auth(streams["orders"]["token"]))
    assert response.status_code == 401


def test_without_redis_the_feed_works_in_process(settings, runtime, account_key):
    """``streams dev``: no Redis, workers in the ingress process; counters in memory."""
    from fastapi.testclient import TestClient

    from tests.conftest import CLIENT_IP

    dev = settings.model_copy(update={"redis_url": None})
    app = create_app(dev)
    try:
        local = TestClient(app, client=(CLIENT_IP, 40000))
        stream = local.post(
            "/api/v1/streams",
            json={"name": "Dev", "type": "transactional", "demo": True},
            headers=auth(account_key),
        ).json()
        token = local.get(f"/api/v1/streams/{stream['id']}/token", headers=auth(account_key))
        with serving(app) as (base, _), feed(base, account_key) as read:
            read(1.2)
            local.post(
                "/v1/messages",
                json={"messages": [message(), message()]},
                headers=auth(token.json()["token"]),
            )
            seen = read(3, until=lambda s: s["in_per_second"] == 2)
            assert seen[-1]["stream_id"] == stream["id"] and seen[-1]["in_per_second"] == 2
    finally:
        app.state.runtime.close()


def test_a_redis_that_hangs_does_not_hold_up_a_commit():
    """The counters have their own client with a 1 s timeout: the feed misses a beat, the
    worker that committed goes on."""
    import socket
    import uuid
    from datetime import UTC, datetime

    from core.realtime_activity import RedisActivityCounters
    from schemas.enums import MessageStatus
    from schemas.events import StatusChange

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    counters = RedisActivityCounters(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    change = StatusChange(
        message_id=uuid.uuid4(),
        stream_id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        stream_type="otp",
        status=MessageStatus.sent,
        at=datetime.now(UTC),
        segments=1,
    )
    started = time.monotonic()
    counters.record([change])
    assert time.monotonic() - started < 3
    counters.close()
    silent.close()
