"""``workers.claims.claim_ungated``: the load folded into the claim takes only messages that
no gate can stop, and leaves every other one, unchanged, to the full pipeline."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from core.suppressions import suppress
from schemas.tables import Message
from tests.conftest import auth, message
from workers.claims import LIMIT_SETTINGS, claim_ungated

NO_GATED_PROVIDERS: frozenset[tuple[bool, str]] = frozenset()


def send_one(client, stream, **fields) -> uuid.UUID:
    response = client.post(
        "/v1/messages", json={"messages": [message(**fields)]}, headers=auth(stream["token"])
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["results"][0]["message_id"])


def claim(runtime, message_id, *, now=None, gated=NO_GATED_PROVIDERS) -> list:
    with runtime.session_factory() as session:
        rows = claim_ungated(session, [message_id], now or runtime.clock(), 60, gated)
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
