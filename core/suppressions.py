"""The account's suppression list: numbers that opted out of marketing (STOP).

Suppressions are per account, whichever stream heard the STOP: a person who opts out of one
of a brand's marketing streams has opted out of the brand. OTP and transactional messages
still go (they are not marketing).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Exists, delete, exists
from sqlalchemy.orm import Session

from core.database import insert_ignoring_duplicates
from schemas.tables import Suppression


def suppress(
    session: Session,
    account_id: uuid.UUID,
    phone: str,
    *,
    keyword: str,
    stream_id: uuid.UUID | None,
    now: datetime,
) -> None:
    """Add ``phone`` (E.164) to the account's list; already there changes nothing."""
    statement = insert_ignoring_duplicates(session, Suppression, ["account_id", "phone"])
    session.execute(
        statement,
        [
            {
                "account_id": account_id,
                "phone": phone,
                "keyword": keyword[:16],
                "stream_id": stream_id,
                "created_at": now,
            }
        ],
    )


def unsuppress(session: Session, account_id: uuid.UUID, phone: str) -> bool:
    """Remove ``phone``; True when it was on the list."""
    removed = session.execute(
        delete(Suppression).where(Suppression.account_id == account_id, Suppression.phone == phone)
    ).rowcount
    return bool(removed)


def is_suppressed_clause(account_id: Any, phone: Any) -> Exists:
    """True when ``phone`` is on the list of ``account_id`` (columns or values): an
    expression, so a statement loading many messages checks them all at once."""
    table = Suppression.__table__
    return exists().where(table.c.account_id == account_id, table.c.phone == phone)
