"""The send pipeline, for one message or a batch of them, step by step:

1. **load**: skip what is no longer waiting; fail messages of deleted streams; park those
   of streams that accept no sends, paused or back in draft (the relay brings them back
   once the stream is ready again); reject marketing to numbers that opted out. One
   statement for the whole batch. First, though, the messages no gate can stop (a live
   stream without limits or quiet hours, no suppression, no expiry due;
   ``workers.claims.claim_ungated``) are loaded and claimed in one statement and go
   straight to step 6: the load folded into the claim.
2-4. **the gates** (``workers.gates``): **expiry** (past ``expires_at`` the message is
   ``expired``, never sent late), **quiet hours** (marketing waits, in the database, for
   the recipient's window) and **admission** (the stream's and the provider's rate limits
   and caps, fleet-wide; a throttled message waits and spends no retry: invariant 5).
5. **claim**: ``queued → sending`` with a conditional update, so a redelivered message is
   never sent twice (invariant 2). A claim older than the lease belonged to a dead worker
   and may be taken again; the provider recognises the repeated reference. The messages of
   a batch that passed steps 2-4 are claimed with one statement (``workers.claims``); one
   admitted by a rate limit is claimed and sent at once, as the limit's spacing expects.
   The claim reads the stream again: a message whose stream was paused or deleted since
   step 1 is not claimed, and is parked or failed as step 1 would have done.
6. **send**: the provider calls (``workers.provider_calls``: in the worker's thread, then
   side by side once a batch's calls have taken ``INLINE_SECONDS``, even while one of them
   still runs). A call is one request: a message, or the batch's messages to a carrier
   that takes several per request (``workers.provider_requests``), each with its own
   answer. A refusal is settled by ``workers.retries``: transient errors are retried with
   exponential backoff and jitter up to ``max_send_attempts``, then the message fails and
   becomes a dead letter; permanent errors fail at once.
7. **record**: ``sent`` for every message the provider took, in one transaction (calls
   still running a second after the first one ended are recorded in another), together
   with the delivery receipt when the provider reported it at once (the sandbox with no
   receipt delay); a later receipt comes as a job of its own.

A single-message job (a lone send, a send or a release by the relay to a queue that is not
packed) shares steps 1 (folded) and 7 with the other delivery threads of its process
(``workers.group_commit``): one transaction each for all the jobs waiting at that moment,
while each job's provider call stays in its own thread.

The gates and the retries end a message, or park it, through ``workers.outcomes``. Steps 2-4
and 6 give each message its own outcome; an error in one of them is that message's
alone (``BatchResult.failed``). An error of a batch step (load, claim, record: the database
is down) is raised; every message is then delivered again, and a redelivery skips what has
already gone out.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Row, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from core import metrics
from core.activity import ActivityTouch
from core.broker import QUEUES
from core.clock import as_utc
from core.message_states import (
    Move,
    move_many,
    queue_changes,
    record_changes,
    transition,
)
from core.receipts import move_failed_on
from core.runtime import Runtime
from core.sealed_bodies import hidden_parts, text_to_send, without_hidden
from schemas.enums import MessageStatus, StreamType
from schemas.tables import STREAM_PAUSED_HOLD
from workers.admission import Admission
from workers.claims import (
    FOLDED_CLAIM_DIALECTS,
    PAUSED_STREAM_STATUSES,
    STREAMS,
    ClaimNumber,
    claim_for_sending,
    claim_ungated,
    hold_not_due,
    load_messages,
    may_retake,
    release_claims,
    stream_sends,
)
from workers.gates import Gates, gated_providers
from workers.group_commit import GroupCommit
from workers.jobs import Job, message_log
from workers.opt_out import is_marketing, reject_opted_out
from workers.outcomes import (
    VALIDITY_PASSED,
    Outcomes,
    expire_in,
    fail_stream_deleted,
    hold,
)
from workers.provider_calls import Call, CallOutcome, ProviderCalls, make_call
from workers.provider_requests import each_answer, provider_request, requests_for
from workers.providers.base import Accepted, Provider, ProviderError
from workers.providers.registry import ProviderRegistry
from workers.queueing import enqueue_receipt
from workers.retries import Retries, dead_letter_reason
from workers.status_followup import follows_up

log = structlog.get_logger(__name__)

#: The queues whose single-message jobs share transactions among themselves ("": a caller
#: that names none).
_GROUPS = ("", *QUEUES)
_UNDELIVERED = {
    "error_code": "undelivered",
    "error_message": "The carrier could not deliver it.",
}
#: The columns recording ``sent`` (and an immediate receipt) may set.
_SENT_COLUMNS = ("provider", "provider_message_id", "error_code", "error_message")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``Delivery.deliver_many`` did not finish."""

    #: Messages whose own step raised, with the error: to be delivered again, each alone.
    failed: list[tuple[str, Exception]]
    #: Messages whose claims were given back unused (the worker is stopping, or the batch
    #: ran half the claim lease): to go back to the queue.
    handed_back: list[str]


