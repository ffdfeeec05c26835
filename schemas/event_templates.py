"""Event template bodies (``/api/v1/streams/{id}/events``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from schemas.messages import MAX_CONTENT_LENGTH
from schemas.request_body import RequestBody
from schemas.templates import template_placeholders
from schemas.text_rules import display_name

EVENT_KEY_PATTERN = r"^[a-z0-9_.\-]{1,64}$"
EventKey = Annotated[str, StringConstraints(pattern=EVENT_KEY_PATTERN)]
#: Shown in the console like a stream's name, so held to the same rules (no control or
#: text-direction characters).
EventName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(display_name),
]
TemplateText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONTENT_LENGTH)]


def _checked_template(value: str | None) -> str | None:
    if value is not None:
        template_placeholders(value)  # raises ValueError naming what is wrong
    return value


class EventTemplateCreate(RequestBody):
    key: EventKey
    name: EventName
    template: TemplateText

    _template = field_validator("template")(_checked_template)


class EventTemplatePatch(RequestBody):
    """Only the given fields change; the key stays (delete and create to rename)."""

    name: EventName | None = None
    template: TemplateText | None = None

    _template = field_validator("template")(_checked_template)

    @field_validator("name", "template")
    @classmethod
    def _not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("cannot be null")
        return value


class EventTemplateOut(BaseModel):
    key: str
    name: str
    template: str
    #: The placeholders a send must fill, in order of first use.
    variables: list[str]
    created_at: datetime
    updated_at: datetime


class EventTemplateList(BaseModel):
    items: list[EventTemplateOut] = Field(default_factory=list)
