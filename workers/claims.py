"""Loading waiting messages and claiming them for sending, many at a time.

A batch job costs one statement to load its messages (with their streams) and one
conditional UPDATE to claim those that passed their gates: ``queued → sending`` (or a
``sending`` whose claim is older than the lease: its worker died, and its provider would
recognise the send if it took it already), of a stream that still sends: one paused or
deleted since the load is left to the caller. Only the rows the UPDATE moved are sent, so a
redelivered job, or two workers racing on one message, never send it twice (invariant 2).
Nor does a redelivered job send a message early that waits out a retry's back-off. Both are
Core statements built once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    and_,
    bindparam,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from core.clock import as_utc
from core.message_states import EVENTS, MESSAGES
from core.provider_choice import NOT_IDEMPOTENT_TYPES
from core.stats_rollup import rollup_upsert_sql
from core.stream_rules import accepts_sends
from core.suppressions import is_suppressed_clause
from schemas.enums import MessageStatus, StreamStatus, StreamType
from schemas.tables import Stream, status_is

STREAMS: Table = Stream.__table__  # type: ignore[assignment]
#: A stream in one of these does not send: its messages are parked. That is every stored
#: status but ``ready`` (``core.stream_rules.accepts_sends``): the customer's pause, an
#: operator's restriction, and a set-up made incomplete again (``draft``), which the ingress
#: refuses too and the relay parks as well.
PAUSED_STREAM_STATUSES = tuple(
    status.value
    for status in StreamStatus
    if status is not StreamStatus.sending and not accepts_sends(status)
)
#: Stream settings that make admission count a message (``workers.admission``).
#: Stream setting → the ``Limits`` field it sets. A message of a stream with any of them
#: goes through admission, never the ungated claim.
LIMIT_SETTINGS = {
    "max_per_second": "per_second",
    "max_per_day": "per_day",
    "max_per_recipient_per_hour": "per_recipient_per_hour",
}

#: What a sender needs of a message (``Delivery`` makes its job of them).
_JOB_COLUMNS = (
    MESSAGES.c.id,
    MESSAGES.c.stream_id,
    MESSAGES.c.account_id,
    MESSAGES.c.stream_type,
    MESSAGES.c.status,
    MESSAGES.c.claimed_at,
    MESSAGES.c.sender,
    MESSAGES.c.recipient,
    MESSAGES.c.body,
    MESSAGES.c.sealed_body,
    MESSAGES.c.segments,
    MESSAGES.c.encoding,
    MESSAGES.c.attempts,
    MESSAGES.c.attempts_base,
    MESSAGES.c.expires_at,
    MESSAGES.c.content,
    MESSAGES.c.callback_url,
    STREAMS.c.demo,
    STREAMS.c.settings,
)

_LOAD = (
    select(
        *_JOB_COLUMNS,
        MESSAGES.c.hold_reason,
        MESSAGES.c.not_before,
        STREAMS.c.status.label("stream_status"),
        STREAMS.c.deleted_at.label("stream_deleted_at"),
        is_suppressed_clause(MESSAGES.c.account_id, MESSAGES.c.recipient).label("suppressed"),
    )
    .join(STREAMS, STREAMS.c.id == MESSAGES.c.stream_id)
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
)

#: ``hold_reason`` of a message waiting out a retry's back-off (or a carrier's Retry-After).
RETRY_HOLD = "retry"
#: ``hold_reason`` of a message parked for its place under a rate (``workers.admission``).
RATE_HOLD = "rate_limited"
#: How early a message waiting out a retry's back-off, or parked for its place, may still
#: be taken: its job's broker delay is counted in whole milliseconds from its worker's
#: clock, and the taking worker's clock may differ a little; a job that comes sooner is
#: another one (redelivered).
EARLY_SLACK = timedelta(seconds=1)


def attempts_used() -> ColumnElement[int]:
    """The attempts of the message's current round (since its last replay), which
    ``max_send_attempts`` bounds; ``attempts`` itself numbers every claim ever made."""
    return MESSAGES.c.attempts - MESSAGES.c.attempts_base


def stale_claim(cutoff: Any, max_attempts: Any) -> ColumnElement[bool]:
    """A claim that outlived its lease (its worker died, or its record failed) and may be
    taken again: it has attempts left, and its provider recognises a send offered twice
    (``core.provider_choice.NOT_IDEMPOTENT_TYPES``). ``cutoff`` and ``max_attempts`` are
    values or bind parameters."""
    return and_(
        status_is(MessageStatus.sending),
        MESSAGES.c.claimed_at < cutoff,
        attempts_used() < max_attempts,
        MESSAGES.c.stream_type.not_in(sorted(NOT_IDEMPOTENT_TYPES)),
    )


def may_retake(
    stream_type: str,
    claimed_at: datetime | None,
    attempts_used: int,
    cutoff: datetime,
    max_attempts: int,
) -> bool:
    """``stale_claim`` for a loaded row (``cutoff``: the moment the lease began;
    ``attempts_used``: ``attempts - attempts_base``)."""
    return (
        claimed_at is not None
        and as_utc(claimed_at) < cutoff
        and attempts_used < max_attempts
        and stream_type not in NOT_IDEMPOTENT_TYPES
    )


#: Holds a job may take only when due (``hold_not_due``).
TIMED_HOLDS = (RETRY_HOLD, RATE_HOLD)


def hold_not_due(hold_reason: str | None, not_before: datetime | None, now: datetime) -> bool:
    """A queued row waiting out a retry's back-off (or a carrier's Retry-After), or parked
    for its place under a rate, with more than ``EARLY_SLACK`` to go. A job for it now is
    another one (a redelivery, the relay's for an enqueue mark not yet written), or its own
    come early from a host whose clock is behind: the caller hands it to the relay for its
    time. The claim refuses such a retry's row too (``_CLAIMABLE``)."""
    return (
        hold_reason in TIMED_HOLDS
        and not_before is not None
        and as_utc(not_before) > now + EARLY_SLACK
    )


def spent_claim(cutoff: Any, max_attempts: Any) -> ColumnElement[bool]:
    """A claim that outlived its lease and is never taken again: its claims used up
    ``max_attempts``, or its provider would not recognise a send offered twice. The carrier
    may have taken it, so the relay fails it as a dead letter (``workers.relay``)."""
    return and_(
        status_is(MessageStatus.sending),
        MESSAGES.c.claimed_at < cutoff,
        or_(
            attempts_used() >= max_attempts,
            MESSAGES.c.stream_type.in_(sorted(NOT_IDEMPOTENT_TYPES)),
        ),
    )


#: A queued message, unless it waits out a retry's back-off (a provider's Retry-After) that
#: has more than ``EARLY_SLACK`` to run: only its own delayed job, or the relay, may
#: take it then, not a job redelivered early. Or a stale claim that may be taken again.
_CLAIMABLE = or_(
    and_(
        MESSAGES.c.status == MessageStatus.queued.value,
        or_(
            MESSAGES.c.hold_reason.is_(None),
            MESSAGES.c.hold_reason != RETRY_HOLD,
            MESSAGES.c.not_before.is_(None),
            MESSAGES.c.not_before <= bindparam("retry_due"),
        ),
    ),
    stale_claim(bindparam("cutoff"), bindparam("max_attempts")),
)
#: The message's stream still sends: not deleted, not paused (``PAUSED_STREAM_STATUSES``).
#: Every claim joins the stream (by its primary key) for it, as the claim is the last step
#: before the provider: a pause or a delete answered before it stops the message, however
#: long ago its job loaded the stream (a rate-limited batch admits its messages one by one).
_STREAM_SENDS = and_(
    STREAMS.c.id == MESSAGES.c.stream_id,
    STREAMS.c.deleted_at.is_(None),
    STREAMS.c.status.not_in(PAUSED_STREAM_STATUSES),
)


def stream_sends(stream_status: str, stream_deleted_at: datetime | None) -> bool:
    """``_STREAM_SENDS`` for a loaded row (``load_messages``' ``stream_status`` and
    ``stream_deleted_at``)."""
    return stream_deleted_at is None and stream_status not in PAUSED_STREAM_STATUSES


_CLAIMED_VALUES = {
    "status": MessageStatus.sending.value,
    "claimed_at": bindparam("now"),
    "updated_at": bindparam("now"),
    "attempts": MESSAGES.c.attempts + 1,
    "not_before": None,
    "hold_reason": None,
}

_CLAIM = (
    update(MESSAGES)
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)), _CLAIMABLE, _STREAM_SENDS)
    .values(**_CLAIMED_VALUES)
    .returning(MESSAGES.c.id, MESSAGES.c.attempts, MESSAGES.c.attempts_base)
)