@dataclass(frozen=True, slots=True)
class _Ready:
    """A message through its gates, with the provider it goes to."""

    job: Job
    provider: Provider


@dataclass(frozen=True, slots=True)
class _Claimed:
    """A message this worker claimed, and the attempt this is."""

    item: _Ready
    attempt: int


@dataclass(frozen=True, slots=True)
class _Sent:
    job: Job
    provider: str
    accepted: Accepted
    #: The attempt number of the claim it was sent on: recorded only while still on it.
    attempt: int


class Delivery:
    def __init__(
        self,
        runtime: Runtime,
        providers: ProviderRegistry,
        admission: Admission,
        sleep: Callable[[float], None] = time.sleep,
        threads: int = 1,
    ) -> None:
        """``threads``: how many worker threads call ``deliver_many`` at once (the pool's
        ``--threads``), so that each batch's provider calls have threads of their own."""
        self.runtime = runtime
        self.providers = providers
        self._outcomes = Outcomes(runtime)
        self._gates = Gates(runtime, admission, self._outcomes, sleep)
        self._retries = Retries(runtime, self._outcomes, self._gates.give_back)
        self._touch = ActivityTouch()
        self._gated = gated_providers(providers)
        self._calls = ProviderCalls(runtime.settings.batch_send_concurrency, threads)
        self._folds_claims = runtime.engine.dialect.name in FOLDED_CLAIM_DIALECTS
        # One pair per queue: a process that serves several queues never makes an OTP
        # job wait on a marketing group's transaction (invariant 6).
        self._claims = {
            q: GroupCommit("claim", self._claim_ungated_group, isolate=_caused_by_items)
            for q in _GROUPS
        }
        self._records = {
            q: GroupCommit("record", self._record_sent_group, isolate=_caused_by_items)
            for q in _GROUPS
        }

    # ------------------------------------------------------------------ the pipeline

    def deliver(self, message_id: str, queue: str = "") -> None:
        """Take one message as far as it can go now. Safe to call any number of times.
        Raises what its steps raised (the message is then left to be delivered again).

        The claim and the record of a message no gate can stop are group-committed with
        those of the process's other delivery threads on the same ``queue``
        (``workers.group_commit``): one transaction each for all of them, the provider call
        still in this thread."""
        result = self.deliver_many([message_id], queue=queue)
        if result.failed:
            raise result.failed[0][1]

    def deliver_many(
        self,
        message_ids: Sequence[str],
        *,
        queue: str = "",
        stopping: threading.Event | None = None,
    ) -> BatchResult:
        """Take each of ``message_ids`` as far as it can go now; safe to call any number of
        times. When ``stopping`` is set before the claim, the messages not claimed yet are
        handed back instead of sent.

        Like ``deliver``, the claim and the record of the messages no gate can stop are
        group-committed with those of the process's other delivery threads on ``queue``:
        concurrent batches share their transactions."""
        started = time.perf_counter()
        keys = [uuid.UUID(message_id) for message_id in message_ids]
        result = BatchResult([], [])
        group = queue if queue in self._claims else ""
        claimed: dict[uuid.UUID, _Claimed] = {}
        if self._folds_claims:
            claims = self._claims[group].submit(keys)
            claimed = {
                key: claim for key, claim in zip(keys, claims, strict=True) if claim is not None
            }
        if claimed:
            self._send_and_record(
                list(claimed.values()), started, stopping, result, self._records[group].submit
            )
            keys = [key for key in keys if key not in claimed]
        self._deliver_gated(keys, started, stopping, result)
        return result

    def _deliver_gated(
        self,
        keys: list[uuid.UUID],
        started: float,
        stopping: threading.Event | None,
        result: BatchResult,
    ) -> None:
        """The full pipeline (load, gates, claim, send, record) for messages the ungated
        claim did not take."""
        if not keys:
            return
        with self.runtime.session_factory() as session:
            jobs, failed = self._load(session, keys)
            session.commit()
        result.failed.extend(failed)
        ready: list[_Ready] = []
        for job in jobs:
            log_ = message_log(job)
            try:
                gated = self._through_gates(job, log_)
            except Exception as error:  # this message's own failure; the others go on
                result.failed.append((str(job.message_id), error))
                continue
            if gated is None:
                continue
            if Gates.limits(job, gated.provider).paces:
                # Admitted just now by a rate limit: claim and send it at once, so the
                # limit's spacing holds at the provider too. Caps (per day, per recipient)
                # space nothing: those messages go with the rest of the batch.
                self._claim_send_record([gated], started, stopping, result)
            else:
                ready.append(gated)
        if stopping is not None and stopping.is_set():
            result.handed_back.extend(str(r.job.message_id) for r in ready)
            return
        self._claim_send_record(ready, started, stopping, result)

    def _load(
        self, session: Session, keys: list[uuid.UUID]
    ) -> tuple[list[Job], list[tuple[str, Exception]]]:
        rows = load_messages(session, keys)
        position = {key: index for index, key in enumerate(keys)}
        rows.sort(key=lambda row: position[row.id])
        for key in set(keys) - {row.id for row in rows}:
            log.warning("delivery_unknown_message", message_id=str(key))
        now = self.runtime.clock()
        jobs: list[Job] = []
        failed: list[tuple[str, Exception]] = []
        for row in rows:
            try:
                job = self._screen(session, row, now)
            except ValueError as error:  # a sealed text made with another secret key
                failed.append((str(row.id), error))
                continue
            if job is not None:
                jobs.append(job)
        return jobs, failed

    def _screen(self, session: Session, row: Row, now: datetime) -> Job | None:  # type: ignore[type-arg]
        """The ``Job`` of a loaded message that may go on, or None when it may not (it was
        skipped, failed, parked or rejected in ``session``)."""
        log_ = log.bind(message_id=str(row.id))
        used = row.attempts - row.attempts_base
        if not self._waiting(row.status, row.stream_type, row.claimed_at, used, now):
            log_.debug("delivery_skipped", status=row.status)
            return None
        if row.status == MessageStatus.queued.value and hold_not_due(
            row.hold_reason, row.not_before, now
        ):
            # Another job for a message waiting out a back-off or parked for its place (a
            # redelivery): taken on, it would send the message early, or book or park it
            # again. It is handed to the relay for its time, in case this is the message's
            # own job come early (the clocks of two hosts differ): a second job then costs
            # at most a turn left unused, since only one claim can take the message.
            due = as_utc(row.not_before)
            hold(session, row.id, now, until=due, reason=row.hold_reason)
            log_.info("delivery_not_due", hold_reason=row.hold_reason, not_before=due.isoformat())
            return None
        if row.stream_deleted_at is not None:
            fail_stream_deleted(session, row.id, now)
            return None
        if row.stream_status in PAUSED_STREAM_STATUSES:
            if row.expires_at is not None and now >= as_utc(row.expires_at):
                # Past its validity it can never go out: it expires now, rather than wait
                # parked for the stream and expire only once the stream is back.
                expire_in(session, row.id, now, VALIDITY_PASSED)
                log_.info("message_expired", why=VALIDITY_PASSED, stream_status=row.stream_status)
                return None
            hold(session, row.id, now, until=None, reason=STREAM_PAUSED_HOLD)
            log_.info("delivery_parked", stream_status=row.stream_status)
            return None
        if (
            row.status == MessageStatus.queued.value
            and row.suppressed
            and is_marketing(row.stream_type, row.content)
        ):
            reject_opted_out(session, row.id, now)
            return None
        return self._job(row)

    def _job(self, row: Row) -> Job:  # type: ignore[type-arg]
        """The job of a message row (the columns of ``workers.claims.load_messages``).
        Raises ``ValueError`` when its sealed text was made with another secret key."""
        return Job(
            message_id=row.id,
            stream_id=row.stream_id,
            account_id=row.account_id,
            stream_type=StreamType(row.stream_type),
            sender=row.sender,
            recipient=row.recipient,
            body=(body := text_to_send(row, self.runtime.secret_box)),
            segments=row.segments,
            encoding=row.encoding,
            attempts=row.attempts,
            attempts_base=row.attempts_base,
            expires_at=as_utc(row.expires_at) if row.expires_at else None,
            demo=row.demo,
            settings=dict(row.settings or {}),
            content=row.content,
            callback_url=row.callback_url,
            hidden=hidden_parts(body, row.body) if row.sealed_body is not None else frozenset(),
        )

    def _through_gates(self, job: Job, log_: Any) -> _Ready | None:
        """The provider and the gates; None when the message failed, waits or was rejected."""
        try:
            provider = self.providers.for_stream(demo=job.demo, stream_type=job.stream_type.value)
        except ProviderError as error:
            self._outcomes.fail(
                job, error.code, error.message, log_, dead_letter=dead_letter_reason(error)
            )
            return None
        if not self._gates.passes(job, provider, log_):
            return None
        return _Ready(job, provider)

    def _claim_ungated_group(self, keys: list[uuid.UUID]) -> list[_Claimed | None]:
        """``_claim_ungated`` as a group-commit step: one result per key, None for a key
        not claimed (a redelivered job's key can be in a group twice: one claim serves
        both, and only its first occurrence gets it)."""
        claimed = self._claim_ungated(list(dict.fromkeys(keys)))
        return [claimed.pop(key, None) for key in keys]

    def _claim_ungated(self, keys: list[uuid.UUID]) -> dict[uuid.UUID, _Claimed]:
        """Load and claim at once what no gate can stop (``workers.claims.claim_ungated``):
        one transaction instead of a load and a claim."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            settings = self.runtime.settings
            rows = claim_ungated(
                session,
                keys,
                now,
                settings.claim_lease_seconds,
                self._gated,
                settings.max_send_attempts,
            )
            claimed: dict[uuid.UUID, _Claimed] = {}
            for row in rows:
                try:
                    job = self._job(row)
                except ValueError:
                    # A sealed text made with another secret key: undo the claims and let
                    # the full pipeline load the batch and fail that message alone.
                    session.rollback()
                    return {}
                provider = self.providers.for_stream(
                    demo=job.demo, stream_type=job.stream_type.value
                )
                claimed[job.message_id] = _Claimed(_Ready(job, provider), row.attempts)
            queue_changes(
                session,
                [
                    c.item.job.change(MessageStatus.sending, now, in_rollup=True)
                    for c in claimed.values()
                ],
            )
            session.commit()
        return claimed

    def _claim_send_record(
        self,
        ready: list[_Ready],
        started: float,
        stopping: threading.Event | None,
        result: BatchResult,
    ) -> None:
        """Claim ``ready`` (one statement), then ``_send_and_record`` what was claimed."""
        if not ready:
            return
        numbers = self._claim([r.job for r in ready])
        claimed, missed = [], []
        for item in ready:
            number = numbers.get(item.job.message_id)
            if number is None:
                log.debug("delivery_already_claimed", message_id=str(item.job.message_id))
                missed.append(item.job)
                continue
            # The round as the claim found it: a replay since the load moved its base.
            job = dataclasses.replace(item.job, attempts_base=number.base)
            claimed.append(_Claimed(dataclasses.replace(item, job=job), number.attempt))
        self._settle_unclaimed(missed)
        self._send_and_record(claimed, started, stopping, result)

    def _settle_unclaimed(self, missed: list[Job]) -> None:
        """Of the messages admitted but not claimed, those whose stream was paused or
        deleted since the load (the claim refuses them) are parked, or failed, as the load
        would have done (``_screen``); left as they are, they would wait queued with no job.
        Those of them no claim was ever made for never reached the carrier, and leave their
        stream's caps, as a first claim refused for good does (one parked is counted again
        when it is admitted again); so do those the account canceled meanwhile. One claimed
        by another job (a redelivery: its call may have reached the carrier before the
        cancel) keeps its place; the database says which, not the attempts this job
        loaded."""
        if not missed:
            return
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            rows = load_messages(session, [job.message_id for job in missed])
            stopped = {
                row.id for row in rows if not stream_sends(row.stream_status, row.stream_deleted_at)
            }
            for row in rows:
                if row.id in stopped:
                    self._screen(session, row, now)
            session.commit()
        never_sent = {
            row.id
            for row in rows
            if row.attempts == 0 and (row.id in stopped or row.status == MessageStatus.canceled)
        }
        for job in missed:
            if job.message_id in never_sent:
                self._gates.give_back(job, 1)

    def _send_and_record(
        self,
        claimed: list[_Claimed],
        started: float,
        stopping: threading.Event | None,
        result: BatchResult,
        record: Callable[[list[_Sent]], object] | None = None,
    ) -> None:
        """Send the claimed messages and record what was sent (with ``record``,
        ``_record_sent`` by default). Calls to an idempotent provider are made side by side
        (``workers.provider_calls``) and recorded together once they have ended (one
        transaction; more only when a call is still running a second after the first ended;
        when interrupted, what was settled by then). An interrupt while a wave is being
        gathered leaves that wave's messages to the claim lease, and the provider recognises
        their references when they are offered again. A call to a provider that is not
        idempotent is recorded right after it is made, so nothing it took is ever offered
        again.
        Claims are given back instead of used when the worker began stopping meanwhile, or
        once the batch has run half the claim lease (so the relay's reclaim of leases never
        races a batch still working through its claims); both are added to ``result``'s
        ``handed_back``, and the messages whose send step raised to its ``failed``. When
        recording raises (or the worker is interrupted), the claims of the calls never made
        are given back before it propagates, so the job's retry sends them instead of the
        lease's end; those of calls made are left to the lease."""
        record = record or self._record_sent
        sent: list[_Sent] = []
        unsent: list[_Claimed] = []
        fresh_until = started + self.runtime.settings.claim_lease_seconds / 2

        def go_on() -> bool:
            stopped = stopping is not None and stopping.is_set()
            return not stopped and time.perf_counter() <= fresh_until

        def settle(claim: _Claimed, call: CallOutcome) -> _Sent | None:
            if call.skipped:
                unsent.append(claim)
                return None
            try:
                return self._outcome(claim.item, claim.attempt, call)
            except Exception as error:  # left claimed: reclaimed after the lease
                result.failed.append((str(claim.item.job.message_id), error))
                return None

        # Requests to idempotent providers go side by side (a provider that takes batches
        # gets the messages in as few requests as it allows) and are recorded in waves as
        # they end; a message to one that is not is recorded before the next is sent.
        together = [claim for claim in claimed if claim.item.provider.idempotent]
        alone = deque(claim for claim in claimed if not claim.item.provider.idempotent)
        # Indices into ``together``, per request.
        requests = requests_for([(c.item.provider, c.item.job.stream_id) for c in together])
        untaken: list[int] = []  # indices into ``requests`` of requests never made
        try:
            try:
                calls = [self._request([together[i].item for i in r], go_on) for r in requests]
                # Closed on the way out, also when recording raises: no call begins after.
                with closing(self._calls.waves(calls, go_on, untaken=untaken)) as waves:
                    for wave in waves:
                        for index, call in wave:
                            request = [together[i] for i in requests[index]]
                            answers = zip(request, _answers(call, request), strict=True)
                            sent += [s for c, a in answers if (s := settle(c, a)) is not None]
                        wave_sent, sent = sent, []
                        record(wave_sent)
                while alone:
                    claim = alone.popleft()
                    call = make_call(self._request([claim.item], go_on), go_on)
                    if (outcome := settle(claim, _answers(call, [claim])[0])) is not None:
                        record([outcome])
            finally:
                record(sent)
        except BaseException:
            never_made = [together[i] for r in untaken for i in requests[r]]
            self._give_back_after_error([*unsent, *never_made, *alone])
            raise
        result.handed_back.extend(str(key) for key in self._release(unsent))
        elapsed = time.perf_counter() - started
        per_queue = Counter(claim.item.job.stream_type.value for claim in claimed)
        for queue, count in per_queue.items():
            observed = metrics.WORKER_PROCESSING.labels(queue)
            for _ in range(count):
                observed.observe(elapsed)

    def _give_back_after_error(self, never_made: list[_Claimed]) -> None:
        """Give back the claims of calls never made, while an error propagates: best
        effort, since the database may be what failed (the lease then decides)."""
        try:
            released = self._release(never_made)
        except Exception as error:
            log.warning("claims_not_given_back", count=len(never_made), error=type(error).__name__)
            return
        if released:
            log.info("claims_given_back_after_error", count=len(released))

    def _release(self, claims: list[_Claimed]) -> set[uuid.UUID]:
        """Give back the ``claims`` not used (the worker is stopping, or the batch ran too
        long to use them safely), each only while still on its attempt; returns the
        released."""
        if not claims:
            return set()
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            released = release_claims(
                session, {claim.item.job.message_id: claim.attempt for claim in claims}, now
            )
            record_changes(
                session,
                [
                    claim.item.job.change(MessageStatus.queued, now, detail="claim given back")
                    for claim in claims
                    if claim.item.job.message_id in released
                ],
            )
            session.commit()
        return released

    def _waiting(
        self,
        status: str,
        stream_type: str,
        claimed_at: datetime | None,
        attempts_used: int,
        now: datetime,
    ) -> bool:
        """Queued, or a stale claim that may be taken again (the claim's own rule,
        ``workers.claims.stale_claim``)."""
        if status == MessageStatus.queued.value:
            return True
        settings = self.runtime.settings
        cutoff = now - timedelta(seconds=settings.claim_lease_seconds)
        return status == MessageStatus.sending.value and may_retake(
            stream_type, claimed_at, attempts_used, cutoff, settings.max_send_attempts
        )

    def _claim(self, jobs: list[Job]) -> dict[uuid.UUID, ClaimNumber]:
        """``queued → sending`` (or a stale ``sending``) for all of ``jobs`` in one
        transaction; returns the number of each claimed message's claim."""
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            claimed = claim_for_sending(
                session,
                [job.message_id for job in jobs],
                now,
                self.runtime.settings.claim_lease_seconds,
                self.runtime.settings.max_send_attempts,
            )
            record_changes(
                session,
                [
                    job.change(MessageStatus.sending, now)
                    for job in jobs
                    if job.message_id in claimed
                ],
            )
            session.commit()
        return claimed

    def _request(self, items: Sequence[_Ready], go_on: Callable[[], bool]) -> Call:
        """The provider request for ``items``, which all go to one provider
        (``workers.provider_requests``)."""
        jobs = [item.job for item in items]
        return provider_request(jobs, items[0].provider, self.runtime.clock, go_on)

    def _outcome(self, item: _Ready, attempt: int, call: CallOutcome) -> _Sent | None:
        """What a provider call came to, in the worker's thread: the ``_Sent`` to record, or
        None when the message did not go (expired meanwhile, or the provider refused: that
        outcome is recorded here)."""
        job, provider = item.job, item.provider
        if call.accepted is not None:
            return _Sent(job, provider.name, call.accepted, attempt)
        if isinstance(call.error, ProviderError):
            self._retries.after_error(job, provider.name, attempt, call.error, message_log(job))
            return None
        if call.error is not None:
            log_ = message_log(job)
            # An adapter broke its contract (it raises only ProviderError). Left to escape,
            # the message would sit in `sending` until the claim lease and then loop through
            # reclaims with no bound on attempts; as a passing error it is retried within
            # policy and then fails with a reason.
            error = type(call.error).__name__
            log_.error("provider_adapter_error", provider=provider.name, error=error)
            unexpected = ProviderError(
                "provider_error",
                f"The {provider.name} provider failed unexpectedly ({error}).",
                transient=True,
            )
            self._retries.after_error(job, provider.name, attempt, unexpected, log_)
            return None
        expired = self._outcomes.end(
            job,
            MessageStatus.expired,
            code="expired",
            reason=VALIDITY_PASSED,
            detail=VALIDITY_PASSED,
            allowed_from=(MessageStatus.sending,),
            claim=attempt,
            call_made=False,
        )
        if expired:
            self._gates.give_back(job, attempt)  # this claim's call was never made
            message_log(job).info("message_expired", why=VALIDITY_PASSED)
        return None

    def _record_sent_group(self, sent: list[_Sent]) -> list[None]:
        """``_record_sent`` as a group-commit step."""
        self._record_sent(sent)
        return [None] * len(sent)

    def _record_sent(self, sent: list[_Sent]) -> None:
        """``sending → sent`` for everything the provider took, in one transaction; a
        receipt the provider gave at once (no delay) is applied in it too, so the message
        ends ``delivered`` without a second job or transaction."""
        if not sent:
            return
        now = self.runtime.clock()
        moves = []
        for item in sent:
            steps: tuple[tuple[MessageStatus, str | None], ...] = ((MessageStatus.sent, None),)
            values = {
                "provider": item.provider,
                "provider_message_id": item.accepted.provider_message_id,
            }
            receipt = item.accepted.receipt
            if receipt is not None and receipt.after_seconds <= 0:
                outcome = MessageStatus(receipt.status)
                steps += ((outcome, None),)
                if outcome is MessageStatus.undelivered:
                    values.update(_UNDELIVERED)
            job = item.job
            moves.append(
                Move(
                    job.message_id,
                    steps,
                    values,
                    follow_up=follows_up(
                        job.stream_type.value, job.settings, job.callback_url, item.provider
                    ),
                    claim=item.attempt,
                )
            )
        with self.runtime.session_factory() as session:
            changes = move_many(
                session,
                moves,
                allowed_from=(MessageStatus.sending,),
                at=now,
                columns=_SENT_COLUMNS,
            )
            moved = {change.message_id for change in changes}
            for stream_id in {item.job.stream_id for item in sent if item.job.message_id in moved}:
                if self._touch.due(stream_id):
                    session.execute(
                        update(STREAMS)
                        .where(STREAMS.c.id == stream_id)
                        .values(last_activity_at=now)
                    )
            session.commit()
        segments_sent: Counter[str] = Counter()
        for item in sent:
            job = item.job
            if job.message_id not in moved:
                message_log(job).warning("sent_but_claim_lost")
                continue
            segments_sent[job.stream_type.value] += job.segments
            log.info(
                "message_sent",
                message_id=str(job.message_id),
                stream_id=str(job.stream_id),
                provider=item.provider,
                segments=job.segments,
            )
            receipt = item.accepted.receipt
            if receipt is None or receipt.after_seconds <= 0:
                continue
            log_ = message_log(job)
            try:
                enqueue_receipt(
                    self.runtime.broker,
                    job.stream_type.queue_name,
                    str(job.message_id),
                    receipt.status,
                    delay_ms=int(receipt.after_seconds * 1000),
                )
            except Exception as exc:
                log_.warning("receipt_enqueue_failed", error=type(exc).__name__)
        for stream_type, segments in segments_sent.items():
            metrics.SEGMENTS_SENT.labels(stream_type).inc(segments)

    # ------------------------------------------------------------------ receipts

    def apply_receipt(self, message_id: str, status: str) -> None:
        """Record a delivery receipt. A ``sent`` message moves, and a ``failed`` one or one
        ``expired`` after a claim, which the carrier took after all (``core.receipts``); a
        late or repeated receipt changes nothing."""
        outcome = MessageStatus(status)
        if outcome not in (MessageStatus.delivered, MessageStatus.undelivered):
            raise ValueError(f"not a receipt status: {status}")
        key = uuid.UUID(message_id)
        values = _UNDELIVERED if outcome is MessageStatus.undelivered else {}
        now = self.runtime.clock()
        with self.runtime.session_factory() as session:
            moved = transition(
                session,
                key,
                to=outcome,
                allowed_from=[MessageStatus.sent],
                at=now,
                values=values or None,
            ) or move_failed_on(session, key, outcome, now, values)
            session.commit()
        if moved:
            log.info("message_receipt", message_id=message_id, status=outcome.value)


def _answers(call: CallOutcome[Any], request: list[_Claimed]) -> list[CallOutcome[Accepted]]:
    """Each message's answer to ``request`` (``each_answer``), with what the messages'
    bodies mask (their codes) masked out of a carrier's words: carriers quote the text they
    refuse, and those words are stored on the message and logged (invariant 8). Every
    message's code is masked out of every answer: a refused request may quote them all."""
    answers = each_answer(call, len(request))
    hidden = frozenset().union(*(claim.item.job.hidden for claim in request))
    if not hidden:
        return answers
    masked = []
    for answer in answers:
        if isinstance(answer.error, ProviderError):
            words = without_hidden(answer.error.message, hidden)
            answer = dataclasses.replace(answer, error=answer.error.with_message(words))
        masked.append(answer)
    return masked


def _caused_by_items(error: BaseException) -> bool:
    """A group step's error that one job's items can cause (a value the database refuses,
    such as a NUL or an over-long id a carrier answered with), so the other jobs of the
    group are worth running again alone; not a lost connection, which would fail them all
    again."""
    return isinstance(error, DataError | IntegrityError | ValueError | TypeError)
