"""Webhooks from providers: inbound messages, delivery receipts, WhatsApp events.

These carry no bearer token, so each is authenticated by a signature before anything is
read or changed:

* ``/webhooks/{stream_id}/whatsapp``: Meta's ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw
  body with the stream's WhatsApp app secret); the ``GET`` handshake answers
  ``hub.challenge`` only for the stream's ``verify_token``.
* ``/webhooks/{stream_id}/inbound``: for sandbox (and demo) streams, ``X-Streams-Signature``
  keyed by the stream's webhook secret, at most five minutes old; for ``http`` provider
  streams, the provider's HMAC header keyed by ``STREAMS_HTTP_PROVIDER_WEBHOOK_SECRET``.
* ``/webhooks/dlr/{provider}``: the provider's HMAC header (``http`` only).

An unknown (or deleted) stream answers 404 and says nothing more; a bad signature 401.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core import metrics
from core.credentials import digest, digests_match, new_webhook_secret
from core.http_provider_format import FormatError, parse_inbound, parse_receipt
from core.provider_choice import HTTP, SANDBOX, WHATSAPP_CLOUD, provider_for
from core.receipts import ReceiptIn, record_receipt
from core.runtime import Runtime
from core.signatures import (
    SIGNATURE_HEADER,
    signed_request_id,
    verify_body_hmac,
    verify_hub_signature,
    verify_streams_signature,
)
from dispatcher.auth import runtime_of
from dispatcher.errors import (
    ApiError,
    describe_validation_error,
    invalid_field,
    json_error_responses,
    not_found,
)
from dispatcher.inbound import InboundIn, InboundRejected, record_inbound
from dispatcher.openapi_bodies import raw_json_body
from schemas.enums import StreamType
from schemas.errors import ErrorBody
from schemas.tables import Stream, WhatsAppConfig
from schemas.two_way import InboundAccepted, SandboxInbound
from schemas.whatsapp import MetaInbound, MetaWebhook
from workers.queueing import enqueue_callback

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 422)}
MAX_RECEIPTS_PER_REQUEST = 1000
#: The bodies these routes parse themselves (after the signature), for the OpenAPI document.
RAW_BODY_MODELS = (SandboxInbound, MetaWebhook)
#: WhatsApp statuses in our words ("read" implies "delivered"; a failure after Meta took the
#: message means the handset never got it).
WHATSAPP_STATUSES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "failed": "undelivered",
}


def _invalid_signature() -> ApiError:
    return ApiError(401, "invalid_signature", "The webhook signature is missing or wrong.")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise ApiError(422, "invalid_json", "The body is not valid JSON.") from None


def _live_stream(session: Session, stream_id: str) -> Stream:
    try:
        key = uuid.UUID(stream_id)
    except ValueError:
        raise not_found("stream") from None
    stream = session.scalars(
        select(Stream).where(Stream.id == key, Stream.deleted_at.is_(None))
    ).first()
    if stream is None:
        raise not_found("stream")
    return stream


def _enqueue_callbacks(runtime: Runtime, callback_ids: list[uuid.UUID]) -> None:
    for callback_id in callback_ids:
        try:
            enqueue_callback(runtime.broker, str(callback_id))
        except Exception as exc:  # the callback sweep enqueues it later
            log.warning("callback_enqueue_failed", error=type(exc).__name__)


# ---------------------------------------------------------------- delivery receipts


@router.post(
    "/dlr/{provider}",
    responses={**_ERRORS, 413: {"model": ErrorBody}},
    openapi_extra=raw_json_body(
        schema={"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}
    ),
)
async def delivery_receipts(provider: str, request: Request) -> dict[str, int]:
    """Delivery receipts from the ``http`` provider: one receipt object or a list of them,
    in the configured field mapping, signed with the provider's webhook secret."""
    runtime = runtime_of(request)
    settings = runtime.settings.http_provider
    if provider != HTTP or settings.webhook_secret is None:
        raise not_found("provider")
    raw = await request.body()
    signature = request.headers.get(settings.signature_header)
    if not verify_body_hmac(signature, raw, settings.webhook_secret.get_secret_value()):
        metrics.WEBHOOKS.labels("receipt", "bad_signature").inc()
        raise _invalid_signature()
    document = _json(raw)
    items = document if isinstance(document, list) else [document]
    if len(items) > MAX_RECEIPTS_PER_REQUEST:
        raise ApiError(413, "too_many_receipts", f"At most {MAX_RECEIPTS_PER_REQUEST} receipts.")
    receipts: list[ReceiptIn] = []
    for index, item in enumerate(items):
        try:
            receipts.append(parse_receipt(settings, item))
        except FormatError as exc:
            prefix = f"[{index}]." if isinstance(document, list) else ""
            raise ApiError(422, "invalid_receipt", exc.message, field=prefix + exc.field) from None
    applied = await run_in_threadpool(_apply_receipts, runtime, receipts, None)
    metrics.WEBHOOKS.labels("receipt", "ok").inc()
    return {"received": len(receipts), "applied": applied}


