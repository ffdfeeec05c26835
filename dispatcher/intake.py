"""Accepting sends: validate each item, store the batch, then put it on the queue.

The order is the heart of invariant 1: rows are committed first (a 202 means they are in
PostgreSQL), then enqueued, then marked enqueued. If the enqueue fails the rows keep
``enqueued_at = NULL`` and the relay sends them on later.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import metrics
from core.activity import ActivityTouch
from core.clock import as_utc
from core.database import bulk_insert
from core.message_states import record_changes
from core.phones import InvalidPhoneNumber, normalize_sender, to_e164
from core.runtime import Runtime
from core.segments import count_segments
from dispatcher.auth import StreamAccess
from dispatcher.errors import describe_validation_error

if TYPE_CHECKING:
    from dispatcher.group_commit import GroupCommitter
from dispatcher.event_templates import (
    EVENT_STREAM_TYPES,
    EventRejected,
    load_event_templates,
    render_event,
    wants_events,
)
from dispatcher.whatsapp_content import (
    WHATSAPP_SENDER,
    ContentRejected,
    TemplateSpec,
    load_templates,
    whatsapp_content,
)
from schemas.enums import MessageStatus, StreamType
from schemas.events import StatusChange
from schemas.messages import MAX_CONTENT_LENGTH, ItemError, SendItem, SendResponse, SendResult
from schemas.tables import Message, Stream
from schemas.text_rules import encodes_as_utf8
from workers.queueing import enqueue_committed

log = structlog.get_logger(__name__)

DEMO_SENDER = "Streams"
MAX_SCHEDULE_AHEAD = timedelta(days=90)
#: A send_at in the past means "now", and its validity counts from it. One further back
#: than this is a mistake, not an outage's backlog (and one before year 1 in UTC, which an
#: offset can make of 0001-01-01, is a time no database column or Python datetime holds).
MAX_SEND_AT_PAST = timedelta(days=90)


@dataclass(slots=True)
class PreparedItem:
    index: int
    internal_id: str | None
    sender: str
    recipient: str
    body: str
    segments: int
    encoding: str
    send_at: datetime | None
    expires_at: datetime | None
    callback_url: str | None
    #: WhatsApp template or media (``messages.content``); None for text.
    content: dict[str, Any] | None = None
    #: The real text, sealed, when ``body`` is masked (``core.sealed_bodies``).
    sealed_body: str | None = None


class ItemRejected(Exception):
    def __init__(self, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.error = ItemError(code=code, message=message, field=field)


def prepare_item(
    index: int,
    raw: Any,
    access: StreamAccess,
    now: datetime,
    whatsapp_templates: Mapping[str, Sequence[TemplateSpec]] | None = None,
    templates: Mapping[str, str] | None = None,
) -> PreparedItem:
    """Validate one send item and compute what we store. Raises ``ItemRejected`` naming the
    field (as ``messages[i].field``). ``templates`` are the stream's event templates by key,
    for items that send by ``event_key``."""
    prefix = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise ItemRejected("invalid_item", f"{prefix} must be a JSON object", prefix)
    try:
        item = SendItem.model_validate(raw)
    except ValidationError as exc:
        location, message = describe_validation_error(exc.errors()[0])
        return _raise(
            "invalid_field", f"{prefix}.{message}", f"{prefix}.{location}" if location else prefix
        )
    for unsupported in ("template", "media"):
        if access.type is StreamType.whatsapp:
            break  # WhatsApp content: checked by whatsapp_content below
        if getattr(item, unsupported) is not None:
            _raise(
                "unsupported_content",
                f"{prefix}.{unsupported} is not available yet; send message_content",
                f"{prefix}.{unsupported}",
            )
    whatsapp = None
    if access.type is StreamType.whatsapp:
        try:
            whatsapp = whatsapp_content(prefix, item, whatsapp_templates or {})
        except ContentRejected as exc:
            _raise(exc.code, exc.message, exc.field)
    body = whatsapp.body if whatsapp else _event_text(prefix, item, access, templates or {})
    if body is None:
        body = item.message_content
    if body is None or not body.strip():
        _raise(
            "missing_content", f"{prefix}.message_content is required", f"{prefix}.message_content"
        )
    try:
        recipient = to_e164(item.recipient_phone)
    except InvalidPhoneNumber as exc:
        _raise("invalid_phone", f"{prefix}.recipient_phone {exc}", f"{prefix}.recipient_phone")
    sender_text = item.sender or access.default_sender or (DEMO_SENDER if access.demo else None)
    if sender_text is None and access.type is StreamType.whatsapp:
        sender_text = WHATSAPP_SENDER
    if sender_text is None:
        _raise(
            "missing_sender",
            f"{prefix}.sender is required (the stream has no default)",
            f"{prefix}.sender",
        )
    try:
        sender = normalize_sender(sender_text)
    except ValueError as exc:
        _raise("invalid_sender", f"{prefix}.sender: {exc}", f"{prefix}.sender")
    # The validity counts from the time asked for, even one already past (then sent now).
    send_at = valid_from = item.send_at
    if send_at is not None:
        if send_at.tzinfo is None:
            _raise(
                "invalid_field",
                f"{prefix}.send_at must include a time zone offset",
                f"{prefix}.send_at",
            )
        if send_at - now > MAX_SCHEDULE_AHEAD:
            _raise(
                "invalid_field", f"{prefix}.send_at is more than 90 days ahead", f"{prefix}.send_at"
            )
        if now - send_at > MAX_SEND_AT_PAST:
            _raise(
                "invalid_field", f"{prefix}.send_at is more than 90 days past", f"{prefix}.send_at"
            )
        # Stored and compared in UTC (SQLite would keep the wall time and drop the offset);
        # converted once in bounds, so that no offset can carry it out of the calendar.
        send_at = valid_from = as_utc(send_at)
        if send_at <= now:
            send_at = None
    count = count_segments(body)
    return PreparedItem(
        index=index,
        internal_id=item.internal_id,
        sender=sender,
        recipient=recipient,
        body=body,
        segments=count.segments,
        encoding=count.encoding,
        send_at=send_at,
        expires_at=(
            (valid_from or now) + timedelta(seconds=item.validity_seconds)
            if item.validity_seconds
            else None
        ),
        callback_url=str(item.callback_url) if item.callback_url else None,
        content=whatsapp.content if whatsapp else None,
    )


def _rejected_result(raw: Any, exc: ItemRejected) -> SendResult:
    """The result of a rejected item, echoing its ``internal_id`` when that is text the
    response can carry. A lone surrogate (``"\\udfff"`` in JSON) is not: echoed, it would
    fail the response after the batch's other items were committed."""
    internal_id = raw.get("internal_id") if isinstance(raw, dict) else None
    if not isinstance(internal_id, str) or not encodes_as_utf8(internal_id):
        internal_id = None
    return SendResult(internal_id=internal_id, message_id=None, status="rejected", error=exc.error)


