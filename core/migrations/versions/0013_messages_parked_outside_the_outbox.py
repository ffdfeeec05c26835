"""messages parked for their stream leave the relay's outbox index

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 16:00:00

A worker parks the messages of a disabled or restricted stream (``hold_reason =
'stream_paused'``, off the broker, no ``not_before``), and the relay used to find them
again by walking its outbox index (``ix_messages_unmarked_not_before``: queued and
unmarked) and dropping, after a join to ``streams``, those of streams that still accept
no sends. Every sweep, once a second, walked a paused stream's whole backlog that way:
110-145 ms with 200,000 messages parked, more as the backlog grows, while the sweep's
other work (scheduled releases due within the second) waited behind it.

* ``ix_messages_outbox_not_before`` replaces it, over the same rows without the parked
  ones;
* ``ix_messages_parked_stream`` holds the parked ones by stream: the relay asks it which
  streams have messages parked, one probe per such stream, and releases those of the
  streams that accept sends again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps what it did, whatever the models say later.
NEW = {
    "ix_messages_outbox_not_before": (
        ["not_before"],
        "status = 'queued' AND enqueued_at IS NULL"
        " AND (hold_reason IS NULL OR hold_reason != 'stream_paused')",
    ),
    "ix_messages_parked_stream": (
        ["stream_id"],
        "status = 'queued' AND hold_reason = 'stream_paused'",
    ),
}
OLD = {
    "ix_messages_unmarked_not_before": (
        ["not_before"],
        "status = 'queued' AND enqueued_at IS NULL",
    ),
}


def _swap(build: dict, drop: dict) -> None:
    # CONCURRENTLY, as in 0011: the new indexes first, so no query is left without one; a
    # leftover of a failed concurrent build is dropped before each.
    with op.get_context().autocommit_block():
        for name, (columns, where) in build.items():
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)
            op.create_index(
                name,
                "messages",
                columns,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
                postgresql_concurrently=True,
            )
        for name in drop:
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)


def upgrade() -> None:
    _swap(NEW, OLD)


def downgrade() -> None:
    # Before this revision the relay found parked messages in its outbox by themselves.
    _swap(OLD, NEW)
