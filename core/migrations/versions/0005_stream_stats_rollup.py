"""stream stats rollup: per stream, per minute, hour and day, per status

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 16:59:56.903449
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The primary key (stream, granularity, bucket, status) is the only index the stats
    # query needs: it reads one stream's buckets of one granularity over a time range.
    op.create_table(
        "stream_stats",
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_seconds", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("segments", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("stream_id", "bucket_seconds", "bucket_start", "status"),
    )


def downgrade() -> None:
    op.drop_table("stream_stats")
