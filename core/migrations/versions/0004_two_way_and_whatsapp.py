"""two-way and WhatsApp: inbound messages, suppressions, WhatsApp set-up and templates,
provider receipts (multipart), customer callback deliveries, and ``messages.content``

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:59:45.543868
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_callback_deliveries_state_next",
        "callback_deliveries",
        ["state", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_callback_deliveries_stream_state",
        "callback_deliveries",
        ["stream_id", "state"],
        unique=False,
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("sender", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=32), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media", sa.JSON(), nullable=True),
        sa.Column("opt_out", sa.String(length=8), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "stream_id", "provider", "provider_message_id", name="uq_inbound_provider_message"
        ),
    )
    op.create_index(
        "ix_inbound_stream_received", "inbound_messages", ["stream_id", "received_at"], unique=False
    )
    op.create_table(
        "suppressions",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("keyword", sa.String(length=16), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("account_id", "phone"),
    )
    op.create_table(
        "whatsapp_configs",
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("business_account_id", sa.String(length=32), nullable=True),
        sa.Column("phone_number_id", sa.String(length=32), nullable=True),
        sa.Column("access_token_sealed", sa.Text(), nullable=True),
        sa.Column("access_token_last4", sa.String(length=4), nullable=True),
        sa.Column("app_secret_sealed", sa.Text(), nullable=True),
        sa.Column("verify_token_sealed", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("stream_id"),
    )
    op.create_table(
        "whatsapp_templates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("parameter_count", sa.Integer(), nullable=False),
        sa.Column("buttons", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("stream_id", "name", "language", name="uq_whatsapp_templates_name"),
    )
    op.create_table(
        "provider_receipts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_message_id", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "provider", "provider_message_id", "part", name="uq_provider_receipts_part"
        ),
    )
    op.create_index(
        "ix_provider_receipts_message", "provider_receipts", ["message_id"], unique=False
    )
    op.add_column("messages", sa.Column("content", sa.JSON(), nullable=True))
    op.create_index(
        "ix_messages_provider_message_id",
        "messages",
        ["provider", "provider_message_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
    op.drop_column("messages", "content")
    op.drop_index("ix_provider_receipts_message", table_name="provider_receipts")
    op.drop_table("provider_receipts")
    op.drop_table("whatsapp_templates")
    op.drop_table("whatsapp_configs")
    op.drop_table("suppressions")
    op.drop_index("ix_inbound_stream_received", table_name="inbound_messages")
    op.drop_table("inbound_messages")
    op.drop_index("ix_callback_deliveries_stream_state", table_name="callback_deliveries")
    op.drop_index("ix_callback_deliveries_state_next", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
