"""Why a verification fails and how long a resend waits (``dispatcher.otp``). Pure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.otp import CodeState, cooldown_left, failure_of

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def state(**changes) -> CodeState:  # type: ignore[no-untyped-def]
    fields = {
        "id": uuid.uuid4(),
        "code_digest": "d" * 64,
        "attempts_left": 3,
        "expires_at": NOW + timedelta(minutes=5),
        "used_at": None,
    }
    return CodeState(**{**fields, **changes})


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, "no_code"),
        (state(), None),
        (state(used_at=NOW), "used"),
        (state(attempts_left=0), "too_many_failures"),
        (state(expires_at=NOW), "expired"),
        (state(expires_at=NOW - timedelta(seconds=1)), "expired"),
        (state(expires_at=NOW + timedelta(microseconds=1)), None),
        (state(used_at=NOW, attempts_left=0, expires_at=NOW), "used"),
        (state(attempts_left=0, expires_at=NOW), "too_many_failures"),
        (state(expires_at=(NOW + timedelta(seconds=1)).replace(tzinfo=None)), None),  # SQLite
    ],
)
def test_failure_of(code, expected) -> None:
    assert failure_of(code, NOW) == expected


@pytest.mark.parametrize(
    ("sent_seconds_ago", "used", "cooldown", "expected"),
    [
        (0, False, 30, 30),
        (10.2, False, 30, 20),
        (29.5, False, 30, 1),
        (30, False, 30, 0),
        (31, False, 30, 0),
        (0, True, 30, 0),
        (0, False, 0, 0),
    ],
)
def test_cooldown_left(sent_seconds_ago, used, cooldown, expected) -> None:
    sent_at = NOW - timedelta(seconds=sent_seconds_ago)
    assert cooldown_left(sent_at, NOW if used else None, cooldown, NOW) == expected
