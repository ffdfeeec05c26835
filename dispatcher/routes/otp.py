"""OTP streams' send API (stream token): send a code, verify a code."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from dispatcher.auth import StreamAccess, require_stream
from dispatcher.errors import ApiError
from dispatcher.otp import OneTimeCodes
from schemas.enums import StreamType
from schemas.errors import ErrorBody
from schemas.otp import OtpSendRequest, OtpSendResponse, OtpVerifyRequest, OtpVerifyResponse

router = APIRouter(prefix="/v1/otp", tags=["otp"])
_ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 409, 422, 429, 503)}


async def require_otp_stream(
    access: Annotated[StreamAccess, Depends(require_stream)],
) -> StreamAccess:
    """``require_stream``, and the stream must be an OTP stream (409 otherwise)."""
    if access.type is not StreamType.otp:
        raise ApiError(
            409,
            "wrong_stream_type",
            f"This is a {access.type.value} stream; one-time codes need an OTP stream's token.",
        )
    return access


OtpStream = Annotated[StreamAccess, Depends(require_otp_stream)]


def _codes(request: Request) -> OneTimeCodes:
    return request.app.state.one_time_codes  # type: ignore[no-any-return]


@router.post(
    "/send",
    status_code=202,
    response_model=OtpSendResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
def send_code(body: OtpSendRequest, request: Request, access: OtpStream) -> OtpSendResponse:
    """Send a one-time code. It supersedes the number's previous code on this stream; a
    resend inside the cooldown, past the per-number cap, or over the stream's ingress quota
    (``rate_limited``) answers 429 with Retry-After. A
    send repeating an earlier one's ``internal_id`` returns that one (``duplicate: true``)
    and sends nothing."""
    return _codes(request).send(access, body)


@router.post(
    "/verify",
    response_model=OtpVerifyResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
def verify_code(body: OtpVerifyRequest, request: Request, access: OtpStream) -> OtpVerifyResponse:
    """``valid: true`` once for the right code; ``valid: false`` with a ``reason`` otherwise
    (``wrong_code`` uses up one of ``attempts_left``)."""
    return _codes(request).verify(access, body)