def load_messages(session: Session, ids: Sequence[uuid.UUID]) -> list[Row]:  # type: ignore[type-arg]
    """The messages of ``ids`` that exist (with their ``hold_reason`` and ``not_before``),
    with their stream's ``stream_status``,
    ``stream_deleted_at``, ``demo`` and ``settings`` and whether the recipient is on the
    account's suppression list (``suppressed``)."""
    if not ids:
        return []
    return list(session.execute(_LOAD, {"ids": list(ids)}))


class ClaimNumber(NamedTuple):
    """A claim's attempt number (what its outcome is fenced by) and the ``attempts_base`` of
    the round it belongs to, both as the claim itself read them: a message loaded earlier
    may have been replayed since."""

    attempt: int
    base: int


def claim_for_sending(
    session: Session,
    ids: Sequence[uuid.UUID],
    now: datetime,
    lease_seconds: float,
    max_attempts: int,
) -> dict[uuid.UUID, ClaimNumber]:
    """Claim the messages of ``ids`` that are queued (and not waiting out a retry's
    back-off), or whose claim is older than ``lease_seconds`` and may be taken again
    (``stale_claim``), and whose stream still sends (not paused, not deleted: the load read
    it some time ago). Returns each claimed message's attempt number, with the
    ``attempts_base`` its round began at as the claim found it; the caller records the
    changes and commits."""
    if not ids:
        return {}
    parameters = _claim_parameters(ids, now, lease_seconds, max_attempts)
    rows = session.execute(_CLAIM, parameters)
    return {row.id: ClaimNumber(row.attempts, row.attempts_base) for row in rows}


