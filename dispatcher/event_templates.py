"""Sending by event: a send item names an ``event_key`` and gives ``variables``; the stream's
template for that key is rendered into the text.

The templates a request needs are loaded once per request (``load_event_templates``), not per
item; rendering is the pure ``schemas.templates.render_template``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.enums import StreamType
from schemas.tables import EventTemplate
from schemas.templates import (
    InvalidVariable,
    MissingVariable,
    TemplateSyntaxError,
    checked_variables,
    render_template,
)

#: Stream types that may keep event templates and send by ``event_key``.
EVENT_STREAM_TYPES = frozenset({StreamType.transactional, StreamType.otp})
#: Templates per stream: bounds what one request loads.
MAX_EVENTS_PER_STREAM = 500


class EventRejected(Exception):
    """An item's event cannot be rendered. ``field`` is relative to the item
    (``event_key``, ``variables.name``)."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def wants_events(raw_items: list[Any]) -> bool:
    """Whether any item of a batch sends by event (so the templates must be loaded)."""
    return any(isinstance(raw, dict) and raw.get("event_key") is not None for raw in raw_items)


def load_event_templates(session: Session, stream_id: uuid.UUID) -> dict[str, str]:
    """The stream's templates by key."""
    rows = session.execute(
        select(EventTemplate.key, EventTemplate.template).where(
            EventTemplate.stream_id == stream_id
        )
    ).all()
    return {row.key: row.template for row in rows}


def render_event(
    templates: Mapping[str, str], key: str, variables: Mapping[str, Any] | None
) -> str:
    """The text of event ``key`` with ``variables`` filled in. Raises ``EventRejected``:
    ``unknown_event``, ``invalid_variable`` or ``missing_variable``."""
    template = templates.get(key)
    if template is None:
        raise EventRejected(
            "unknown_event", f"event_key {key!r} is not an event of this stream", "event_key"
        )
    try:
        values = checked_variables(variables or {})
    except InvalidVariable as exc:
        field = f"variables.{exc.name}" if exc.name else "variables"
        raise EventRejected("invalid_variable", f"{field} {exc.reason}", field) from None
    try:
        return render_template(template, values)
    except MissingVariable as exc:
        field = f"variables.{exc.name}"
        raise EventRejected(
            "missing_variable", f"{field} is required by event {key!r}", field
        ) from None
    except TemplateSyntaxError as exc:  # saved before the rules were checked
        raise EventRejected(
            "invalid_template", f"event {key!r} has an invalid template: {exc}", "event_key"
        ) from None
