"""The Webhooks tab (account key): our inbound endpoints for the provider, the customer
callback set-up with its signing secret and example bodies, and the dead letters (callbacks
that failed for the whole retry window), listed per stream and replayable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.callback_events import DEAD, PENDING
from core.clock import as_utc
from core.provider_choice import HTTP, SANDBOX, WHATSAPP_CLOUD, provider_for
from core.runtime import Runtime
from core.signatures import SIGNATURE_HEADER
from dispatcher.auth import require_account, runtime_of
from dispatcher.errors import ApiError, not_found
from dispatcher.routes.streams import _owned
from dispatcher.routes.webhooks import ensure_webhook_secret
from schemas.enums import StreamType
from schemas.errors import ErrorBody
from schemas.tables import CallbackDelivery, Stream
from schemas.two_way import DeadLetterOut, DeadLetterPage, ReplayOut
from workers.queueing import enqueue_callback

router = APIRouter(prefix="/api/v1/streams", tags=["webhooks"])
log = structlog.get_logger(__name__)
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
Account = Annotated[uuid.UUID, Depends(require_account)]
_TWO_WAY_TYPES = (StreamType.two_way.value, StreamType.whatsapp.value)


def _example_times() -> str:
    return datetime(2026, 1, 1, 12, 0, tzinfo=UTC).isoformat()


def _provider_endpoint(runtime: Runtime, stream: Stream) -> dict[str, Any]:
    base = runtime.settings.public_url.rstrip("/")
    provider = provider_for(
        stream.type, demo=stream.demo, default_provider=runtime.settings.default_provider
    )
    if provider == WHATSAPP_CLOUD:
        return {
            "provider": WHATSAPP_CLOUD,
            "url": f"{base}/webhooks/{stream.id}/whatsapp",
            "methods": ["GET", "POST"],
            "authentication": "Meta's X-Hub-Signature-256 with the app secret set in "
            "/whatsapp; the GET handshake answers hub.challenge for the verify token",
            "subscribe_fields": ["messages"],
        }
    endpoint: dict[str, Any] = {
        "provider": provider,
        "url": f"{base}/webhooks/{stream.id}/inbound",
        "method": "POST",
    }
    if provider == SANDBOX:
        endpoint["authentication"] = (
            f"{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256 of 't.body'> keyed by "
            "the signing secret below; at most 5 minutes old"
        )
        endpoint["example_body"] = {
            "from": "+972524265292",
            "to": stream.default_sender or "Streams",
            "text": "STOP",
            "received_at": _example_times(),
        }
    else:
        settings = runtime.settings.http_provider
        endpoint["authentication"] = (
            f"{settings.signature_header}: hex HMAC-SHA256 of the raw body keyed by the HTTP "
            "provider's webhook secret"
        )
        endpoint["example_body"] = {
            settings.inbound_fields.get(ours, ours): value
            for ours, value in (
                ("from", "+972524265292"),
                ("to", stream.default_sender or "Streams"),
                ("text", "Hello"),
                ("message_id", "mo-123"),
            )
        }
        endpoint["delivery_receipts_url"] = f"{base}/webhooks/dlr/{HTTP}"
    return endpoint


def _callback_examples(stream: Stream) -> dict[str, Any]:
    stream_id = str(stream.id)
    return {
        "message.inbound": {
            "event": "message.inbound",
            "event_id": "5f0c…",
            "inbound_id": "9b1e…",
            "stream_id": stream_id,
            "from": "+972524265292",
            "to": stream.default_sender,
            "text": "Hello",
            "media": None,
            "received_at": _example_times(),
            "provider": "sandbox",
            "opt_out": None,
        },
        "message.status": {
            "event": "message.status",
            "event_id": "77aa…",
            "message_id": "6b41…",
            "internal_id": "order-1003",
            "stream_id": stream_id,
            "recipient_phone": "+972524265292",
            "status": "delivered",
            "at": _example_times(),
            "detail": None,
            "segments": 1,
            "error": None,
        },
    }


@router.get("/{stream_id}/webhooks", responses=_ERRORS)
def webhooks_tab(stream_id: str, request: Request, account_id: Account) -> dict[str, Any]:
    """Two-way and WhatsApp streams: where the provider posts to us, where we post to the
    customer (and how it is signed), with example bodies."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        if stream.type not in _TWO_WAY_TYPES:
            raise ApiError(
                409,
                "not_a_two_way_stream",
                "Webhooks are for two_way and whatsapp streams.",
            )
        secret = ensure_webhook_secret(runtime, session, stream)
        session.commit()
        settings = stream.settings or {}
        return {
            "inbound": _provider_endpoint(runtime, stream),
            "callback": {
                "url": settings.get("callback_url"),
                "method": settings.get("callback_method") or "POST",
                "headers": sorted((settings.get("callback_headers") or {}).keys()),
                "events": ["message.inbound", "message.status"],
                "signature": {
                    "header": SIGNATURE_HEADER,
                    "format": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>",
                    "get_requests": "the payload is in the query string, and the signature "
                    "covers the raw query string instead of a body",
                },
                "signing_secret": secret,
                "retries": "exponential backoff with jitter for 24 hours, then a dead letter",
                "example_bodies": _callback_examples(stream),
            },
        }


