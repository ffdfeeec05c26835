"""messages: status indexes only over the states that are searched

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 12:30:00

Every status change rewrites a message's row elsewhere (``status`` is indexed, so the update
cannot be HOT), and PostgreSQL then adds the new row to every index of ``messages`` whose
predicate it meets. Three indexes led with ``status`` over every message: a delivered
message gained an entry in each on every change, although no query ever searches the final
states by status. They were the larger part of the write-ahead log a delivery writes
(``pg_waldump --stats``, 7 December 2026: B-tree inserts 57% of the drain's WAL).

They are replaced by partial indexes, one per search, each over the few messages in the
state it searches:

* ``ix_messages_in_flight_stream``: a stream's queued or sending messages, oldest first (the
  streams list's status asks for the oldest, one probe per stream; the realtime feed counts
  them);
* ``ix_messages_scheduled_send_at``: scheduled messages by release time (the relay);
* ``ix_messages_sending_claimed``: claims by age (the relay's lease checks);
* ``ix_messages_unmarked_not_before``: queued messages off the broker, held or not yet marked
  (the relay's outbox and its held releases);
* ``ix_messages_provider_message_id_present``: the provider's reference, once there is one
  (receipts), in place of ``ix_messages_provider_message_id`` over every message.

A message sent through the ingress now gains 23 index entries on its way to delivered
instead of 36: four or five at each change instead of seven or eight. The queries that use them
spell the status as a constant in the statement (``schemas.tables.status_is``), so that a
generic plan can prove the predicate too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_messages_in_flight_stream": (
        ["stream_id", "created_at"],
        "status IN ('queued', 'sending')",
    ),
    "ix_messages_scheduled_send_at": (["send_at"], "status = 'scheduled'"),
    "ix_messages_sending_claimed": (["claimed_at"], "status = 'sending'"),
    "ix_messages_unmarked_not_before": (
        ["not_before"],
        "status = 'queued' AND enqueued_at IS NULL",
    ),
    "ix_messages_provider_message_id_present": (
        ["provider", "provider_message_id"],
        "provider_message_id IS NOT NULL",
    ),
}
WHOLE = {
    "ix_messages_stream_status": ["stream_id", "status"],
    "ix_messages_status_enqueued": ["status", "enqueued_at"],
    "ix_messages_status_not_before": ["status", "not_before"],
    "ix_messages_provider_message_id": ["provider", "provider_message_id"],
}


def upgrade() -> None:
    # CONCURRENTLY, as in 0007: messages is large and hot. The new indexes are built before
    # the old ones go, so no query is left without one in between; a leftover of a failed
    # concurrent build is dropped first.
    with op.get_context().autocommit_block():
        for name, (columns, where) in PARTIAL.items():
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)
            op.create_index(
                name,
                "messages",
                columns,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
                postgresql_concurrently=True,
            )
        for name in WHOLE:
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)


def downgrade() -> None:
    # The same care the other way: a leftover of a failed build is dropped before each.
    with op.get_context().autocommit_block():
        for name, columns in WHOLE.items():
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)
            op.create_index(name, "messages", columns, postgresql_concurrently=True)
        for name in PARTIAL:
            op.drop_index(name, table_name="messages", if_exists=True, postgresql_concurrently=True)