def _apply_receipts(
    runtime: Runtime, receipts: list[ReceiptIn], stream_id: uuid.UUID | None
) -> int:
    now = runtime.clock()
    applied = 0
    with runtime.session_factory() as session:
        for receipt in receipts:
            if record_receipt(session, receipt, now, stream_id=stream_id) is not None:
                applied += 1
        session.commit()
    return applied


# ---------------------------------------------------------------- two-way inbound


@dataclass(frozen=True, slots=True)
class _InboundRoute:
    stream: Stream
    provider: str
    secret: str | None


def _inbound_route(runtime: Runtime, stream_id: str) -> _InboundRoute:
    with runtime.session_factory() as session:
        stream = _live_stream(session, stream_id)
        provider = provider_for(
            stream.type, demo=stream.demo, default_provider=runtime.settings.default_provider
        )
        if provider == WHATSAPP_CLOUD:
            raise not_found("inbound endpoint")  # WhatsApp streams use /whatsapp
        secret: str | None = None
        if provider == SANDBOX and stream.webhook_secret_sealed:
            secret = runtime.secret_box.open(stream.webhook_secret_sealed)
        elif provider == HTTP and runtime.settings.http_provider.webhook_secret is not None:
            secret = runtime.settings.http_provider.webhook_secret.get_secret_value()
        session.expunge(stream)
    return _InboundRoute(stream, provider, secret)


@router.post(
    "/{stream_id}/inbound",
    response_model=InboundAccepted,
    responses=_ERRORS,
    openapi_extra=raw_json_body(SandboxInbound),
)
async def inbound_message(stream_id: str, request: Request) -> InboundAccepted:
    """A two-way MO message. Sandbox body: ``{"from", "to", "text", "received_at"?}`` signed
    with ``X-Streams-Signature``; ``http`` provider body in its configured mapping, signed
    with its HMAC header."""
    runtime = runtime_of(request)
    raw = await request.body()
    route = await run_in_threadpool(_inbound_route, runtime, stream_id)
    if route.provider == SANDBOX:
        valid = route.secret is not None and verify_streams_signature(
            request.headers.get(SIGNATURE_HEADER), raw, route.secret, runtime.clock().timestamp()
        )
    else:
        header = runtime.settings.http_provider.signature_header
        valid = route.secret is not None and verify_body_hmac(
            request.headers.get(header), raw, route.secret
        )
    if not valid:
        metrics.WEBHOOKS.labels("inbound", "bad_signature").inc()
        raise _invalid_signature()
    document = _json(raw)
    if route.provider == SANDBOX:
        try:
            body = SandboxInbound.model_validate(document)
        except ValidationError as exc:
            location, message = describe_validation_error(exc.errors()[0])
            field = location.replace("from_", "from")
            raise ApiError(
                422, "invalid_field", message.replace("from_", "from"), field=field or None
            ) from None
        inbound = InboundIn(
            provider=SANDBOX,
            sender=body.from_,
            recipient=body.to,
            text=body.text,
            # Without the provider's id, the signed request is its own id: a replay of it
            # inside the signature's tolerance is then a duplicate, not a second message.
            provider_message_id=body.message_id
            or signed_request_id(request.headers.get(SIGNATURE_HEADER), raw),
            received_at=body.received_at,
        )
    else:
        try:
            fields = parse_inbound(runtime.settings.http_provider, document)
        except FormatError as exc:
            raise ApiError(422, "invalid_field", exc.message, field=exc.field) from None
        inbound = InboundIn(
            provider=HTTP,
            sender=fields.sender,
            recipient=fields.recipient,
            text=fields.text,
            provider_message_id=fields.provider_message_id,
            received_at=fields.received_at,
        )
    recorded = await run_in_threadpool(_store_inbound, runtime, route.stream, [inbound])
    metrics.WEBHOOKS.labels("inbound", "ok").inc()
    first = recorded[0]
    return InboundAccepted(
        inbound_id=str(first.inbound_id), duplicate=first.duplicate, opt_out=first.opt_out
    )


