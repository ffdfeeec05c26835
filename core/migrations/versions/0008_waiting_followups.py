"""waiting follow-ups: status changes whose callbacks job could not be enqueued

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written only when the enqueue after a commit fails (Redis unreachable), read and
    # emptied by the callback sweep: small, and not on any hot path.
    op.create_table(
        "waiting_followups",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("waiting_followups")
