"""messages held for quiet hours, by stream

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:55:00

A marketing message held outside its recipient's window (``hold_reason = 'quiet_hours'``)
waited for the window it was held under, however the stream's ``quiet_hours`` changed
meanwhile: turned off at 21:00, a campaign still went out at 09:00 the next day. A change
of the window now moves the stream's quiet-hours holds to due at once, in the settings
change's transaction, and the relay's held sweep releases them for the gate to decide
again. ``ix_messages_quiet_held_stream`` finds exactly those rows of one stream (held, not
on the broker), so the change reads no other message of the stream, however large its
history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps what it did, whatever the models say later.
NAME = "ix_messages_quiet_held_stream"
WHERE = "status = 'queued' AND hold_reason = 'quiet_hours' AND enqueued_at IS NULL"


def upgrade() -> None:
    # CONCURRENTLY, as in 0011: sends and workers go on meanwhile; a leftover of a failed
    # concurrent build is dropped first.
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", if_exists=True, postgresql_concurrently=True)
        op.create_index(
            NAME,
            "messages",
            ["stream_id"],
            postgresql_where=sa.text(WHERE),
            sqlite_where=sa.text(WHERE),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", if_exists=True, postgresql_concurrently=True)