def _claim_parameters(
    ids: Sequence[uuid.UUID], now: datetime, lease_seconds: float, max_attempts: int
) -> dict[str, Any]:
    return {
        "ids": list(ids),
        "now": now,
        "retry_due": now + EARLY_SLACK,
        "cutoff": now - timedelta(seconds=lease_seconds),
        "max_attempts": max_attempts,
    }


_RELEASE = (
    update(MESSAGES)
    .where(
        tuple_(MESSAGES.c.id, MESSAGES.c.attempts).in_(bindparam("claims", expanding=True)),
        MESSAGES.c.status == MessageStatus.sending.value,
    )
    .values(
        status=MessageStatus.queued.value,
        claimed_at=None,
        updated_at=bindparam("now"),
        attempts=MESSAGES.c.attempts - 1,
    )
    .returning(MESSAGES.c.id)
)


def release_claims(
    session: Session, claims: Mapping[uuid.UUID, int], now: datetime
) -> set[uuid.UUID]:
    """Give back claims not used (``sending → queued``, the attempt not counted): the
    worker is stopping before it sent them. ``claims`` maps each id to the attempt number of
    the caller's claim; a message claimed again since (by the relay's reclaim and another
    worker, while this one stalled past the lease) is someone else's and is left alone.
    Returns the ids released; the caller records the changes and commits."""
    if not claims:
        return set()
    parameters = {"claims": list(claims.items()), "now": now}
    return {row.id for row in session.execute(_RELEASE, parameters)}


