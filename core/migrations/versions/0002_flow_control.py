"""flow control: holds, expiry, dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:56:48.130068
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("queue", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_dead_letters_account_created",
        "dead_letters",
        ["account_id", "created_at"],
        unique=False,
    )
    op.add_column("messages", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("hold_reason", sa.String(length=32), nullable=True))
    op.add_column("messages", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_messages_status_not_before", "messages", ["status", "not_before"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_messages_status_not_before", table_name="messages")
    op.drop_column("messages", "expires_at")
    op.drop_column("messages", "hold_reason")
    op.drop_column("messages", "not_before")
    op.drop_index("ix_dead_letters_account_created", table_name="dead_letters")
    op.drop_table("dead_letters")
