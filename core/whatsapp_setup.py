"""What a stream's stored WhatsApp set-up contributes to its readiness."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from schemas.enums import StreamType
from schemas.tables import Stream


def whatsapp_steps(stream: Stream) -> dict[str, Any] | None:
    """The ``whatsapp`` mapping ``core.stream_rules.missing_steps`` reads (no secrets).

    A stream just created has no set-up, and once its session is closed its (never loaded)
    relationship cannot be read: that is None too.
    """
    if stream.type != StreamType.whatsapp.value:
        return None
    state = inspect(stream)
    if "whatsapp" in state.unloaded and state.session is None:
        return None
    config = stream.whatsapp
    if config is None:
        return None
    return {
        "phone_number_id": config.phone_number_id,
        "access_token": bool(config.access_token_sealed),
    }
