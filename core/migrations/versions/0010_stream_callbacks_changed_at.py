"""streams.callbacks_changed_at: when the stream's callback_url last changed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:30:00

The history sweep (``workers.missed_callbacks``) leaves alone a change made before the
stream's callback set-up changed. It read ``updated_at`` for that, which every edit moves (a
rename, disable, a token reset), so an unrelated edit cost the customer a callback. Streams
made before this migration get their ``updated_at``: what the sweep read until now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: SQLite cannot add a NOT NULL column without a constant default. Every stream
    # made from now on sets it (``dispatcher.routes.streams``).
    op.add_column(
        "streams", sa.Column("callbacks_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE streams SET callbacks_changed_at = updated_at")


def downgrade() -> None:
    op.drop_column("streams", "callbacks_changed_at")
