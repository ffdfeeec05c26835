"""Accounts: created from the command line; the key is shown once and kept as a digest."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from core.clock import utcnow
from core.credentials import digest, new_account_key
from core.database import SessionFactory
from schemas.tables import Account


def create_account(session_factory: SessionFactory, name: str) -> tuple[uuid.UUID, str]:
    """Create an account; returns its id and its key (not recoverable later)."""
    clean = name.strip()
    if not clean or len(clean) > 200:
        raise RuntimeError("an account name has 1 to 200 characters")
    key = new_account_key()
    account = Account(id=uuid.uuid4(), name=clean, key_digest=digest(key), created_at=utcnow())
    with session_factory() as session:
        session.add(account)
        session.commit()
    return account.id, key


def rotate_account_key(session_factory: SessionFactory, account_id: uuid.UUID) -> str:
    """A new key for an account; the old one stops working."""
    key = new_account_key()
    with session_factory() as session:
        session.execute(
            update(Account).where(Account.id == account_id).values(key_digest=digest(key))
        )
        session.commit()
    return key
