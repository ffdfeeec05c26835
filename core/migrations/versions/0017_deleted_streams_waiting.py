"""deleted streams: the relay ends their waiting messages

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 23:45:00

A deleted stream's messages still waiting were left to their own time: one scheduled a month
ahead read ``scheduled`` for a month, one held for quiet hours, a retry's back-off or a rate
place ``queued`` until then, and only then failed with ``stream_deleted``. The relay now
fails them within a sweep, a page at a time, through the same transition as the worker.

* ``streams.waiting_ended_at``: set by the relay once a deleted stream has nothing waiting;
  ``ix_streams_deleted_waiting`` holds the deleted streams without it, so a sweep with none
  costs one probe, however many streams were deleted before;
* ``ix_messages_scheduled_stream``: a stream's scheduled messages, so the relay reads the
  ones of a deleted stream and not the stream's delivered history (its queued ones it reads
  off ``ix_messages_in_flight_stream``).

Streams deleted before this revision have no ``waiting_ended_at``: the relay looks at each
once, ends what they still have waiting, and marks them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps what it did, whatever the models say later.
INDEXES = {
    "ix_streams_deleted_waiting": (
        "streams",
        ["deleted_at"],
        "deleted_at IS NOT NULL AND waiting_ended_at IS NULL",
    ),
    "ix_messages_scheduled_stream": ("messages", ["stream_id"], "status = 'scheduled'"),
}


def upgrade() -> None:
    # Nullable with no default: PostgreSQL adds it without rewriting the table.
    op.add_column(
        "streams", sa.Column("waiting_ended_at", sa.DateTime(timezone=True), nullable=True)
    )
    # CONCURRENTLY, as in 0011: sends and workers go on meanwhile; a leftover of a failed
    # concurrent build is dropped first.
    with op.get_context().autocommit_block():
        for name, (table, columns, where) in INDEXES.items():
            op.drop_index(name, table_name=table, if_exists=True, postgresql_concurrently=True)
            op.create_index(
                name,
                table,
                columns,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (table, _columns, _where) in INDEXES.items():
            op.drop_index(name, table_name=table, if_exists=True, postgresql_concurrently=True)
    op.drop_column("streams", "waiting_ended_at")
