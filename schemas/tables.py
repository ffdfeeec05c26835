"""SQLAlchemy tables (typed ORM). Migrations in ``core/migrations`` create exactly these."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


class Stream(Base):
    __tablename__ = "streams"
    __table_args__ = (Index("ix_streams_account_created", "account_id", "created_at"),)

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
    deleted_at: Mapped[datetime | None]

    tags: Mapped[list[StreamTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="StreamTag.position"
    )


class StreamTag(Base):
    """One row per tag, so ``?tag=`` filters with an index on every database."""

    __tablename__ = "stream_tags"

    stream_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("stream_id", "internal_id", name="uq_messages_stream_internal_id"),
        Index("ix_messages_stream_status", "stream_id", "status"),
        Index("ix_messages_status_enqueued", "status", "enqueued_at"),
        Index("ix_messages_account_created", "account_id", "created_at"),
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
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Set once the message reached the broker; NULL rows are the relay's outbox.
    enqueued_at: Mapped[datetime | None]
    #: When a worker claimed it (``queued → sending``); a stale claim is reclaimed.
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


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
