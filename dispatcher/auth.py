"""Who is calling: account keys for the management API, stream tokens for the send API.

One dependency per kind, used by every route of that kind (invariant 3 and 4 live here).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from threading import Lock
from time import monotonic
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool

from core.accounts import account_by_key
from core.credentials import digest, digests_match
from core.network import IPNetwork, client_address, ip_allowed, parse_network
from core.runtime import Runtime
from dispatcher.errors import ApiError
from schemas.enums import StreamStatus, StreamType
from schemas.tables import Stream

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StreamAccess:
    """What the send path needs to know about the stream a token opens."""

    stream_id: uuid.UUID
    account_id: uuid.UUID
    type: StreamType
    status: StreamStatus
    allowed_networks: tuple[IPNetwork, ...]
    default_sender: str | None
    demo: bool
    settings: dict[str, Any]


class TokenCache:
    """A small TTL cache of token digest → stream access (or ``None`` for unknown tokens).

    The TTL bounds how long a reset, disable or delete takes to reach this process
    (``auth_cache_seconds`` ≤ 1 s, invariant 3). The size bound keeps a flood of random
    tokens from growing memory.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, StreamAccess | None]] = OrderedDict()
        self._lock = Lock()

    def get(self, key: str) -> tuple[bool, StreamAccess | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < monotonic():
                return False, None
            return True, entry[1]

    def put(self, key: str, value: StreamAccess | None) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (monotonic() + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def forget_stream(self, stream_id: uuid.UUID) -> None:
        """Drop every entry for a stream (after a reset, disable or delete in this process)."""
        with self._lock:
            for key in [
                k for k, v in self._entries.items() if v[1] and v[1].stream_id == stream_id
            ]:
                del self._entries[key]


#: How the OpenAPI document tells the two credentials apart. ``auto_error=False``: they only
#: declare the scheme; the dependencies below read the header and answer the contract's 401.
ACCOUNT_KEY = HTTPBearer(
    scheme_name="accountKey", description="An account key (sk_...)", auto_error=False
)
STREAM_TOKEN = HTTPBearer(
    scheme_name="streamToken", description="A stream token (st_...)", auto_error=False
)
Declared = HTTPAuthorizationCredentials | None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def request_client_address(request: Request) -> Any:
    peer = request.client.host if request.client else None
    # Every line, in order: a proxy that adds a line of its own (rather than appending to
    # the client's) leaves the client's words in the first.
    forwarded_for = ", ".join(request.headers.getlist("x-forwarded-for")) or None
    return client_address(peer, forwarded_for, request.app.state.trusted_proxies)


def find_account(runtime: Runtime, key: str) -> uuid.UUID | None:
    with runtime.session_factory() as session:
        row = account_by_key(session, key)
    return None if row is None else row.id


async def require_account(
    request: Request, _declared: Annotated[Declared, Depends(ACCOUNT_KEY)] = None
) -> uuid.UUID:
    """Dependency: the id of the account whose key is presented, or 401."""
    key = bearer_token(request)
    if key is None:
        raise ApiError(401, "invalid_key", "Send your account key as 'Authorization: Bearer ...'.")
    account_id = await run_in_threadpool(find_account, runtime_of(request), key)
    if account_id is None:
        raise ApiError(401, "invalid_key", "The account key is not valid.")
    return account_id


def find_stream_access(runtime: Runtime, token: str, now: datetime) -> StreamAccess | None:
    token_digest = digest(token)
    with runtime.session_factory() as session:
        stream = session.scalars(
            select(Stream).where(
                Stream.deleted_at.is_(None),
                or_(
                    Stream.token_digest == token_digest,
                    (Stream.previous_token_digest == token_digest)
                    & (Stream.previous_token_expires_at > now),
                ),
            )
        ).first()
        if stream is None:
            return None
        current = digests_match(stream.token_digest, token)
        previous = digests_match(stream.previous_token_digest, token)
        if not (current or previous):
            return None
        return StreamAccess(
            stream_id=stream.id,
            account_id=stream.account_id,
            type=StreamType(stream.type),
            status=StreamStatus(stream.status),
            allowed_networks=tuple(parse_network(cidr) for cidr in stream.allowed_ips),
            default_sender=stream.default_sender,
            demo=stream.demo,
            settings=dict(stream.settings or {}),
        )


_STATE_ERRORS = {
    StreamStatus.disabled: (403, "stream_disabled", "The stream is disabled by its owner."),
    StreamStatus.restricted: (403, "stream_restricted", "The stream is on hold by an operator."),
    StreamStatus.draft: (
        409,
        "stream_draft",
        "The stream's set-up is not complete; see missing_steps.",
    ),
}


async def require_stream(
    request: Request, _declared: Annotated[Declared, Depends(STREAM_TOKEN)] = None
) -> StreamAccess:
    """Dependency for the send API: the stream a token opens, called from an allowed
    address, in a state that accepts sends. 401, 403 or 409 otherwise."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(
            401, "invalid_token", "Send your stream token as 'Authorization: Bearer ...'."
        )
    runtime = runtime_of(request)
    cache: TokenCache = request.app.state.token_cache
    key = digest(token)
    hit, access = cache.get(key)
    if not hit:
        access = await run_in_threadpool(find_stream_access, runtime, token, runtime.clock())
        cache.put(key, access)
    if access is None:
        raise ApiError(401, "invalid_token", "The stream token is not valid.")
    address = request_client_address(request)
    if not ip_allowed(address, access.allowed_networks):
        log.warning("ip_not_allowed", stream_id=str(access.stream_id), client_ip=str(address))
        raise ApiError(
            403, "ip_not_allowed", f"Requests from {address} are not allowed for this stream."
        )
    ensure_accepts_sends(access.status)
    return access


def ensure_accepts_sends(status: StreamStatus) -> None:
    """403 ``stream_disabled`` / ``stream_restricted`` or 409 ``stream_draft``."""
    if status in _STATE_ERRORS:
        http_status, code, message = _STATE_ERRORS[status]
        raise ApiError(http_status, code, message)
