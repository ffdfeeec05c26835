"""``workers.claims.claim_ungated``: the load folded into the claim takes only messages that
no gate can stop, and leaves every other one, unchanged, to the full pipeline."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.credentials import SecretBox
from core.settings import SandboxSettings
from core.suppressions import suppress
from schemas.tables import Message, MessageEvent
from tests.conftest import auth, message
from tests.deliveries import delivery_with
from tests.otp_codes import OTHER_PHONE, PHONE, send_code
from workers.admission import RedisAdmission
from workers.claims import LIMIT_SETTINGS, claim_ungated
from workers.delivery import Delivery
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider

NO_GATED_PROVIDERS: frozenset[tuple[bool, str]] = frozenset()


def send_one(client, stream, **fields) -> uuid.UUID:
    response = client.post(
        "/v1/messages", json={"messages": [message(**fields)]}, headers=auth(stream["token"])
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["results"][0]["message_id"])


def claim(runtime, message_id, *, now=None, gated=NO_GATED_PROVIDERS) -> list:
    with runtime.session_factory() as session:
        rows = claim_ungated(session, [message_id], now or runtime.clock(), 60, gated, 5)
        session.commit()
    return rows


def status_and_attempts(runtime, message_id) -> tuple[str, int]:
    with runtime.session_factory() as session:
        row = session.execute(
            select(Message.status, Message.attempts).where(Message.id == message_id)
        ).one()
    return row.status, row.attempts


def test_a_plain_message_is_loaded_and_claimed(runtime, client, make_stream):
    message_id = send_one(client, make_stream())
    rows = claim(runtime, message_id)
    assert [(row.id, row.attempts, row.body) for row in rows] == [
        (message_id, 1, "Your parcel is on its way")
    ]
    assert status_and_attempts(runtime, message_id) == ("sending", 1)
    assert claim(runtime, message_id) == []  # claimed once only


@pytest.mark.parametrize("setting", LIMIT_SETTINGS)
def test_a_stream_with_a_limit_goes_through_admission(runtime, client, make_stream, setting):
    message_id = send_one(client, make_stream(settings={setting: 1000}))
    assert claim(runtime, message_id) == []
    assert status_and_attempts(runtime, message_id) == ("queued", 0)


def test_marketing_with_quiet_hours_waits_for_its_window(runtime, client, make_stream):
    window = {"start": "09:00", "end": "20:00", "timezone": "UTC"}
    stream = make_stream(type="marketing", settings={"quiet_hours": window})
    message_id = send_one(client, stream)
    assert claim(runtime, message_id) == []


def test_a_paused_stream_keeps_its_messages(runtime, client, make_stream, account_key):
    stream = make_stream()
    message_id = send_one(client, stream)
    client.post(f"/api/v1/streams/{stream['id']}/disable", headers=auth(account_key))
    assert claim(runtime, message_id) == []


def test_a_message_past_its_validity_is_left_to_expire(runtime, client, make_stream):
    message_id = send_one(client, make_stream(), validity_seconds=60)
    assert claim(runtime, message_id, now=runtime.clock() + timedelta(seconds=61)) == []
    assert status_and_attempts(runtime, message_id) == ("queued", 0)


def test_a_suppressed_recipient_is_checked_first(runtime, client, make_stream):
    stream = make_stream(type="marketing")
    message_id = send_one(client, stream)
    with runtime.session_factory() as session:
        account_id = session.scalar(select(Message.account_id).where(Message.id == message_id))
        suppress(session, account_id, "+972524265292", keyword="STOP", stream_id=None,
                 now=runtime.clock())  # fmt: skip
        session.commit()
    assert claim(runtime, message_id) == []


def test_a_provider_with_a_rate_of_its_own_goes_through_admission(runtime, client, make_stream):
    message_id = send_one(client, make_stream(demo=True))
    assert claim(runtime, message_id, gated=frozenset({(True, "transactional")})) == []
    assert len(claim(runtime, message_id, gated=frozenset({(False, "transactional")}))) == 1


def test_an_otp_message_with_its_sealed_text_is_loaded_and_claimed(runtime, client, otp_stream):
    """OTP is what must go out fastest: its sealed text does not send it the long way."""
    sent = send_code(client, otp_stream(code_mode="customer_code"), code="48213")
    assert sent.status_code == 202, sent.text
    message_id = uuid.UUID(sent.json()["message_id"])
    (row,) = claim(runtime, message_id)
    assert row.body == "Your code is *****"
    assert runtime.secret_box.open(row.sealed_body) == "Your code is 48213"
    assert status_and_attempts(runtime, message_id) == ("sending", 1)


def test_a_sealed_text_of_another_key_fails_alone_in_the_full_pipeline(runtime, client, otp_stream):
    stream = otp_stream()
    ids = []
    for phone in (PHONE, OTHER_PHONE):
        sent = send_code(client, stream, phone=phone)
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["message_id"])
    good, bad = ids
    with runtime.session_factory() as session:
        session.execute(
            update(Message)
            .where(Message.id == uuid.UUID(bad))
            .values(sealed_body=SecretBox("another secret key").seal("Your code is 11111"))
        )
        session.commit()
    carrier = SandboxProvider(SandboxSettings(receipt_delay_seconds=0), runtime.redis)
    delivery = Delivery(
        runtime, ProviderRegistry({"sandbox": carrier}, "sandbox"), RedisAdmission(runtime.redis)
    )
    result = delivery.deliver_many([bad, good])
    assert [(message_id, type(error)) for message_id, error in result.failed] == [(bad, ValueError)]
    assert status_and_attempts(runtime, uuid.UUID(good)) == ("delivered", 1)
    assert status_and_attempts(runtime, uuid.UUID(bad)) == ("queued", 0)


def test_a_message_whose_record_keeps_failing_fails_when_its_attempts_are_used_up(
    settings, runtime, client, make_stream
):
    """The carrier takes the message but answers with an id PostgreSQL cannot store: the
    record fails and the message stays ``sending`` until its claim lease runs out. Each
    claim is an attempt, so once ``max_send_attempts`` are used up it is neither claimed
    again (by a redelivered job) nor taken back by the relay: it fails as a dead letter,
    its outcome unknown. It is not offered forever."""
    import contextlib
    import dataclasses
    from datetime import timedelta

    from sqlalchemy import update

    from schemas.tables import DeadLetter
    from tests.deliveries import delivery_with
    from workers.providers.base import Accepted, OutboundMessage
    from workers.relay import Relay

    class PoisonIds(SandboxProvider):
        calls = 0

        def send(self, message: OutboundMessage) -> Accepted:
            PoisonIds.calls += 1
            return dataclasses.replace(super().send(message), provider_message_id="bad\x00id")

    runtime.settings = settings.model_copy(update={"max_send_attempts": 3})
    message_id = send_one(client, make_stream())
    delivery = delivery_with(runtime, PoisonIds(runtime.settings.sandbox, runtime.redis))
    lease = runtime.settings.claim_lease_seconds

    def lease_runs_out() -> None:
        with runtime.session_factory() as session:
            session.execute(
                update(Message)
                .where(Message.id == message_id, Message.status == "sending")
                .values(claimed_at=runtime.clock() - timedelta(seconds=lease + 1))
            )
            session.commit()

    reports = []
    for _ in range(5):  # a delivery job, the lease runs out, a redelivery, the relay sweeps
        for _job in range(2):
            with contextlib.suppress(Exception):  # the record failed: what the lease is for
                delivery.deliver(str(message_id), "transactional")
            lease_runs_out()
        reports.append(Relay(runtime).sweep())
    assert PoisonIds.calls == 3
    assert status_and_attempts(runtime, message_id) == ("failed", 3)
    assert sum(report.claims_spent for report in reports) == 1
    with runtime.session_factory() as session:
        found = session.get(Message, message_id)
        letter = session.scalar(select(DeadLetter).where(DeadLetter.message_id == message_id))
    assert found.error_code == "claim_lease_expired"
    assert letter is not None and letter.reason == "outcome_unknown"


class _TakesThenWaits(SandboxProvider):
    """The sandbox; once the carrier has taken a message, waits for ``go`` before answering
    (the worker's call still in flight)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.taken, self.go = threading.Event(), threading.Event()

    def send(self, message):
        accepted = super().send(message)
        self.taken.set()
        assert self.go.wait(30)
        return accepted


def test_a_worker_that_stalled_past_its_lease_leaves_the_new_claim_alone(
    runtime, client, make_stream
):
    """Invariant 2. Worker A claims and stalls (SIGSTOP, a long GC pause) past the claim lease;
    the relay takes the claim back and worker B claims it again and sends. When A resumes,
    its claim is no longer the message's: it must neither give B's claim back nor record
    anything over it, and B's send is the one recorded."""
    from workers.relay import Relay

    lease = 1.0
    runtime.settings = runtime.settings.model_copy(update={"claim_lease_seconds": lease})
    message_id = send_one(client, make_stream())
    runtime.redis.flushdb()  # the ingress' job: this test makes the deliveries itself

    worker_a = Delivery(
        runtime, ProviderRegistry.from_runtime(runtime), RedisAdmission(runtime.redis)
    )
    claimed, resumed = threading.Event(), threading.Event()
    send_and_record = worker_a._send_and_record

    def stalled(*args, **kwargs):
        claimed.set()
        assert resumed.wait(30)
        return send_and_record(*args, **kwargs)

    worker_a._send_and_record = stalled
    a = threading.Thread(target=worker_a.deliver_many, args=([str(message_id)],))
    a.start()
    assert claimed.wait(10)
    time.sleep(lease + 0.2)
    assert Relay(runtime).sweep().reclaimed == 1

    carrier = _TakesThenWaits(runtime.settings.sandbox, runtime.redis)
    worker_b = delivery_with(runtime, carrier)
    b = threading.Thread(target=worker_b.deliver_many, args=([str(message_id)],))
    b.start()
    assert carrier.taken.wait(10)
    held_by_b = status_and_attempts(runtime, message_id)
    assert held_by_b == ("sending", 2)

    resumed.set()  # A goes on: half its lease has passed, so it gives its claim back
    a.join(10)
    assert status_and_attempts(runtime, message_id) == held_by_b, "A touched B's claim"
    carrier.go.set()
    b.join(10)
    assert status_and_attempts(runtime, message_id) == ("delivered", 2)
    with runtime.session_factory() as session:
        history = session.scalars(
            select(MessageEvent.status)
            .where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id)
        ).all()
    assert history == ["queued", "sending", "queued", "sending", "sent", "delivered"]