@cache
def _ungated_claim(gated_providers: frozenset[tuple[bool, str]]):  # type: ignore[no-untyped-def]
    """The claim of ``claim_ungated`` for a given set of (demo, stream type) pairs whose
    provider is rate-limited or missing."""
    settings = STREAMS.c.settings
    conditions = [
        MESSAGES.c.id.in_(bindparam("ids", expanding=True)),
        _CLAIMABLE,
        _STREAM_SENDS,
        or_(MESSAGES.c.expires_at.is_(None), MESSAGES.c.expires_at > bindparam("now")),
        *(settings[name].as_string().is_(None) for name in LIMIT_SETTINGS),
        or_(
            MESSAGES.c.stream_type != StreamType.marketing.value,
            settings["quiet_hours"].as_string().is_(None),
        ),
        ~is_suppressed_clause(MESSAGES.c.account_id, MESSAGES.c.recipient),
        *(
            ~and_(STREAMS.c.demo.is_(demo), MESSAGES.c.stream_type == stream_type)
            for demo, stream_type in sorted(gated_providers)
        ),
    ]
    claimed = (
        update(MESSAGES)
        .where(*conditions)
        .values(**_CLAIMED_VALUES)
        .returning(*_JOB_COLUMNS)
        .cte("claimed")
    )
    # The ``sending`` history rows and stats rollup of what the claim took, written by the
    # same statement.
    history = (
        insert(EVENTS)
        .from_select(
            ["message_id", "status", "at"],
            select(
                claimed.c.id,
                literal(MessageStatus.sending.value, EVENTS.c.status.type),
                bindparam("now", type_=EVENTS.c.at.type),
            ),
        )
        .cte("history")
    )
    rollup = (
        text(
            rollup_upsert_sql(
                f"SELECT stream_id, '{MessageStatus.sending.value}' AS status, segments "
                "FROM claimed",
                "now",
            )
        )
        .columns()
        .cte("rollup")
    )
    return select(claimed).add_cte(history, rollup)


#: Databases that can fold the load into the claim: ``claim_ungated`` is an UPDATE … FROM
#: that returns columns of the joined stream, which SQLite (``streams dev``) cannot.
FOLDED_CLAIM_DIALECTS = frozenset({"postgresql"})


def claim_ungated(
    session: Session,
    ids: Sequence[uuid.UUID],
    now: datetime,
    lease_seconds: float,
    gated_providers: frozenset[tuple[bool, str]],
    max_attempts: int,
) -> list[Row]:  # type: ignore[type-arg]
    """Load and claim, in one statement, the messages of ``ids`` that no gate can stop: the
    load folded into the claim. That is a message whose stream is live (not deleted, not
    paused), that has not expired, whose stream sets no limit (``LIMIT_SETTINGS``) and no
    quiet hours for marketing, whose recipient is on no suppression list, and whose (demo,
    type) pair is not in ``gated_providers`` (a provider with a rate, or none). Every other
    message is left as it was, for the full pipeline. Messages with a sealed text (OTP codes)
    are claimed here too: they are the ones that can least afford two more transactions.

    The same statement writes the claimed messages' ``sending`` history rows and adds them
    to the stats rollup. Returns the claimed messages with the columns of ``load_messages``
    (``attempts`` already counting this attempt); the caller queues the changes, made with
    ``in_rollup=True`` (``core.message_states.queue_changes``), and commits.
    """
    if not ids:
        return []
    statement = _ungated_claim(gated_providers)
    parameters = _claim_parameters(ids, now, lease_seconds, max_attempts)
    return list(session.execute(statement, parameters))
