"""Two-way bodies: the sandbox's inbound message, the suppression list, dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.request_body import RequestBody


class SandboxInbound(RequestBody):
    """``POST /webhooks/{stream_id}/inbound`` for sandbox streams."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", max_length=32)
    to: str | None = Field(default=None, max_length=32)
    text: str = Field(max_length=4096)
    received_at: datetime | None = None
    message_id: str | None = Field(default=None, min_length=1, max_length=128)


class InboundAccepted(BaseModel):
    inbound_id: str
    duplicate: bool = False
    opt_out: str | None = None


class SuppressionOut(BaseModel):
    phone: str
    keyword: str
    stream_id: str | None
    created_at: datetime


class SuppressionPage(BaseModel):
    items: list[SuppressionOut]
    total: int
    page: int
    per_page: int


class DeadLetterOut(BaseModel):
    id: str
    event: str
    url: str | None
    attempts: int
    last_error: str | None
    last_status_code: int | None
    created_at: datetime
    dead_at: datetime | None
    replayed_at: datetime | None
    payload: dict[str, Any]


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    total: int
    page: int
    per_page: int


class ReplayOut(BaseModel):
    replayed: int
