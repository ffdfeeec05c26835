"""parked messages, by the end of their validity

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 18:45:00

A message parked until its stream accepts sends again (``hold_reason = 'stream_paused'``)
waited with its validity long gone: it became ``expired`` only once the stream was back and
a worker reached it, hours or days late, with the customer's status callback as late. The
relay now expires parked messages when their validity ends, and finds the ones due with
``ix_messages_parked_expires``: one probe a sweep, however many messages are parked. Only
parked messages with a validity are in it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps what it did, whatever the models say later.
NAME = "ix_messages_parked_expires"
WHERE = "status = 'queued' AND hold_reason = 'stream_paused' AND expires_at IS NOT NULL"


def upgrade() -> None:
    # CONCURRENTLY, as in 0011: sends and workers go on meanwhile; a leftover of a failed
    # concurrent build is dropped first.
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", if_exists=True, postgresql_concurrently=True)
        op.create_index(
            NAME,
            "messages",
            ["expires_at"],
            postgresql_where=sa.text(WHERE),
            sqlite_where=sa.text(WHERE),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", if_exists=True, postgresql_concurrently=True)
