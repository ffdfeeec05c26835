"""One-time codes over the database: send a code, verify it.

Send: the code and its text are composed under the stream's rules (``core.otp_codes``), then
ONE transaction checks the resend cooldown and, once the per-recipient cap (Redis) has made
room, stores the message (masked body, sealed text, expiring with the code;
``dispatcher.intake``) and the code's digest. The code row is an upsert guarded by the
cooldown, so two racing sends cannot both pass it, and a new send overwrites (supersedes) the
previous code. The message is enqueued on the ``otp`` queue after commit, like any accepted
message (invariant 1).

The stream's ingress quota (``dispatcher.ingress_quota``) is charged in the per-recipient
cap's call, not one of its own: OTP latency is accept → provider call, and a second Redis
round trip would add to every code. So an OTP send meets the quota after its duplicate and
cooldown reads (a repeat is neither capped nor counted), still before any write.

Verify: the presented code is compared with the stored digest in constant time, then ONE
conditional UPDATE records the outcome — ``used_at`` for the right code, ``attempts_left - 1``
for a wrong one — guarded by "still live and still the same code". Of two concurrent right
verifications PostgreSQL lets exactly one UPDATE match; the other re-reads and answers
``used``. Wrong codes can never drive ``attempts_left`` below zero.

Codes appear in no log line, no error body and no response (invariant 8).
"""

from __future__ import annotations

import hashlib
import math
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import NoReturn

import structlog
from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from core import metrics
from core.activity import ActivityTouch
from core.clock import as_utc
from core.database import dialect_insert
from core.otp_codes import CodeHasher, OtpInputError, OtpRules, compose_code_message
from core.phones import InvalidPhoneNumber, to_e164
from core.runtime import Runtime
from core.segments import count_segments
from dispatcher.auth import StreamAccess
from dispatcher.errors import ApiError
from dispatcher.ingress_quota import IngressGate, MemoryIngressQuota, QuotaRule
from dispatcher.intake import DEMO_SENDER, PreparedItem, insert_messages
from dispatcher.recipient_caps import RecipientCap, build_recipient_cap
from schemas.messages import MAX_CONTENT_LENGTH
from schemas.otp import (
    OtpSendRequest,
    OtpSendResponse,
    OtpVerifyRequest,
    OtpVerifyResponse,
    VerifyFailure,
)
from schemas.tables import Message, OtpCode, Stream
from workers.queueing import enqueue_committed

log = structlog.get_logger(__name__)

#: A verification that keeps losing races re-reads at most this many times.
_VERIFY_ROUNDS = 5


class _Repeated(Exception):
    """The send's ``internal_id`` was taken by a concurrent send of the same stream."""


@dataclass(frozen=True, slots=True)
class CodeState:
    """What a verification needs of the stored code."""

    id: uuid.UUID
    code_digest: str
    attempts_left: int
    expires_at: datetime
    used_at: datetime | None


def failure_of(state: CodeState | None, now: datetime) -> VerifyFailure | None:
    """Why no code can be verified right now, or None when the code is live. Pure."""
    if state is None:
        return "no_code"
    if state.used_at is not None:
        return "used"
    if state.attempts_left <= 0:
        return "too_many_failures"
    if as_utc(state.expires_at) <= now:
        return "expired"
    return None


def cooldown_left(sent_at: datetime, used_at: datetime | None, cooldown: int, now: datetime) -> int:
    """Whole seconds (rounded up) before another code may go to this recipient; 0 when one
    may go now. A code that was used ends its cooldown: the next login is not a resend."""
    if used_at is not None or cooldown <= 0:
        return 0
    left = (as_utc(sent_at) + timedelta(seconds=cooldown) - now).total_seconds()
    return max(0, math.ceil(left))


def _cap_key(access: StreamAccess, rules: OtpRules, recipient: str) -> str:
    if rules.codes_per_recipient_scope == "account":
        return f"account:{access.account_id}:{recipient}"
    return f"stream:{access.stream_id}:{recipient}"


