"""What makes a stream ready to send, and the status it shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.stream_rules import (
    ACTIVITY_WINDOW,
    REQUIRED_STEPS,
    accepts_sends,
    missing_steps,
    shown_status,
    stored_status,
)
from schemas.enums import StreamStatus, StreamType

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
COMPLETE_SETTINGS = {"template": "Your code is {code}", "callback_url": "https://example.com/mo"}
COMPLETE_WHATSAPP = {"phone_number_id": "1055", "access_token": "EAAG-whatsapp-token"}


def test_every_type_has_required_steps() -> None:
    assert set(REQUIRED_STEPS) == set(StreamType)


@pytest.mark.parametrize(
    ("stream_type", "sender", "demo", "settings", "whatsapp", "missing"),
    [
        # nothing set up
        (StreamType.marketing, None, False, {}, None, ["default_sender"]),
        (StreamType.transactional, None, False, {}, None, ["default_sender"]),
        (StreamType.otp, None, False, {}, None, ["default_sender", "settings.template"]),
        (StreamType.two_way, None, False, {}, None, ["default_sender", "settings.callback_url"]),
        (
            StreamType.whatsapp,
            None,
            False,
            {},
            None,
            ["whatsapp.phone_number_id", "whatsapp.access_token"],
        ),
        # everything set up
        (StreamType.marketing, "Acme", False, {}, None, []),
        (StreamType.transactional, "Acme", False, {}, None, []),
        (StreamType.otp, "Acme", False, COMPLETE_SETTINGS, None, []),
        (StreamType.two_way, "+972524265292", False, COMPLETE_SETTINGS, None, []),
        (StreamType.whatsapp, None, False, {}, COMPLETE_WHATSAPP, []),
        # half set up; empty values count as missing
        (StreamType.otp, "Acme", False, {"template": ""}, None, ["settings.template"]),
        (StreamType.otp, "", False, COMPLETE_SETTINGS, None, ["default_sender"]),
        (StreamType.otp, "Acme", False, {"template": None}, None, ["settings.template"]),
        (
            StreamType.two_way,
            "Acme",
            False,
            {"template": "{code}"},
            None,
            ["settings.callback_url"],
        ),
        (
            StreamType.whatsapp,
            None,
            False,
            {},
            {"phone_number_id": "1055"},
            ["whatsapp.access_token"],
        ),
        (
            StreamType.whatsapp,
            None,
            False,
            {},
            {"phone_number_id": "", "access_token": "EAAG"},
            ["whatsapp.phone_number_id"],
        ),
        (
            StreamType.whatsapp,
            None,
            False,
            {},
            {},
            ["whatsapp.phone_number_id", "whatsapp.access_token"],
        ),
        # a sender does not help a WhatsApp stream, nor WhatsApp details an SMS one
        (
            StreamType.whatsapp,
            "Acme",
            False,
            COMPLETE_SETTINGS,
            None,
            ["whatsapp.phone_number_id", "whatsapp.access_token"],
        ),
        (
            StreamType.marketing,
            None,
            False,
            COMPLETE_SETTINGS,
            COMPLETE_WHATSAPP,
            ["default_sender"],
        ),
        # demo streams send through the sandbox: carrier-facing steps are exempt, the rest not
        (StreamType.marketing, None, True, {}, None, []),
        (StreamType.transactional, None, True, {}, None, []),
        (StreamType.otp, None, True, {}, None, ["settings.template"]),
        (StreamType.otp, None, True, COMPLETE_SETTINGS, None, []),
        (StreamType.two_way, None, True, {}, None, ["settings.callback_url"]),
        (StreamType.two_way, None, True, COMPLETE_SETTINGS, None, []),
        (StreamType.whatsapp, None, True, {}, None, []),
    ],
)
def test_missing_steps(
    stream_type: StreamType,
    sender: str | None,
    demo: bool,
    settings: dict[str, Any],
    whatsapp: dict[str, Any] | None,
    missing: list[str],
) -> None:
    assert (
        missing_steps(
            stream_type, default_sender=sender, demo=demo, settings=settings, whatsapp=whatsapp
        )
        == missing
    )


@pytest.mark.parametrize(
    ("missing", "disabled", "restricted", "status"),
    [
        ([], False, False, StreamStatus.ready),
        (["default_sender"], False, False, StreamStatus.draft),
        ([], True, False, StreamStatus.disabled),
        (["default_sender"], True, False, StreamStatus.disabled),
        ([], False, True, StreamStatus.restricted),
        ([], True, True, StreamStatus.restricted),
        (["default_sender"], False, True, StreamStatus.restricted),
        (["default_sender"], True, True, StreamStatus.restricted),
    ],
)
def test_stored_status_precedence(
    missing: list[str], disabled: bool, restricted: bool, status: StreamStatus
) -> None:
    assert stored_status(missing=missing, disabled=disabled, restricted=restricted) is status


def test_activity_window_is_one_minute() -> None:
    assert timedelta(seconds=60) == ACTIVITY_WINDOW


@pytest.mark.parametrize(
    ("seconds_ago", "in_flight", "shown"),
    [
        (None, False, StreamStatus.ready),
        (None, True, StreamStatus.sending),
        (0, False, StreamStatus.sending),
        (59, False, StreamStatus.sending),
        (60, False, StreamStatus.sending),
        (60.5, False, StreamStatus.ready),
        (61, False, StreamStatus.ready),
        (3_600, False, StreamStatus.ready),
        (3_600, True, StreamStatus.sending),
        (-5, False, StreamStatus.sending),  # a clock a little ahead still counts as recent
    ],
)
def test_ready_shows_as_sending_while_active(
    seconds_ago: float | None, in_flight: bool, shown: StreamStatus
) -> None:
    last = None if seconds_ago is None else NOW - timedelta(seconds=seconds_ago)
    assert (
        shown_status(StreamStatus.ready, last_activity_at=last, in_flight=in_flight, now=NOW)
        is shown
    )


@pytest.mark.parametrize(
    "stored", [StreamStatus.draft, StreamStatus.disabled, StreamStatus.restricted]
)
@pytest.mark.parametrize(("seconds_ago", "in_flight"), [(None, False), (0, True), (61, False)])
def test_other_statuses_show_unchanged(
    stored: StreamStatus, seconds_ago: int | None, in_flight: bool
) -> None:
    last = None if seconds_ago is None else NOW - timedelta(seconds=seconds_ago)
    assert shown_status(stored, last_activity_at=last, in_flight=in_flight, now=NOW) is stored


@pytest.mark.parametrize(
    ("stored", "accepts"),
    [
        (StreamStatus.ready, True),
        (StreamStatus.draft, False),
        (StreamStatus.disabled, False),
        (StreamStatus.restricted, False),
        (StreamStatus.sending, False),  # never stored; shown only
    ],
)
def test_accepts_sends(stored: StreamStatus, accepts: bool) -> None:
    assert accepts_sends(stored) is accepts
