"""Accounts: created from the command line; the key is shown once and kept as a digest."""

from __future__ import annotations

import uuid

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from core.clock import utcnow
from core.credentials import digest, digests_match, new_account_key
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


def account_by_key(session: Session, key: str) -> Row[tuple[uuid.UUID, str]] | None:
    """The (``id``, ``key_digest``) of the account whose key this is, or None: looked up by
    the key's digest, then the digests compared in constant time (invariant 3's rule for
    tokens, kept for account keys too)."""
    row = session.execute(
        select(Account.id, Account.key_digest).where(Account.key_digest == digest(key))
    ).first()
    if row is None or not digests_match(row.key_digest, key):
        return None
    return row
