"""Console sign-in sessions, kept server-side in the database.

Why the database and not Redis: ``streams dev`` has no Redis, and a session must survive the
dispatcher restarting or a Redis flush; PostgreSQL is already on every request's path. Each
session row holds only references: the digest of the random id in the cookie (so a copy of
the table opens nothing), the account, the digest of the account key used to sign in (so
rotating the key ends the session) and the session's CSRF token. Signing out deletes the row,
so a copied cookie stops working at once.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from core.accounts import account_by_key
from core.clock import as_utc
from core.credentials import digest
from core.runtime import Runtime
from schemas.tables import Account, ConsoleSession

COOKIE_NAME = "streams_console"


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who a console request comes from."""

    account_id: uuid.UUID
    account_name: str
    csrf_token: str


@dataclass(frozen=True, slots=True)
class NewSession:
    cookie_value: str
    expires_at: datetime


def sign_in(runtime: Runtime, account_key: str, lifetime: timedelta) -> NewSession | None:
    """Open a session for the account whose key this is; ``None`` when no account has it.

    Expired sessions are swept on the way (sign-ins are rare, so this costs nothing).
    """
    now = runtime.clock()
    with runtime.session_factory() as session:
        account = account_by_key(session, account_key)
        if account is None:
            return None
        cookie_value = secrets.token_urlsafe(32)
        session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
        session.add(
            ConsoleSession(
                id_digest=digest(cookie_value),
                account_id=account.id,
                key_digest=account.key_digest,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + lifetime,
            )
        )
        session.commit()
    return NewSession(cookie_value=cookie_value, expires_at=now + lifetime)


def find_session(runtime: Runtime, cookie_value: str) -> SignedIn | None:
    """The live session this cookie opens: not expired, not signed out, and its account's key
    unchanged since sign-in. ``None`` otherwise."""
    with runtime.session_factory() as session:
        row = session.execute(
            select(
                ConsoleSession.account_id,
                ConsoleSession.csrf_token,
                ConsoleSession.expires_at,
                Account.name,
            )
            .join(Account, Account.id == ConsoleSession.account_id)
            .where(
                ConsoleSession.id_digest == digest(cookie_value),
                ConsoleSession.key_digest == Account.key_digest,
            )
        ).first()
    if row is None:
        return None
    if as_utc(row.expires_at) <= runtime.clock():
        return None
    return SignedIn(account_id=row.account_id, account_name=row.name, csrf_token=row.csrf_token)


def sign_out(runtime: Runtime, cookie_value: str) -> None:
    """End the session; the cookie opens nothing afterwards, wherever it was copied."""
    with runtime.session_factory() as session:
        session.execute(
            delete(ConsoleSession).where(ConsoleSession.id_digest == digest(cookie_value))
        )
        session.commit()