def _raise(code: str, message: str, field: str | None) -> Any:
    raise ItemRejected(code, message, field)


def _event_text(
    prefix: str, item: SendItem, access: StreamAccess, templates: Mapping[str, str]
) -> str | None:
    """The rendered text of an item that sends by ``event_key``; None for a text item."""
    if item.event_key is None:
        if item.variables is not None:
            _raise(
                "invalid_field",
                f"{prefix}.variables go with event_key",
                f"{prefix}.variables",
            )
        return None
    if access.type not in EVENT_STREAM_TYPES:
        _raise(
            "unsupported_content",
            f"{prefix}.event_key: event templates are for transactional and OTP streams",
            f"{prefix}.event_key",
        )
    if item.message_content is not None:
        _raise(
            "conflicting_content",
            f"{prefix}: send either message_content or event_key, not both",
            f"{prefix}.message_content",
        )
    try:
        text = render_event(templates, item.event_key, item.variables)
    except EventRejected as exc:
        _raise(exc.code, f"{prefix}.{exc.message}", f"{prefix}.{exc.field}")
    if len(text) > MAX_CONTENT_LENGTH:
        _raise(
            "content_too_long",
            f"{prefix}: the rendered text has {len(text)} characters; at most {MAX_CONTENT_LENGTH}",
            f"{prefix}.variables",
        )
    return text


