"""dead_letters: an index for each filter of the list, in the list's order

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 18:30:00

The dead letters list (``GET /api/v1/dead-letters``) shows an account's letters newest first,
then by id, and filters them by stream and by whether they were replayed. Its only index was
``ix_dead_letters_account_created``, so a filter was checked on every letter of the account:
with 200,000 letters in one stream, a page of another stream's 50 letters, or of the 25
replayed ones, read all 200,000 (a parallel scan of the table, 22-25 ms), and so did its
``total`` (24-28 ms), more as the account's letters grow. With these indexes each takes
0.1-0.4 ms (EXPLAIN ANALYZE, 7 December 2026).

* ``ix_dead_letters_stream_created``: an account's letters of one stream. The account is in
  the index too, so that a stream's total is counted from the index alone, and so that a
  generic plan does not take the account's range (in a test it combined an index by stream with
  ``ix_dead_letters_account_created`` in a bitmap, reading every letter of the account);
* ``ix_dead_letters_unreplayed_created``, ``ix_dead_letters_replayed_created``: an account's
  letters not replayed yet, and those replayed; a replay moves a letter from one to the other.

Each ends with ``created_at DESC, id``, the list's order exactly, so a page is the first
entries of the filter's range and needs no sort of ties (the relay fails a batch of lapsed
claims at one time). A ``total`` still counts every letter its filter matches: 35 ms for a
stream's 200,000, as before.

No index by ``message_id``: no query looks letters up by message, and the code deletes no
message, so its ``ON DELETE CASCADE`` never searches them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps what it did, whatever the models say later.
# Each: the columns the filter holds equal, then the list's order; the rows it holds.
INDEXES = {
    "ix_dead_letters_stream_created": (["account_id", "stream_id"], None),
    "ix_dead_letters_unreplayed_created": (["account_id"], "replayed_at IS NULL"),
    "ix_dead_letters_replayed_created": (["account_id"], "replayed_at IS NOT NULL"),
}


def upgrade() -> None:
    # CONCURRENTLY, as in 0011: the list and the workers that record letters go on meanwhile;
    # a leftover of a failed concurrent build is dropped first.
    with op.get_context().autocommit_block():
        for name, (equal, where) in INDEXES.items():
            op.drop_index(
                name, table_name="dead_letters", if_exists=True, postgresql_concurrently=True
            )
            op.create_index(
                name,
                "dead_letters",
                [*equal, sa.column("created_at").desc(), "id"],
                postgresql_where=sa.text(where) if where else None,
                sqlite_where=sa.text(where) if where else None,
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.drop_index(
                name, table_name="dead_letters", if_exists=True, postgresql_concurrently=True
            )