class OneTimeCodes:
    def __init__(
        self,
        runtime: Runtime,
        cap: RecipientCap,
        hasher: CodeHasher,
        touch: ActivityTouch,
        gate: IngressGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.cap = cap
        self.hasher = hasher
        self.touch = touch
        #: The stream's ingress quota, charged in the cap's own call (one Redis round trip).
        self.gate = gate or IngressGate(MemoryIngressQuota(), QuotaRule(0, 1))

    @classmethod
    def from_runtime(
        cls, runtime: Runtime, touch: ActivityTouch, gate: IngressGate | None = None
    ) -> OneTimeCodes:
        quota = gate.quota if gate is not None else None
        return cls(
            runtime,
            build_recipient_cap(
                runtime.redis, quota if isinstance(quota, MemoryIngressQuota) else None
            ),
            CodeHasher(runtime.settings.require_secret_key()),
            touch,
            gate,
        )

    # -------------------------------------------------------------- send

    def send(self, access: StreamAccess, body: OtpSendRequest) -> OtpSendResponse:
        """Send a code to ``body.recipient_phone``. Raises ``ApiError``: 422 for a bad body
        (naming the field), 429 ``resend_cooldown`` / ``recipient_limit`` with
        ``Retry-After``, 409 when the stream's own settings cannot make a message. A send
        whose ``internal_id`` names an earlier message of the stream returns that one
        (``duplicate``), once its body has passed the same checks as any send's; repeats
        that race take turns (``_internal_id_turn``), so each finds the first committed."""
        rules = OtpRules.from_settings(access.settings)
        recipient = _recipient(body.recipient_phone)
        try:
            composed = compose_code_message(
                rules,
                code=body.code,
                message_content=body.message_content,
                variables=body.variables,
                max_length=MAX_CONTENT_LENGTH,
            )
        except OtpInputError as exc:
            raise ApiError(exc.status, exc.code, exc.message, field=exc.field) from None
        sender = access.default_sender or (DEMO_SENDER if access.demo else None)
        if sender is None:
            raise ApiError(409, "missing_sender", "The stream has no default sender.")
        now = self.runtime.clock()
        message_id = uuid.uuid4()
        expires_at = now + timedelta(seconds=rules.ttl_seconds)
        count = count_segments(composed.text)
        item = PreparedItem(
            index=0,
            internal_id=body.internal_id,
            sender=sender,
            recipient=recipient,
            body=composed.masked_text,
            segments=count.segments,
            encoding=count.encoding,
            send_at=None,
            # A code that arrives after its TTL is no use: flow control expires the message
            # instead of sending it late.
            expires_at=expires_at,
            callback_url=None,
            sealed_body=self.runtime.secret_box.seal(composed.text),
        )
        cap_key = _cap_key(access, rules, recipient)
        # The cooldown check and the writes share one transaction: the time from accept to
        # the enqueue is OTP latency, and a transaction of its own for the check would cost
        # a connection checkout and two more round trips (BEGIN, ROLLBACK). The check is a
        # plain read (no lock is held while the cap is asked); the code's upsert re-checks
        # the cooldown against the latest committed row.
        with (
            self.runtime.session_factory() as session,
            _internal_id_turn(session, access.stream_id, body.internal_id),
        ):
            # Sends repeating one internal_id take turns from here: a later one finds the
            # first committed, and neither its cooldown nor its cap refuses it.
            if body.internal_id is not None and (
                first := self._first(access, body.internal_id, session)
            ):
                return first  # a repeat: no second code, no cooldown, nothing counted
            waiting = self._cooldown(session, access, recipient, rules, now)
            if waiting:
                self._refuse_cooldown(access, waiting)
            member = self._reserve(access, cap_key, rules, now)
            try:
                waiting = self._persist(
                    session, access, item, message_id, composed.code, rules, now
                )
            except _Repeated:  # a concurrent send with this internal_id was first
                self._release(cap_key, member)
                if body.internal_id is None or not (
                    first := self._first(access, body.internal_id, session)
                ):
                    raise
                return first
            except Exception:
                self._release(cap_key, member)
                raise
        if waiting:  # a concurrent send to the same number won the race
            self._release(cap_key, member)
            self._refuse_cooldown(access, waiting)

        enqueue_committed(self.runtime, access.type.queue_name, [message_id])
        metrics.OTP_SENDS.labels(rules.code_mode).inc()
        log.info(
            "otp_sent",
            stream_id=str(access.stream_id),
            message_id=str(message_id),
            code_mode=rules.code_mode,
            segments=count.segments,
        )
        return OtpSendResponse(
            message_id=str(message_id), expires_at=expires_at, internal_id=body.internal_id
        )

    def _first(
        self, access: StreamAccess, internal_id: str, session: Session
    ) -> OtpSendResponse | None:
        """The stream's earlier send with ``internal_id``, as a duplicate, or None. Answers
        409 when that id names a message that is no code (sent through ``/v1/messages``)."""
        row = session.execute(
            select(Message.id, Message.expires_at).where(
                Message.stream_id == access.stream_id, Message.internal_id == internal_id
            )
        ).first()
        if row is None:
            return None
        if row.expires_at is None:
            raise ApiError(
                409,
                "internal_id_taken",
                "This internal_id names a message of this stream that is not a code.",
                field="internal_id",
            )
        return OtpSendResponse(
            message_id=str(row.id),
            expires_at=as_utc(row.expires_at),
            internal_id=internal_id,
            duplicate=True,
        )

    def _persist(
        self,
        session: Session,
        access: StreamAccess,
        item: PreparedItem,
        message_id: uuid.UUID,
        code: str,
        rules: OtpRules,
        now: datetime,
    ) -> int:
        """Store the message and the code's digest in ``session``'s transaction and commit.
        Returns 0, or — when a concurrent send won the cooldown and nothing was stored — the
        seconds to wait."""
        expires_at = now + timedelta(seconds=rules.ttl_seconds)
        if message_id not in insert_messages(session, access, [item], {0: message_id}, now):
            session.rollback()
            raise _Repeated
        if not self._store_code(
            session, access, item.recipient, message_id, code, rules, now, expires_at
        ):
            session.rollback()
            return max(1, self._cooldown(session, access, item.recipient, rules, now))
        if self.touch.due(access.stream_id):
            session.execute(
                update(Stream).where(Stream.id == access.stream_id).values(last_activity_at=now)
            )
        session.commit()
        return 0

    def _cooldown(
        self,
        session: Session,
        access: StreamAccess,
        recipient: str,
        rules: OtpRules,
        now: datetime,
    ) -> int:
        row = session.execute(
            _COOLDOWN_READ, {"stream_id": access.stream_id, "recipient": recipient}
        ).first()
        if row is None:
            return 0
        return cooldown_left(row.sent_at, row.used_at, rules.resend_cooldown_seconds, now)

    def _refuse_cooldown(self, access: StreamAccess, seconds: int) -> NoReturn:
        metrics.OTP_SENDS_REJECTED.labels("resend_cooldown").inc()
        log.info("otp_send_refused", stream_id=str(access.stream_id), reason="resend_cooldown")
        raise ApiError(
            429,
            "resend_cooldown",
            f"A code was sent to this number moments ago; wait {seconds} s before resending.",
            field="recipient_phone",
            headers={"Retry-After": str(seconds)},
        )

    def _reserve(
        self, access: StreamAccess, key: str, rules: OtpRules, now: datetime
    ) -> str | None:
        """A place under the per-recipient cap and the stream's ingress quota (one call), or
        429 ``recipient_limit`` / ``rate_limited``. If their store is unreachable the send
        goes ahead (codes are how people log in) and the failure is logged."""
        quota = self.gate.charge_for(access, 1)
        try:
            decision = self.cap.reserve(key, rules.codes_per_recipient_per_hour, now, quota)
        except Exception as exc:
            log.warning(
                "otp_cap_unavailable", stream_id=str(access.stream_id), error=type(exc).__name__
            )
            if quota is not None:
                self.gate.unavailable(exc)
            return None
        if decision.allowed:
            return decision.member
        if decision.by_quota and quota is not None:
            self.gate.refuse(access, quota, decision.retry_after_seconds)
        metrics.OTP_SENDS_REJECTED.labels("recipient_limit").inc()
        log.info("otp_send_refused", stream_id=str(access.stream_id), reason="recipient_limit")
        account_wide = rules.codes_per_recipient_scope == "account"
        scope = "the account's OTP streams" if account_wide else "this stream"
        raise ApiError(
            429,
            "recipient_limit",
            f"This number has had {rules.codes_per_recipient_per_hour} codes from {scope} in "
            f"the last hour; try again in {decision.retry_after_seconds} s.",
            field="recipient_phone",
            headers={"Retry-After": str(decision.retry_after_seconds)},
        )

    def _release(self, key: str, member: str | None) -> None:
        if member is None:
            return
        try:
            self.cap.release(key, member)
        except Exception as exc:
            log.warning("otp_cap_release_failed", error=type(exc).__name__)

    def _store_code(
        self,
        session: Session,
        access: StreamAccess,
        recipient: str,
        message_id: uuid.UUID,
        code: str,
        rules: OtpRules,
        now: datetime,
        expires_at: datetime,
    ) -> bool:
        """Insert or overwrite the recipient's code unless a resend cooldown is running.
        False (nothing written) when the cooldown holds."""
        statement = _code_upsert(session.get_bind().dialect.name)
        parameters = {
            "id": uuid.uuid4(),
            "account_id": access.account_id,
            "stream_id": access.stream_id,
            "recipient": recipient,
            "message_id": message_id,
            "code_digest": self.hasher.digest(access.stream_id, recipient, code),
            "attempts_left": rules.max_failures,
            "sent_at": now,
            "expires_at": expires_at,
            "used_at": None,
            "cooldown_cutoff": now - timedelta(seconds=rules.resend_cooldown_seconds),
        }
        return session.execute(statement, parameters).first() is not None

    # -------------------------------------------------------------- verify

    def verify(self, access: StreamAccess, body: OtpVerifyRequest) -> OtpVerifyResponse:
        """Check ``body.code`` for ``body.recipient_phone``. A right code is valid once; a
        wrong one uses up an attempt. Raises ``ApiError`` 422 for a bad phone number."""
        recipient = _recipient(body.recipient_phone)
        now = self.runtime.clock()
        result: OtpVerifyResponse | None = None
        with self.runtime.session_factory() as session:
            for _ in range(_VERIFY_ROUNDS):
                result = self._verify_once(session, access, recipient, body.code, now)
                if result is not None:
                    break
        if result is None:
            log.warning("otp_verify_contended", stream_id=str(access.stream_id))
            raise ApiError(
                503,
                "verification_busy",
                "The code changed during verification several times; retry.",
                headers={"Retry-After": "1"},
            )
        metrics.OTP_VERIFICATIONS.labels("valid" if result.valid else result.reason).inc()
        log.info(
            "otp_verified",
            stream_id=str(access.stream_id),
            outcome="valid" if result.valid else result.reason,
            attempts_left=result.attempts_left,
        )
        return result

    def _verify_once(
        self, session: Session, access: StreamAccess, recipient: str, code: str, now: datetime
    ) -> OtpVerifyResponse | None:
        """One read and one conditional write; None when another request changed the code
        in between (the caller reads again). The write's guards are checked against the
        row's latest committed state, whatever the read saw."""
        row = session.execute(
            select(
                OtpCode.id,
                OtpCode.code_digest,
                OtpCode.attempts_left,
                OtpCode.expires_at,
                OtpCode.used_at,
            ).where(OtpCode.stream_id == access.stream_id, OtpCode.recipient == recipient)
        ).first()
        state = CodeState(*row) if row is not None else None
        failure = failure_of(state, now)
        if failure is not None or state is None:
            return OtpVerifyResponse(valid=False, attempts_left=0, reason=failure)
        right = self.hasher.matches(state.code_digest, access.stream_id, recipient, code)
        still_live = (
            OtpCode.id == state.id,
            OtpCode.code_digest == state.code_digest,
            OtpCode.used_at.is_(None),
            OtpCode.attempts_left > 0,
            OtpCode.expires_at > now,
        )
        if right:
            won = session.execute(
                update(OtpCode)
                .where(*still_live)
                .values(used_at=now)
                .returning(OtpCode.id)
                .execution_options(synchronize_session=False)
            ).first()
            session.commit()
            return OtpVerifyResponse(valid=True, attempts_left=0) if won else None
        left = session.execute(
            update(OtpCode)
            .where(*still_live)
            .values(attempts_left=OtpCode.attempts_left - 1)
            .returning(OtpCode.attempts_left)
            .execution_options(synchronize_session=False)
        ).scalar()
        session.commit()
        if left is None:
            return None
        return OtpVerifyResponse(valid=False, attempts_left=left, reason="wrong_code")


#: Per-process locks for ``_internal_id_turn`` where the database has no advisory locks.
_LOCAL_TURNS: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_LOCAL_TURNS_GUARD = threading.Lock()


@contextmanager
def _internal_id_turn(
    session: Session, stream_id: uuid.UUID, internal_id: str | None
) -> Iterator[None]:
    """Sends of one stream with one ``internal_id`` one at a time, until the send's
    transaction ends: a transaction-scoped advisory lock on PostgreSQL (every process),
    a lock of this process elsewhere (SQLite: ``streams dev`` is one process)."""
    if internal_id is None:
        yield
        return
    name = f"otp-internal-id/{stream_id}/{internal_id}"
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
        session.execute(select(func.pg_advisory_xact_lock(key - (1 << 63))))
        yield
        return
    with _LOCAL_TURNS_GUARD:
        turn = _LOCAL_TURNS.get(name)
        if turn is None:
            turn = _LOCAL_TURNS[name] = threading.Lock()
    with turn:
        yield


def _recipient(phone: str) -> str:
    try:
        return to_e164(phone)
    except InvalidPhoneNumber as exc:
        raise ApiError(
            422, "invalid_phone", f"recipient_phone {exc}", field="recipient_phone"
        ) from None


# The send path's two statements on ``otp_codes`` are Core statements built once, with bound
# parameters: built per request through the ORM (``insert(OtpCode)``, ``excluded``, the
# cache key of literal values) they cost more interpreter time than the rest of the send.

OTP_CODES: Table = OtpCode.__table__  # type: ignore[assignment]

_COOLDOWN_READ = select(OTP_CODES.c.sent_at, OTP_CODES.c.used_at).where(
    OTP_CODES.c.stream_id == bindparam("stream_id"),
    OTP_CODES.c.recipient == bindparam("recipient"),
)

#: What a new code overwrites in the recipient's row (it supersedes the previous code).
_SUPERSEDED = ("message_id", "code_digest", "attempts_left", "sent_at", "expires_at", "used_at")


@cache
def _code_upsert(dialect: str):  # type: ignore[no-untyped-def]
    """``INSERT … ON CONFLICT (stream_id, recipient) DO UPDATE`` of a new code, guarded by
    the cooldown (``cooldown_cutoff``), for PostgreSQL or SQLite (``streams dev``)."""
    statement = dialect_insert(dialect, OTP_CODES)
    return statement.on_conflict_do_update(
        index_elements=["stream_id", "recipient"],
        set_={name: statement.excluded[name] for name in _SUPERSEDED},
        where=or_(
            OTP_CODES.c.used_at.is_not(None),
            OTP_CODES.c.sent_at <= bindparam("cooldown_cutoff"),
        ),
    ).returning(OTP_CODES.c.id)