def accept_messages(
    runtime: Runtime, access: StreamAccess, raw_items: list[Any], touch: ActivityTouch
) -> SendResponse:
    """Validate, store and enqueue a batch. Results come back in request order; a bad item is
    rejected alone, and a repeated ``internal_id`` returns the first message."""
    now = runtime.clock()
    event_templates: dict[str, str] = {}
    if access.type in EVENT_STREAM_TYPES and wants_events(raw_items):
        with runtime.session_factory() as session:
            event_templates = load_event_templates(session, access.stream_id)
    whatsapp_templates = (
        load_templates(runtime, access.stream_id) if access.type is StreamType.whatsapp else None
    )
    results: list[SendResult | None] = [None] * len(raw_items)
    prepared: list[PreparedItem] = []
    for index, raw in enumerate(raw_items):
        try:
            prepared.append(
                prepare_item(
                    index,
                    raw,
                    access,
                    now,
                    whatsapp_templates=whatsapp_templates,
                    templates=event_templates,
                )
            )
        except ItemRejected as exc:
            results[index] = _rejected_result(raw, exc)
            metrics.MESSAGES_REJECTED.labels(access.type.value, exc.error.code).inc()

    with runtime.session_factory() as session:
        stored, to_enqueue = store_prepared(session, access, prepared, now, touch)
        session.commit()
    for index, result in stored.items():
        results[index] = result
    enqueue_committed(runtime, access.type.queue_name, to_enqueue)

    final = [r for r in results if r is not None]
    rejected = sum(1 for r in final if r.status == "rejected")
    log.info(
        "messages_accepted",
        stream_id=str(access.stream_id),
        stream_type=access.type.value,
        accepted=len(final) - rejected,
        rejected=rejected,
        stored=sum(1 for r in stored.values() if not r.duplicate),
    )
    return SendResponse(accepted=len(final) - rejected, rejected=rejected, results=final)


_TEMPLATE_FIELDS = ("event_key", "template", "media")


def is_plain_single(access: StreamAccess, raw_items: list[Any]) -> bool:
    """One text item that needs nothing from the database to validate: the group-commit
    path (``dispatcher.group_commit``)."""
    if len(raw_items) != 1 or access.type is StreamType.whatsapp:
        return False
    item = raw_items[0]
    return isinstance(item, dict) and not any(item.get(key) for key in _TEMPLATE_FIELDS)


async def accept_single(
    runtime: Runtime, access: StreamAccess, raw: Any, committer: GroupCommitter
) -> SendResponse:
    """``accept_messages`` for one plain item: validated here in the event loop, stored by
    the group committer together with concurrent sends."""
    try:
        item = prepare_item(0, raw, access, runtime.clock())
    except ItemRejected as exc:
        metrics.MESSAGES_REJECTED.labels(access.type.value, exc.error.code).inc()
        return SendResponse(accepted=0, rejected=1, results=[_rejected_result(raw, exc)])
    result = await committer.store(access, item)
    log.info(
        "messages_accepted",
        stream_id=str(access.stream_id),
        stream_type=access.type.value,
        accepted=1,
        rejected=0,
        stored=0 if result.duplicate else 1,
    )
    return SendResponse(accepted=1, rejected=0, results=[result])