def _store_inbound(runtime: Runtime, stream: Stream, inbound: list[InboundIn]) -> list[Any]:
    now = runtime.clock()
    with runtime.session_factory() as session:
        try:
            recorded = [record_inbound(session, stream, item, now) for item in inbound]
        except InboundRejected as exc:
            session.rollback()
            raise ApiError(422, "invalid_field", exc.message, field=exc.field) from None
        session.commit()
    _enqueue_callbacks(runtime, [r.callback_id for r in recorded if r.callback_id is not None])
    return recorded


# ---------------------------------------------------------------- WhatsApp


@dataclass(frozen=True, slots=True)
class _WhatsAppRoute:
    stream: Stream
    phone_number_id: str | None
    app_secret: str | None
    verify_token: str | None


def _whatsapp_route(runtime: Runtime, stream_id: str) -> _WhatsAppRoute:
    with runtime.session_factory() as session:
        stream = _live_stream(session, stream_id)
        if stream.type != StreamType.whatsapp.value:
            raise not_found("stream")
        config = session.get(WhatsAppConfig, stream.id)
        box = runtime.secret_box
        route = _WhatsAppRoute(
            stream=stream,
            phone_number_id=config.phone_number_id if config else None,
            app_secret=box.open(config.app_secret_sealed)
            if config and config.app_secret_sealed
            else None,
            verify_token=box.open(config.verify_token_sealed)
            if config and config.verify_token_sealed
            else None,
        )
        session.expunge(stream)
    return route


@router.get(
    "/{stream_id}/whatsapp",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **json_error_responses(401, 403, 404, 422),
    },
)
async def whatsapp_verification(
    stream_id: str,
    request: Request,
    mode: str = Query(default="", alias="hub.mode", max_length=32),
    verify_token: str = Query(default="", alias="hub.verify_token", max_length=256),
    challenge: str = Query(default="", alias="hub.challenge", max_length=256),
) -> PlainTextResponse:
    """Meta's subscription handshake: echo ``hub.challenge`` when ``hub.verify_token`` is
    the stream's verify token."""
    runtime = runtime_of(request)
    route = await run_in_threadpool(_whatsapp_route, runtime, stream_id)
    if (
        mode != "subscribe"
        or route.verify_token is None
        or not digests_match(digest(route.verify_token), verify_token)
        or not challenge.isascii()
        or not challenge.isprintable()
    ):
        metrics.WEBHOOKS.labels("whatsapp_verify", "refused").inc()
        raise ApiError(403, "verification_failed", "The verify token does not match.")
    metrics.WEBHOOKS.labels("whatsapp_verify", "ok").inc()
    return PlainTextResponse(challenge)


