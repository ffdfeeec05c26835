"""Invariant 6: each stream type has its own queue and worker pool, so an OTP message is not
stuck behind a marketing backlog, nor behind marketing's place in a carrier's rate. (Latency
under load is measured in bench/.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from core.clock import as_utc
from schemas.tables import Message
from tests.conftest import auth, message
from tests.processes import wait_until
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.pool import start_worker
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider


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


def test_an_otp_code_goes_ahead_of_marketing_parked_on_a_shared_carrier(
    client, runtime, make_stream
):
    """Both streams send through a carrier with a fleet-wide rate of one message in 5 s. A
    campaign of 30 has taken one turn and parked the rest on the carrier's schedule, up to
    two and a half minutes ahead. A login code sent then waits for the turn already paid
    for, not behind the campaign: it is parked for a place of its own at the carrier's next
    turn, and the campaign's later places come after it."""
    carrier = SandboxProvider(
        runtime.settings.sandbox.model_copy(update={"max_per_second": 0.2}), runtime.redis
    )
    delivery = Delivery(
        runtime,
        ProviderRegistry({"sandbox": carrier}, "sandbox"),
        RedisAdmission(runtime.redis),
        sleep=lambda seconds: None,
    )
    marketing = make_stream(name="Spring sale", type="marketing")
    otp = make_stream(name="Login codes", type="otp")
    campaign = client.post(
        "/v1/messages",
        json={"messages": [message(recipient_phone=f"+97252420{i:04d}") for i in range(30)]},
        headers=auth(marketing["token"]),
    ).json()["results"]
    for sent in campaign:
        delivery.deliver(sent["message_id"], "marketing")
    code = client.post(
        "/v1/messages",
        json={"messages": [message(message_content="Your code is 48213")]},
        headers=auth(otp["token"]),
    ).json()["results"][0]["message_id"]
    asked = runtime.clock()
    delivery.deliver(code, "otp")
    late = client.post(
        "/v1/messages", json={"messages": [message()]}, headers=auth(marketing["token"])
    ).json()["results"][0]["message_id"]
    delivery.deliver(late, "marketing")

    def held_until(message_id: str):  # noqa: ANN202
        with runtime.session_factory() as session:
            row = session.get(Message, uuid.UUID(message_id))
            assert row is not None and row.hold_reason == "rate_limited", row
            return as_utc(row.not_before)

    campaign_places = [held_until(sent["message_id"]) for sent in campaign[1:]]
    assert max(campaign_places) - asked > timedelta(seconds=100)
    assert held_until(code) - asked <= timedelta(seconds=6)
    assert held_until(late) > max(campaign_places)
