"""Helpers for the OTP tests: a clock the test moves, OTP streams, and reading back the code a
message carries (from its sealed text, as only the sending step may)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from schemas.tables import Message
from tests.conftest import auth

PHONE = "+972524265292"
OTHER_PHONE = "+972524265293"


class MovableClock:
    """The runtime's clock, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(runtime) -> MovableClock:
    movable = MovableClock(datetime.now(UTC).replace(microsecond=0))
    runtime.clock = movable
    return movable


@pytest.fixture
def otp_stream(make_stream) -> Callable[..., dict[str, Any]]:
    """``otp_stream(code_length=6, ...)``: a ready demo OTP stream with those settings."""

    def make(key: str | None = None, name: str = "Login codes", **settings: Any) -> dict[str, Any]:
        return make_stream(key=key, name=name, type="otp", demo=True, settings=settings)

    return make


def send_code(client, stream: dict[str, Any], phone: str = PHONE, **fields: Any):
    # json.dumps writes a lone surrogate as its "\ud800" escape; httpx's encoder cannot.
    return client.post(
        "/v1/otp/send",
        content=json.dumps({"recipient_phone": phone, **fields}),
        headers={**auth(stream["token"]), "Content-Type": "application/json"},
    )


def verify(client, stream: dict[str, Any], code: str, phone: str = PHONE):
    return client.post(
        "/v1/otp/verify",
        json={"recipient_phone": phone, "code": code},
        headers=auth(stream["token"]),
    )


def sent_text(runtime, message_id: str) -> tuple[str, str]:
    """(the text the carrier gets, the masked text everyone else sees) of a message."""
    with runtime.session_factory() as session:
        row = session.execute(
            select(Message.sealed_body, Message.body).where(Message.id == uuid.UUID(message_id))
        ).one()
    assert row.sealed_body is not None, "the sealed text is kept until the message is sent"
    return runtime.secret_box.open(row.sealed_body), row.body


def code_of(runtime, message_id: str) -> str:
    """The code a not-yet-sent OTP message carries: the characters its masked text hides."""
    text, masked = sent_text(runtime, message_id)
    assert len(text) == len(masked)
    return "".join(real for real, shown in zip(text, masked, strict=True) if shown == "*")


def together(calls: int, action):  # type: ignore[no-untyped-def]
    """Run ``action(i)`` on ``calls`` threads released at the same moment."""
    barrier = threading.Barrier(calls)

    def run(index: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(run, range(calls)))
