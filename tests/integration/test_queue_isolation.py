"""Invariant 6: each stream type has its own queue and worker pool, so an OTP message is not
stuck behind a marketing backlog. (Latency under load is measured in bench/.)"""

from __future__ import annotations

from sqlalchemy import func, select

from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import wait_until
from workers.pool import start_worker


def test_invariant_6_otp_is_never_stuck_behind_marketing(client, runtime, make_stream, account_key):
    marketing = make_stream(name="Promo", type="marketing")
    otp = make_stream(name="Login codes", type="otp")
    for chunk in range(2):
        backlog = [message(internal_id=f"m{chunk}-{i}") for i in range(1000)]
        response = client.post(
            "/v1/messages", json={"messages": backlog}, headers=auth(marketing["token"])
        )
        assert response.json()["accepted"] == 1000
    backlog = runtime.redis.llen("dramatiq:marketing")
    assert backlog > 0

    worker = start_worker(runtime, ["otp"], threads=2)
    try:
        sent = client.post(
            "/v1/messages",
            json={"messages": [message(message_content="Your code is 4821")]},
            headers=auth(otp["token"]),
        ).json()["results"][0]
        assert wait_until(
            lambda: (
                client.get(f"/v1/messages/{sent['message_id']}", headers=auth(otp["token"])).json()[
                    "status"
                ]
                == "delivered"
            ),
            timeout=10,
        )
    finally:
        worker.stop(timeout=5_000)
    assert runtime.redis.llen("dramatiq:marketing") == backlog, (
        "the OTP pool never touched marketing"
    )
    with runtime.session_factory() as session:
        waiting = session.scalar(
            select(func.count()).where(
                Message.stream_type == "marketing", Message.status == "queued"
            )
        )
    assert waiting == 2000
