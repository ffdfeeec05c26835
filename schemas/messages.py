"""Send API bodies and the message views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from schemas.documented_as import DocumentedAs
from schemas.enums import MessageStatus
from schemas.request_body import RequestBody

MAX_CONTENT_LENGTH = 1_600  # ten concatenated GSM-7 segments and then some


class SendItem(RequestBody):
    """One message of a send request. Validated item by item, so that one bad item is
    rejected alone (invariant 7): a NUL in it is this item's field error, and never
    reaches a shared (group) commit, where PostgreSQL would refuse the whole transaction."""

    internal_id: str | None = Field(default=None, min_length=1, max_length=128)
    sender: str | None = Field(default=None, max_length=32)
    recipient_phone: str = Field(max_length=64)
    message_content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_LENGTH)
    send_at: datetime | None = None
    #: Send within this many seconds of ``send_at`` (or of acceptance), or not at all.
    validity_seconds: int | None = Field(default=None, ge=1, le=7 * 86_400)
    callback_url: AnyHttpUrl | None = None
    event_key: str | None = Field(default=None, max_length=64)
    variables: dict[str, Any] | None = None
    template: dict[str, Any] | None = None
    media: dict[str, Any] | None = None


#: A batch item as the envelope takes it: any JSON value, so that one which is not an object
#: (``5``, ``null``) is that item's own ``invalid_item`` and not the batch's 422 (invariant
#: 7). Described as a ``SendItem``, which is what a sender must send and what the ingress
#: checks each item against (``dispatcher.intake.prepare_item``).
RawItem = Annotated[Any, DocumentedAs(SendItem)]


class SendRequest(BaseModel):
    """The envelope only; items are checked one by one by the ingress (so not a
    ``RequestBody``: a NUL in one item must not refuse the whole request)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[RawItem] = Field(min_length=1)


def _unset(value: Any) -> bool:
    return value is None


class ItemError(BaseModel):
    """An item's error, shaped as API.md's errors: ``field`` only where one field is at
    fault."""

    code: str
    message: str
    field: str | None = Field(default=None, exclude_if=_unset)


class SendResult(BaseModel):
    """One item's outcome, as API.md fixes it: ``internal_id``, ``message_id``, ``status``,
    ``segments`` and ``encoding`` are always there (``null`` when there is none: a rejected
    item has no ``message_id``, nor an ``internal_id`` when it gave none); ``duplicate``,
    ``message_status`` and ``error`` only when set."""

    internal_id: str | None = None
    message_id: str | None = None
    status: Literal["queued", "scheduled", "rejected"]
    segments: int | None = None
    encoding: Literal["GSM-7", "UCS-2"] | None = None
    duplicate: bool | None = Field(default=None, exclude_if=_unset)
    #: A duplicate's first message, as it stands now (``delivered``, ``canceled``...):
    #: ``status`` says only that the item was taken, not that anything is on its way.
    message_status: MessageStatus | None = Field(default=None, exclude_if=_unset)
    error: ItemError | None = Field(default=None, exclude_if=_unset)


class SendResponse(BaseModel):
    accepted: int
    rejected: int
    results: list[SendResult]


class StatusEventOut(BaseModel):
    status: MessageStatus
    at: datetime
    detail: str | None = None


class MessageOut(BaseModel):
    message_id: str
    stream_id: str
    internal_id: str | None
    sender: str | None
    recipient_phone: str
    message_content: str
    segments: int
    encoding: str
    status: MessageStatus
    error: ItemError | None = None
    send_at: datetime | None
    expires_at: datetime | None = None
    #: Why a queued message is waiting (``rate_limited``, ``quiet_hours``, ``retry``,
    #: ``stream_paused``) and until when.
    hold_reason: str | None = None
    not_before: datetime | None = None
    attempts: int = 0
    provider: str | None
    provider_message_id: str | None
    created_at: datetime
    updated_at: datetime
    history: list[StatusEventOut]