def test_an_outcome_is_recorded_only_on_the_claim_it_was_sent_on(runtime, client, make_stream):
    """Invariant 2, at the mechanism: a claim taken since (the message's attempts moved on)
    is someone else's, so neither the record of a send (``move_many``) nor a retry or
    failure (``transition``) made with the old claim's attempt changes the message."""
    from core.message_states import Move, move_many, transition
    from schemas.enums import MessageStatus

    message_id = send_one(client, make_stream())
    with runtime.session_factory() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(status="sending", attempts=2, claimed_at=runtime.clock())
        )
        session.commit()
    sent = ((MessageStatus.sent, None),)
    for claim, moved in ((1, False), (2, True)):
        with runtime.session_factory() as session:
            failed = transition(
                session,
                message_id,
                to=MessageStatus.failed,
                allowed_from=[MessageStatus.sending],
                at=runtime.clock(),
                claim=claim,
            )
            session.rollback()
            recorded = move_many(
                session,
                [Move(message_id, sent, claim=claim)],
                allowed_from=[MessageStatus.sending],
                at=runtime.clock(),
            )
            session.commit()
        assert (failed is not None, bool(recorded)) == (moved, moved)
        expected = ("sent", 2) if moved else ("sending", 2)
        assert status_and_attempts(runtime, message_id) == expected