def store_prepared(
    session: Session,
    access: StreamAccess,
    prepared: list[PreparedItem],
    now: datetime,
    touch: ActivityTouch,
) -> tuple[dict[int, SendResult], list[uuid.UUID]]:
    """Store valid items of one stream in the caller's transaction (the caller commits).

    The first item of each ``internal_id`` is inserted unless the stream has it already;
    repeats, and items that lose a race to a concurrent request, get the first message's
    result with ``duplicate: true``. Returns the results by item index and the ids to
    enqueue once committed (scheduled messages wait for the relay). Item indexes must be
    unique.
    """
    fresh = _first_occurrences(prepared)
    known = _existing_by_internal_id(session, access.stream_id, [p.internal_id for p in prepared])
    to_insert = [p for p in fresh if p.internal_id not in known]
    ids = {p.index: uuid.uuid4() for p in to_insert}
    inserted = insert_messages(session, access, to_insert, ids, now)
    lost_races = [p for p in to_insert if ids[p.index] not in inserted]
    if lost_races:
        known.update(
            _existing_by_internal_id(session, access.stream_id, [p.internal_id for p in lost_races])
        )
    if inserted and touch.due(access.stream_id):
        session.execute(
            update(Stream).where(Stream.id == access.stream_id).values(last_activity_at=now)
        )
    results: dict[int, SendResult] = {}
    first_of: dict[str, SendResult] = {}
    for p in to_insert:
        if ids[p.index] in inserted:
            result = SendResult(
                internal_id=p.internal_id,
                message_id=str(ids[p.index]),
                status="scheduled" if p.send_at else "queued",
                segments=p.segments,
                encoding=p.encoding,  # type: ignore[arg-type]
            )
            results[p.index] = result
            if p.internal_id is not None:
                first_of[p.internal_id] = result
    for p in prepared:
        if p.index not in results and p.internal_id is not None:
            original = known.get(p.internal_id)
            if original is None:  # a repeat of an item of this request
                first = first_of[p.internal_id]
                # model_copy does not validate: the status as the field's type, not a str.
                status = MessageStatus(first.status)
                original = first.model_copy(update={"message_status": status})
            results[p.index] = original.model_copy(update={"duplicate": True})
    to_enqueue = [ids[p.index] for p in to_insert if ids[p.index] in inserted and not p.send_at]
    return results, to_enqueue


def _first_occurrences(items: list[PreparedItem]) -> list[PreparedItem]:
    """Items without an ``internal_id``, and the first item of each ``internal_id``."""
    seen: set[str] = set()
    firsts: list[PreparedItem] = []
    for item in items:
        if item.internal_id is None or item.internal_id not in seen:
            firsts.append(item)
            if item.internal_id is not None:
                seen.add(item.internal_id)
    return firsts


def _existing_by_internal_id(
    session: Session, stream_id: uuid.UUID, internal_ids: list[str | None]
) -> dict[str, SendResult]:
    wanted = sorted({i for i in internal_ids if i is not None})
    if not wanted:
        return {}
    rows = session.execute(
        select(
            Message.internal_id, Message.id, Message.status, Message.segments, Message.encoding
        ).where(Message.stream_id == stream_id, Message.internal_id.in_(wanted))
    ).all()
    return {
        row.internal_id: SendResult(
            internal_id=row.internal_id,
            message_id=str(row.id),
            status="scheduled" if row.status == MessageStatus.scheduled else "queued",
            segments=row.segments,
            encoding=row.encoding,
            message_status=row.status,
        )
        for row in rows
    }


def insert_messages(
    session: Session,
    access: StreamAccess,
    items: list[PreparedItem],
    ids: dict[int, uuid.UUID],
    now: datetime,
) -> set[uuid.UUID]:
    """Insert the rows and their first history event; returns the ids really inserted (a
    concurrent request may have taken an ``internal_id`` first)."""
    if not items:
        return set()
    rows = [
        {
            "id": ids[p.index],
            "account_id": access.account_id,
            "stream_id": access.stream_id,
            "stream_type": access.type.value,
            "internal_id": p.internal_id,
            "sender": p.sender,
            "recipient": p.recipient,
            "body": p.body,
            "segments": p.segments,
            "encoding": p.encoding,
            "status": (MessageStatus.scheduled if p.send_at else MessageStatus.queued).value,
            "callback_url": p.callback_url,
            "content": p.content,
            "send_at": p.send_at,
            "expires_at": p.expires_at,
            "sealed_body": p.sealed_body,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for p in items
    ]
    inserted = set(
        bulk_insert(
            session,
            Message.__table__,  # type: ignore[arg-type]
            rows,
            skip_conflicts_on=("stream_id", "internal_id"),
            returning="id",
        )
    )
    record_changes(
        session,
        [
            StatusChange(
                message_id=ids[p.index],
                stream_id=access.stream_id,
                account_id=access.account_id,
                stream_type=access.type.value,
                status=MessageStatus.scheduled if p.send_at else MessageStatus.queued,
                at=now,
                segments=p.segments,
            )
            for p in items
            if ids[p.index] in inserted
        ],
    )
    return inserted
