"""drop waiting follow-ups: the lost-job sweeps make up for a failed enqueue

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:10:00

``waiting_followups`` (0008) kept the status changes whose follow-up job could not be
enqueued after their commit. Since 0009 the relay makes up for any lost follow-up job from
the tables themselves (``workers.missed_callbacks``, ``workers.waiting_receipts``), a grace
after the change, so a row left here at upgrade time is recovered by those sweeps too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("waiting_followups")


def downgrade() -> None:
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
