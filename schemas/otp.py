"""OTP send and verify bodies (stream token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.messages import MAX_CONTENT_LENGTH
from schemas.request_body import RequestBody

#: Why a verification failed. ``wrong_code`` uses up one attempt; the others use none.
VerifyFailure = Literal["wrong_code", "expired", "used", "no_code", "too_many_failures"]


class OtpSendRequest(RequestBody):
    """``code`` is required in ``customer_code`` and ``full_text`` modes and refused in
    ``generate`` mode; ``message_content`` (the whole text, containing the code) is for
    ``full_text`` mode only; ``variables`` fill the template's other placeholders."""

    recipient_phone: str = Field(max_length=64)
    code: str | None = Field(default=None, min_length=1, max_length=32)
    message_content: str | None = Field(default=None, min_length=1, max_length=MAX_CONTENT_LENGTH)
    variables: dict[str, Any] | None = None
    #: The caller's own id for this send, unique per stream as on ``/v1/messages``: a send
    #: repeated with it (a client retry after a timeout) returns the first one and sends
    #: no second code.
    internal_id: str | None = Field(default=None, min_length=1, max_length=128)


class OtpSendResponse(BaseModel):
    message_id: str
    expires_at: datetime
    internal_id: str | None = None
    #: True when ``internal_id`` named an earlier send: nothing was sent this time.
    duplicate: bool | None = None


class OtpVerifyRequest(RequestBody):
    recipient_phone: str = Field(max_length=64)
    code: str = Field(min_length=1, max_length=32)


class OtpVerifyResponse(BaseModel):
    valid: bool
    #: Wrong codes the live code still tolerates; 0 once it is used, expired or dead.
    attempts_left: int
    reason: VerifyFailure | None = None
