"""What makes a stream ready to send, and which status it shows. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas.enums import StreamStatus, StreamType

#: A stream that accepted or sent within this window shows as ``sending``.
ACTIVITY_WINDOW = timedelta(minutes=1)

#: What each type needs before it may send, in the order a person sets it up.
REQUIRED_STEPS: dict[StreamType, tuple[str, ...]] = {
    StreamType.marketing: ("default_sender",),
    StreamType.transactional: ("default_sender",),
    StreamType.otp: ("default_sender", "settings.template"),
    StreamType.two_way: ("default_sender", "settings.callback_url"),
    StreamType.whatsapp: ("whatsapp.phone_number_id", "whatsapp.access_token"),
}
#: Demo streams send through the sandbox, so carrier-facing steps are not needed.
_DEMO_EXEMPT = frozenset({"default_sender", "whatsapp.phone_number_id", "whatsapp.access_token"})


def missing_steps(
    stream_type: StreamType,
    *,
    default_sender: str | None,
    demo: bool,
    settings: Mapping[str, Any],
    whatsapp: Mapping[str, Any] | None = None,
) -> list[str]:
    """The steps still missing before a stream of this type can send (empty: ready)."""
    present = {
        "default_sender": bool(default_sender),
        "settings.template": bool(settings.get("template")),
        "settings.callback_url": bool(settings.get("callback_url")),
        "whatsapp.phone_number_id": bool(whatsapp and whatsapp.get("phone_number_id")),
        "whatsapp.access_token": bool(whatsapp and whatsapp.get("access_token")),
    }
    return [
        step
        for step in REQUIRED_STEPS[stream_type]
        if not present[step] and not (demo and step in _DEMO_EXEMPT)
    ]


def stored_status(*, missing: list[str], disabled: bool, restricted: bool) -> StreamStatus:
    """The status kept in the database. An operator's restriction outranks the customer's
    pause, which outranks an incomplete set-up."""
    if restricted:
        return StreamStatus.restricted
    if disabled:
        return StreamStatus.disabled
    if missing:
        return StreamStatus.draft
    return StreamStatus.ready


def shown_status(
    stored: StreamStatus, *, last_activity_at: datetime | None, in_flight: bool, now: datetime
) -> StreamStatus:
    """``ready`` shows as ``sending`` while messages are in flight or went out in the last
    minute."""
    if stored is not StreamStatus.ready:
        return stored
    recent = last_activity_at is not None and now - last_activity_at <= ACTIVITY_WINDOW
    return StreamStatus.sending if in_flight or recent else StreamStatus.ready


def accepts_sends(stored: StreamStatus) -> bool:
    return stored is StreamStatus.ready