@router.post("/{stream_id}/whatsapp", responses=_ERRORS, openapi_extra=raw_json_body(MetaWebhook))
async def whatsapp_events(stream_id: str, request: Request) -> dict[str, int]:
    """Meta's events for the stream's phone number: ``statuses[]`` move messages forward,
    ``messages[]`` are inbound messages. Events for other phone numbers of the same app are
    ignored."""
    runtime = runtime_of(request)
    raw = await request.body()
    route = await run_in_threadpool(_whatsapp_route, runtime, stream_id)
    if route.app_secret is None or not verify_hub_signature(
        request.headers.get("x-hub-signature-256"), raw, route.app_secret
    ):
        metrics.WEBHOOKS.labels("whatsapp", "bad_signature").inc()
        raise _invalid_signature()
    try:
        payload = MetaWebhook.model_validate(_json(raw))
    except ValidationError as exc:
        raise invalid_field(exc) from None
    receipts: list[ReceiptIn] = []
    inbound: list[InboundIn] = []
    for entry in payload.entry:
        for change in entry.changes:
            value = change.value
            number = value.metadata.phone_number_id if value.metadata else None
            if route.phone_number_id and number and number != route.phone_number_id:
                continue
            for status in value.statuses:
                ours = WHATSAPP_STATUSES.get(status.status)
                if ours is None:
                    continue
                code = status.errors[0].code if status.errors else None
                receipts.append(
                    ReceiptIn(
                        provider=WHATSAPP_CLOUD,
                        status=ours,  # type: ignore[arg-type]
                        provider_message_id=status.id,
                        reference=status.biz_opaque_callback_data,
                        error_code=str(code) if code is not None else None,
                    )
                )
            display = value.metadata.display_phone_number if value.metadata else None
            inbound += [_meta_inbound(message, display) for message in value.messages]
    applied = await run_in_threadpool(_apply_receipts, runtime, receipts, route.stream.id)
    recorded = (
        await run_in_threadpool(_store_inbound, runtime, route.stream, inbound) if inbound else []
    )
    metrics.WEBHOOKS.labels("whatsapp", "ok").inc()
    return {"statuses": len(receipts), "applied": applied, "messages": len(recorded)}


def _meta_inbound(message: MetaInbound, display_number: str | None) -> InboundIn:
    text = message.text.body if message.text else None
    if text is None and message.button:
        text = str(message.button.get("text") or "")[:4096] or None
    if text is None and message.interactive:
        reply = message.interactive.get("button_reply") or message.interactive.get("list_reply")
        if isinstance(reply, dict):
            text = str(reply.get("title") or "")[:4096] or None
    media = None
    for kind in ("image", "video", "audio", "document", "sticker"):
        item = getattr(message, kind)
        if isinstance(item, dict):
            media = {
                "type": kind,
                **{
                    k: str(item[k])[:1024]
                    for k in ("id", "mime_type", "caption", "filename")
                    if k in item
                },
            }
            text = text or media.get("caption")
            break
    received_at = None
    if message.timestamp and message.timestamp.isdigit() and len(message.timestamp) <= 12:
        # Past the year 9999 it is no time a calendar holds: ours stands in for it.
        with contextlib.suppress(ValueError, OverflowError, OSError):
            received_at = datetime.fromtimestamp(int(message.timestamp), UTC)
    return InboundIn(
        provider=WHATSAPP_CLOUD,
        sender=message.from_,
        recipient=("+" + display_number) if display_number and display_number.isdigit() else None,
        text=text,
        provider_message_id=message.id,
        received_at=received_at,
        media=media,
    )


def ensure_webhook_secret(runtime: Runtime, session: Session, stream: Stream) -> str:
    """The stream's webhook secret, made now for streams created without one."""
    if not stream.webhook_secret_sealed:
        stream.webhook_secret_sealed = runtime.secret_box.seal(new_webhook_secret())
        session.flush()
    return runtime.secret_box.open(stream.webhook_secret_sealed)