def _dead_letter_view(row: CallbackDelivery) -> DeadLetterOut:
    return DeadLetterOut(
        id=str(row.id),
        event=row.event,
        url=row.url,
        attempts=row.attempts,
        last_error=row.last_error,
        last_status_code=row.last_status_code,
        created_at=as_utc(row.created_at),
        dead_at=as_utc(row.dead_at) if row.dead_at else None,
        replayed_at=as_utc(row.replayed_at) if row.replayed_at else None,
        payload=dict(row.payload),
    )


@router.get("/{stream_id}/callbacks/dead-letters", response_model=DeadLetterPage, responses=_ERRORS)
def list_dead_letters(
    stream_id: str,
    request: Request,
    account_id: Account,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DeadLetterPage:
    """Callbacks that failed for the whole retry window, newest first."""
    with runtime_of(request).session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        conditions = (CallbackDelivery.stream_id == stream.id, CallbackDelivery.state == DEAD)
        total = session.scalar(select(func.count()).where(*conditions)) or 0
        rows = session.scalars(
            select(CallbackDelivery)
            .where(*conditions)
            .order_by(CallbackDelivery.dead_at.desc(), CallbackDelivery.id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        return DeadLetterPage(
            items=[_dead_letter_view(r) for r in rows], total=total, page=page, per_page=per_page
        )


def _replay(runtime: Runtime, session: Session, stream: Stream, ids: list[uuid.UUID]) -> int:
    now = runtime.clock()
    replayed = (
        session.execute(
            update(CallbackDelivery)
            .where(
                CallbackDelivery.stream_id == stream.id,
                CallbackDelivery.state == DEAD,
                CallbackDelivery.id.in_(ids),
            )
            .values(
                state=PENDING,
                attempts=0,
                window_started_at=now,
                next_attempt_at=now,
                dead_at=None,
                replayed_at=now,
            )
            .returning(CallbackDelivery.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    session.commit()
    for delivery_id in replayed:
        try:
            enqueue_callback(runtime.broker, str(delivery_id))
        except Exception as exc:  # pending again: the callback sweep enqueues it later
            log.warning("replay_enqueue_failed", error=type(exc).__name__)
    log.info("dead_letters_replayed", stream_id=str(stream.id), count=len(replayed))
    return len(replayed)


@router.post(
    "/{stream_id}/callbacks/dead-letters/replay", response_model=ReplayOut, responses=_ERRORS
)
def replay_all_dead_letters(stream_id: str, request: Request, account_id: Account) -> ReplayOut:
    """Try every dead letter of the stream again, with a fresh retry window."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        ids = (
            session.execute(
                select(CallbackDelivery.id).where(
                    CallbackDelivery.stream_id == stream.id, CallbackDelivery.state == DEAD
                )
            )
            .scalars()
            .all()
        )
        return ReplayOut(replayed=_replay(runtime, session, stream, list(ids)))


@router.post(
    "/{stream_id}/callbacks/dead-letters/{dead_letter_id}/replay",
    response_model=ReplayOut,
    responses=_ERRORS,
)
def replay_dead_letter(
    stream_id: str, dead_letter_id: str, request: Request, account_id: Account
) -> ReplayOut:
    """Try one dead letter again, with a fresh retry window."""
    runtime = runtime_of(request)
    try:
        key = uuid.UUID(dead_letter_id)
    except ValueError:
        raise not_found("dead letter") from None
    with runtime.session_factory() as session:
        stream = _owned(session, account_id, stream_id)
        replayed = _replay(runtime, session, stream, [key])
    if not replayed:
        raise not_found("dead letter")
    return ReplayOut(replayed=replayed)
