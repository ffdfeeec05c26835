"""relay lost-job sweep: a partial index on queued, marked messages by type and mark time

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 22:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NAME = "ix_messages_queued_type_enqueued"
MARKED_QUEUED = sa.text("status = 'queued' AND enqueued_at IS NOT NULL")


def upgrade() -> None:
    # The relay's lost-job sweep asks, per empty queue, for the queued messages of that type
    # marked enqueued before a cut-off, oldest mark first. Without this index it walked the
    # queued backlog of every type to find the few lost rows.
    #
    # Partial on queued, marked rows (the sweep's enqueued_at < cut-off implies the latter):
    # it holds only messages waiting on a queue, so it stays small on a table of mostly
    # delivered messages, and a message adds an entry when it is marked, none for its later
    # status changes and none while it is held off the broker. status leads although it is
    # constant here: the planner then costs it like (status, enqueued_at), which serves the
    # same query with the type as a filter, and picks this one; with stream_type leading it
    # sometimes took (status, enqueued_at) and walked the other types' backlog.
    #
    # CONCURRENTLY, as messages is large and hot: a plain CREATE INDEX blocks its writes for
    # the whole build. That cannot run in a transaction, so it runs in an autocommit block
    # (the migrations before it are committed first). A failed concurrent build leaves an
    # invalid index behind; dropping any leftover first makes a second run start clean.
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", if_exists=True, postgresql_concurrently=True)
        op.create_index(
            NAME,
            "messages",
            ["status", "stream_type", "enqueued_at"],
            postgresql_where=MARKED_QUEUED,
            sqlite_where=MARKED_QUEUED,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="messages", postgresql_concurrently=True)
