"""SQLAlchemy tables (typed ORM). Migrations in ``core/migrations`` create exactly these."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    column,
    literal,
    or_,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from schemas.enums import IN_FLIGHT_MESSAGE_STATUSES, MessageStatus


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


#: Deleted streams whose waiting messages the relay has not ended yet.
DELETED_WAITING_PREDICATE = "deleted_at IS NOT NULL AND waiting_ended_at IS NULL"


class Stream(Base):
    __tablename__ = "streams"
    __table_args__ = (
        Index("ix_streams_account_created", "account_id", "created_at"),
        # The relay ends the waiting messages of deleted streams (migration 0017).
        Index(
            "ix_streams_deleted_waiting",
            "deleted_at",
            postgresql_where=text(DELETED_WAITING_PREDICATE),
            sqlite_where=text(DELETED_WAITING_PREDICATE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(20))
    description: Mapped[str | None] = mapped_column(Text)
    #: draft | ready | disabled | restricted. ``sending`` is derived when read.
    status: Mapped[str] = mapped_column(String(20))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    restricted_reason: Mapped[str | None] = mapped_column(Text)
    allowed_ips: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_sender: Mapped[str | None] = mapped_column(String(32))
    demo: Mapped[bool] = mapped_column(Boolean, default=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    token_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_sealed: Mapped[str | None] = mapped_column(Text)
    previous_token_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_token_expires_at: Mapped[datetime | None]
    webhook_secret_sealed: Mapped[str | None] = mapped_column(Text)

    last_activity_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: When ``settings.callback_url`` last changed (set when the stream is made): a change
    #: made before it is not called back by the history sweep (``workers.missed_callbacks``).
    callbacks_changed_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    #: When the relay ended the last message a deleted stream still had waiting (scheduled,
    #: queued or held); until then the stream is in ``ix_streams_deleted_waiting``.
    waiting_ended_at: Mapped[datetime | None]

    tags: Mapped[list[StreamTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="StreamTag.position"
    )
    #: The WhatsApp Cloud API set-up of a ``whatsapp`` stream (None until it is saved).
    whatsapp: Mapped[WhatsAppConfig | None] = relationship(lazy="selectin")


class StreamTag(Base):
    """One row per tag, so ``?tag=`` filters with an index on every database."""

    __tablename__ = "stream_tags"

    stream_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


#: The in-flight statuses as an index predicate: ``status IN ('queued', 'sending')``.
IN_FLIGHT_PREDICATE = "status IN ({})".format(
    ", ".join(f"'{status.value}'" for status in sorted(IN_FLIGHT_MESSAGE_STATUSES))
)

#: ``hold_reason`` of a queued message parked until its stream accepts sends again.
STREAM_PAUSED_HOLD = "stream_paused"
#: The relay's outbox: queued messages off the broker that it enqueues, at their
#: ``not_before`` or once missed; parked messages wait for their stream instead.
OUTBOX_PREDICATE = (
    "status = 'queued' AND enqueued_at IS NULL"
    f" AND (hold_reason IS NULL OR hold_reason != '{STREAM_PAUSED_HOLD}')"
)
#: Messages parked until their stream accepts sends again.
PARKED_PREDICATE = f"status = 'queued' AND hold_reason = '{STREAM_PAUSED_HOLD}'"
#: ``hold_reason`` of a marketing message held until its recipient's window opens.
QUIET_HOURS_HOLD = "quiet_hours"
#: Messages held off the broker for quiet hours, which a change of the window releases.
QUIET_HELD_PREDICATE = (
    f"status = 'queued' AND hold_reason = '{QUIET_HOURS_HOLD}' AND enqueued_at IS NULL"
)


def _partial(name: str, *columns: str | ColumnElement[Any], where: str) -> Index:
    """An index over the rows that meet ``where`` (PostgreSQL and SQLite alike)."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class Message(Base):
    __tablename__ = "messages"
    # Each status change rewrites the row, and the new row enters every index whose predicate
    # it meets; so the status searches have partial indexes over the few messages in the
    # states they search, none over the many final ones (why: migration 0011). A query that
    # means to use one spells its status with ``status_is``.
    __table_args__ = (
        UniqueConstraint("stream_id", "internal_id", name="uq_messages_stream_internal_id"),
        Index("ix_messages_account_created", "account_id", "created_at"),
        _partial(
            "ix_messages_provider_message_id_present",
            "provider",
            "provider_message_id",
            where="provider_message_id IS NOT NULL",
        ),
        _partial(
            "ix_messages_in_flight_stream", "stream_id", "created_at", where=IN_FLIGHT_PREDICATE
        ),
        _partial("ix_messages_scheduled_send_at", "send_at", where="status = 'scheduled'"),
        # A deleted stream's scheduled messages, ended by the relay (migration 0017).
        _partial("ix_messages_scheduled_stream", "stream_id", where="status = 'scheduled'"),
        _partial("ix_messages_sending_claimed", "claimed_at", where="status = 'sending'"),
        _partial("ix_messages_outbox_not_before", "not_before", where=OUTBOX_PREDICATE),
        _partial("ix_messages_parked_stream", "stream_id", where=PARKED_PREDICATE),
        # A change of a stream's quiet hours releases what they held (migration 0016).
        _partial("ix_messages_quiet_held_stream", "stream_id", where=QUIET_HELD_PREDICATE),
        # The relay expires parked messages at the end of their validity (migration 0015).
        _partial(
            "ix_messages_parked_expires",
            "expires_at",
            where=f"{PARKED_PREDICATE} AND expires_at IS NOT NULL",
        ),
        # The relay's lost-job sweep: queued messages of a type marked enqueued before a time
        # (why this shape: migration 0007).
        _partial(
            "ix_messages_queued_type_enqueued",
            "status",
            "stream_type",
            "enqueued_at",
            where="status = 'queued' AND enqueued_at IS NOT NULL",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    stream_type: Mapped[str] = mapped_column(String(20))
    internal_id: Mapped[str | None] = mapped_column(String(128))
    sender: Mapped[str | None] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    send_at: Mapped[datetime | None]
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    #: Claims made, ever: each claim counts one, and the outcome of a claim is recorded only
    #: while this is still that claim's number (``core.message_states``), so it never goes
    #: back (a replay does not reset it).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: ``attempts`` when the current round of ``max_send_attempts`` began: 0, or where a
    #: replay of its dead letter left it. The attempts of this round are the difference.
    attempts_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Set once the message reached the broker; NULL rows are the relay's outbox.
    enqueued_at: Mapped[datetime | None]
    #: When a worker claimed it (``queued → sending``); a stale claim is reclaimed.
    claimed_at: Mapped[datetime | None]
    #: A queued message held back (rate limit, quiet hours) waits in the database until then;
    #: the relay puts it back on its queue.
    not_before: Mapped[datetime | None]
    hold_reason: Mapped[str | None] = mapped_column(String(32))
    #: Past this moment the message is ``expired`` rather than sent late.
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: What a WhatsApp message carries besides text (template and its parameters, or media).
    content: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: The text to send when ``body`` had to be masked (it holds an OTP code), sealed with
    #: ``SecretBox``; cleared once the message is sent or final (``core.sealed_bodies``).
    sealed_body: Mapped[str | None] = mapped_column(Text)


def status_is(*statuses: MessageStatus) -> ColumnElement[bool]:
    """``messages.status`` is one of ``statuses``, written into the statement as constants
    rather than sent as parameters. A partial index on a status is only usable when the
    planner can prove its predicate from the query; with parameters it cannot, once
    PostgreSQL settles on a generic plan for a statement psycopg has prepared."""
    column = Message.__table__.c.status
    constants = [
        literal(status.value, String(20), literal_execute=True) for status in sorted(statuses)
    ]
    return column == constants[0] if len(constants) == 1 else column.in_(constants)


def is_quiet_held() -> ColumnElement[bool]:
    """The message is held off the broker for quiet hours, spelled as
    ``QUIET_HELD_PREDICATE`` is, with constants, so its partial index serves the search."""
    column = Message.__table__.c
    constant = literal(QUIET_HOURS_HOLD, String(32), literal_execute=True)
    return and_(
        status_is(MessageStatus.queued),
        column.hold_reason == constant,
        column.enqueued_at.is_(None),
    )


def is_parked(parked: bool = True) -> ColumnElement[bool]:
    """The message is parked until its stream accepts sends again (or, with ``parked``
    False, is not), spelled as the partial indexes spell it, with a constant: the term of
    ``PARKED_PREDICATE`` or the last term of ``OUTBOX_PREDICATE``."""
    column = Message.__table__.c.hold_reason
    constant = literal(STREAM_PAUSED_HOLD, String(32), literal_execute=True)
    return column == constant if parked else or_(column.is_(None), column != constant)


class MessageEvent(Base):
    """The status history: one row per status change, with its time."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    detail: Mapped[str | None] = mapped_column(Text)


class DeadLetter(Base):
    """A message that kept failing after its retries, kept to be looked at and replayed."""

    __tablename__ = "dead_letters"
    # The list's filters each walk an index in the list's order, newest first and then by
    # id, and stop after a page (why: migration 0014).
    __table_args__ = (
        Index("ix_dead_letters_account_created", "account_id", "created_at"),
        Index(
            "ix_dead_letters_stream_created",
            "account_id",
            "stream_id",
            column("created_at").desc(),
            "id",
        ),
        _partial(
            "ix_dead_letters_unreplayed_created",
            "account_id",
            column("created_at").desc(),
            "id",
            where="replayed_at IS NULL",
        ),
        _partial(
            "ix_dead_letters_replayed_created",
            "account_id",
            column("created_at").desc(),
            "id",
            where="replayed_at IS NOT NULL",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    queue: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    replayed_at: Mapped[datetime | None]


# ---------------------------------------------------------------- two-way and WhatsApp


class WhatsAppConfig(Base):
    """A WhatsApp stream's Cloud API set-up. Secrets are sealed (``SecretBox``); the access
    token's last four characters are kept apart so the API can show them."""

    __tablename__ = "whatsapp_configs"

    stream_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    business_account_id: Mapped[str | None] = mapped_column(String(32))
    phone_number_id: Mapped[str | None] = mapped_column(String(32))
    access_token_sealed: Mapped[str | None] = mapped_column(Text)
    access_token_last4: Mapped[str | None] = mapped_column(String(4))
    app_secret_sealed: Mapped[str | None] = mapped_column(Text)
    verify_token_sealed: Mapped[str | None] = mapped_column(Text)
    #: Set when Meta refused the credentials (e.g. an expired token); cleared by a new token.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class WhatsAppTemplate(Base):
    """A message template approved by Meta, registered on a stream so sends can be checked."""

    __tablename__ = "whatsapp_templates"
    __table_args__ = (
        UniqueConstraint("stream_id", "name", "language", name="uq_whatsapp_templates_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text)
    parameter_count: Mapped[int] = mapped_column(Integer)
    buttons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]


class InboundMessage(Base):
    """A message a person sent to one of a stream's numbers (two-way MO, WhatsApp)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint(
            "stream_id", "provider", "provider_message_id", name="uq_inbound_provider_message"
        ),
        Index("ix_inbound_stream_received", "stream_id", "received_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    sender: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    media: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: ``stop`` or ``start`` when the text was an opt-out keyword.
    opt_out: Mapped[str | None] = mapped_column(String(8))
    received_at: Mapped[datetime]
    created_at: Mapped[datetime]


class Suppression(Base):
    """A number that opted out of an account's marketing (STOP); START removes it."""

    __tablename__ = "suppressions"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    phone: Mapped[str] = mapped_column(String(20), primary_key=True)
    keyword: Mapped[str] = mapped_column(String(16))
    stream_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("streams.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime]


class ProviderReceipt(Base):
    """A final delivery receipt for a message, or for one part of a multipart message.

    Receipts that name a provider id no message carries yet (they can beat the worker's
    ``sent``) wait here with ``message_id`` NULL until the message is known.
    """

    __tablename__ = "provider_receipts"
    __table_args__ = (
        UniqueConstraint(
            "provider", "provider_message_id", "part", name="uq_provider_receipts_part"
        ),
        Index("ix_provider_receipts_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    provider_message_id: Mapped[str] = mapped_column(String(128))
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE")
    )
    #: 0 for a whole-message receipt, else the part number (1-based).
    part: Mapped[int] = mapped_column(Integer)
    parts: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]


class WaitingFollowUp(Base):
    """Committed status changes whose follow-up job (customer callbacks, early receipts)
    could not be put on the callbacks queue after their commit, Redis being unreachable:
    kept here until the callback sweep enqueues them (``workers.queueing``)."""

    __tablename__ = "waiting_followups"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    #: The job's argument: ``[message_id, status, at, detail]`` items.
    changes: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class SweepCursor(Base):
    """How far a sweep has read an append-only table, by id: the next run starts after
    ``position``. A sweep run locks its row, so two relays never read the same rows."""

    __tablename__ = "sweep_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class CallbackDelivery(Base):
    """One signed callback to a customer (a status change or an inbound message): the outbox
    row of the callbacks queue, then its outcome. ``dead`` rows are the dead letters."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        Index("ix_callback_deliveries_stream_state", "stream_id", "state"),
        Index("ix_callback_deliveries_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    #: ``message.status`` or ``message.inbound``.
    event: Mapped[str] = mapped_column(String(32))
    #: A message's own ``callback_url``; NULL means the stream's current callback set-up.
    url: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: pending | delivered | dead | canceled
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    #: Retries stop once this is more than the retry window ago (reset by a replay).
    window_started_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    dead_at: Mapped[datetime | None]
    replayed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class OtpCode(Base):
    """The live one-time code of a recipient on an OTP stream: one row per (stream,
    recipient), overwritten by each new send, so a new code supersedes the old one. The code
    itself is never stored, only its keyed digest (``core.otp_codes``)."""

    __tablename__ = "otp_codes"
    __table_args__ = (
        UniqueConstraint("stream_id", "recipient", name="uq_otp_codes_stream_recipient"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id"))
    recipient: Mapped[str] = mapped_column(String(20))
    #: The message that carried the current code.
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id"))
    code_digest: Mapped[str] = mapped_column(String(64))
    #: Wrong verifications still allowed; at 0 the code is dead.
    attempts_left: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    #: Set by the one successful verification.
    used_at: Mapped[datetime | None]


class EventTemplate(Base):
    """A named text with ``{variable}`` placeholders that sends may use by ``event_key``
    (transactional and OTP streams)."""

    __tablename__ = "event_templates"
    __table_args__ = (UniqueConstraint("stream_id", "key", name="uq_event_templates_stream_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    stream_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    template: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class StreamStat(Base):
    """The stats rollup: how many of a stream's messages reached each status in each bucket.

    Written in the same transaction as the status changes it counts (``core.stats_rollup``),
    so it always agrees with the messages. Each change is counted in its minute, its hour and
    its day, so that a 30-day query reads a few hundred buckets instead of 43,200 minutes.
    ``status`` is a message status, or ``accepted`` for messages entering the system.
    """

    __tablename__ = "stream_stats"

    stream_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    #: 60, 3600 or 86400: minute, hour or day buckets.
    bucket_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    messages: Mapped[int] = mapped_column(BigInteger)
    segments: Mapped[int] = mapped_column(BigInteger)


class ConsoleSession(Base):
    """A signed-in console browser. The cookie holds a random id; only its digest is kept,
    so a copy of this table opens no session. ``key_digest`` is the account key's digest at
    sign-in: rotating the key ends every session opened with the old one. The key itself is
    never stored."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_expires", "expires_at"),)

    id_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    key_digest: Mapped[str] = mapped_column(String(64))
    #: The synchronizer token every form and state-changing request of this session carries.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
