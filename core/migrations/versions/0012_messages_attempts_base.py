"""messages.attempts_base: a replay opens a new round of attempts without reusing claim numbers

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 15:40:00

``messages.attempts`` numbers a message's claims, and the outcome of a claim is recorded only
while the message is still on that number. A replay of a dead letter set it back to 0 to give
the message a new round of ``max_send_attempts``, so the replay's first claim took number 1
again: a worker stalled past the lease on the old claim 1 could then record its late outcome
on the new one. ``attempts`` now only grows; a replay sets ``attempts_base`` to it, and the
attempts of the current round are ``attempts - attempts_base``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table, and SQLite
    # can add it NOT NULL.
    op.add_column(
        "messages",
        sa.Column("attempts_base", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    # The attempts of the current round, as the column before this one counted them.
    op.execute("UPDATE messages SET attempts = attempts - attempts_base WHERE attempts_base > 0")
    op.drop_column("messages", "attempts_base")
