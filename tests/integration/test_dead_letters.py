"""Message dead letters: recorded when retries run out or dramatiq gives up on a delivery
job (single or batch), replayed once and only once (invariant 2), and seen by monitoring."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import dramatiq
import pytest
import yaml
from dramatiq.broker import MessageProxy
from sqlalchemy import select, update
from structlog.testing import capture_logs

from core.dead_letters import ReplayRefused, record_dead_letter, replay_dead_letter
from core.message_states import transition
from core.settings import SandboxSettings
from schemas.enums import MessageStatus
from schemas.tables import DeadLetter, Message, MessageEvent
from tests.conftest import auth, message
from tests.deliveries import delivery_with, move, states
from tests.deploy.test_deploy_files import check_expression
from tests.processes import MovableClock, pipeline, wait_until
from tests.scrape import parse, value
from workers.admission import RedisAdmission
from workers.claims import claim_for_sending
from workers.dead_letter_middleware import DeadLetters
from workers.delivery import Delivery
from workers.outcomes import Outcomes
from workers.providers.registry import ProviderRegistry
from workers.providers.sandbox import SandboxProvider
from workers.queueing import delivery_actor_name, delivery_batch_actor_name
from workers.relay import Relay

TIMEOUT = "+972524000002"  # sandbox magic number: a transient timeout every time
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
LETTERS = "streams_message_dead_letters_total"
REPLAYS = "streams_dead_letter_replays_total"


def send(client, token: str, *items: dict) -> list[str]:
    response = client.post("/v1/messages", json={"messages": list(items)}, headers=auth(token))
    assert response.status_code == 202, response.text
    return [r["message_id"] for r in response.json()["results"]]


def status_of(runtime, message_id: str) -> str:
    with runtime.session_factory() as session:
        found = session.get(Message, uuid.UUID(message_id))
        assert found is not None
        return found.status


def letters_of(runtime, message_id: str) -> list[DeadLetter]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(DeadLetter).where(DeadLetter.message_id == uuid.UUID(message_id))
            )
        )


def scrape(client):
    return parse(client.get("/metrics").text)


def fail_as_dead_letter(runtime, message_id: str) -> uuid.UUID:
    """Put a queued message where exhausted retries leave it: failed, with a dead letter."""
    now = runtime.clock()
    with runtime.session_factory() as session:
        assert transition(
            session,
            uuid.UUID(message_id),
            to=MessageStatus.failed,
            allowed_from=[MessageStatus.queued],
            at=now,
            values={"error_code": "provider_unavailable", "error_message": "HTTP 503"},
        )
        letter = record_dead_letter(
            session,
            uuid.UUID(message_id),
            reason="retries_exhausted",
            error_message="HTTP 503",
            at=now,
        )
        assert letter is not None
        session.commit()
        return letter.id


def given_up(actor: str, args: tuple) -> MessageProxy:
    """A delivery job dramatiq's Retries gave up on."""
    proxy = MessageProxy(
        dramatiq.Message(
            queue_name="transactional", actor_name=actor, args=args, kwargs={}, options={}
        )
    )
    proxy.fail()
    return proxy


# --------------------------------------------------------------- replay, once (invariant 2)


def test_a_claim_from_before_a_replay_cannot_settle_the_replays_claim(
    settings, runtime, client, make_stream, account_key
):
    """Invariant 2 across a replay. Worker A's claim outlives the lease (A stalled in its
    provider call); the relay fails it as a dead letter, and the account replays it. Worker B
    claims the replay. A's late answer (a 503) must not settle B's live claim: the replay
    opens a new round of ``max_send_attempts``, but its claims go on numbering where A's
    left off, so A's claim number is not B's."""
    runtime.settings = settings.model_copy(update={"max_send_attempts": 1})
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    key = uuid.UUID(message_id)

    def claim() -> dict[uuid.UUID, int]:
        with runtime.session_factory() as session:
            claimed = claim_for_sending(session, [key], runtime.clock(), 300, 1)
            session.commit()
        return {claimed_key: number.attempt for claimed_key, number in claimed.items()}

    [a_claim] = claim().values()
    with runtime.session_factory() as session:
        session.execute(
            update(Message)
            .where(Message.id == key)
            .values(claimed_at=runtime.clock() - timedelta(seconds=1000))
        )
        session.commit()
    assert Relay(runtime).sweep().claims_spent == 1
    [letter] = letters_of(runtime, message_id)
    assert (letter.reason, letter.attempts) == ("outcome_unknown", 1)
    replay = client.post(f"/api/v1/dead-letters/{letter.id}/replay", headers=auth(account_key))
    assert replay.status_code == 202, replay.text
    [b_claim] = claim().values()  # within the new round's budget of one attempt
    assert b_claim != a_claim

    job = SimpleNamespace(message_id=key, stream_id=None, account_id=None)
    Outcomes(runtime).end(
        job,
        MessageStatus.failed,
        code="provider_unavailable",
        reason="HTTP 503 (A's late answer)",
        allowed_from=(MessageStatus.sending,),
        dead_letter="retries_exhausted",
        claim=a_claim,
    )
    assert status_of(runtime, message_id) == "sending", "A's late answer settled B's claim"
    assert [x.reason for x in letters_of(runtime, message_id)] == ["outcome_unknown"]


def test_a_claim_taken_after_a_replay_gets_the_replays_whole_round(
    settings, runtime, client, make_stream
):
    """A worker loads a message, stalls, and meanwhile the message uses its attempts, fails
    as a dead letter and is replayed. The worker's claim then belongs to the replay's round:
    its passing error is retried, as the first of ``max_send_attempts``, not counted against
    the base the worker loaded before the replay."""
    runtime.settings = settings.model_copy(
        update={
            "max_send_attempts": 2,
            "retry_backoff_seconds": 0.05,
            "sandbox": settings.sandbox.model_copy(update={"transient_failure_rate": 1.0}),
        }
    )
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    key = uuid.UUID(message_id)
    delivery = delivery_with(runtime, SandboxProvider(runtime.settings.sandbox, runtime.redis))
    delivery._folds_claims = False  # the full pipeline: load and gates, then the claim
    claim = delivery._claim

    def claim_after_a_replay(jobs):
        move(runtime, message_id, MessageStatus.sending, MessageStatus.failed, attempts=2)
        with runtime.session_factory() as session:
            record_dead_letter(
                session, key, reason="retries_exhausted", error_message="x", at=runtime.clock()
            )
            session.commit()
        with runtime.session_factory() as session:
            [letter] = session.scalars(select(DeadLetter).where(DeadLetter.message_id == key))
            replay_dead_letter(session, letter, runtime.clock())
            session.commit()
        return claim(jobs)

    delivery._claim = claim_after_a_replay
    delivery.deliver(message_id)
    assert states(runtime, [message_id])[message_id] == ("queued", 3)  # a retry is due


def test_a_stale_concurrent_replay_is_refused_as_already_replayed(
    runtime, client, make_stream, account_key
):
    """Two replays race and the second read the letter before the first committed; the
    first replay's send then fails again. The second must still be refused: the claim on
    ``replayed_at`` is conditional, not a check of a stale read."""
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    letter_id = fail_as_dead_letter(runtime, message_id)

    slow = runtime.session_factory()
    try:
        stale = slow.scalars(select(DeadLetter).where(DeadLetter.id == letter_id)).one()
        assert stale.replayed_at is None
        first = client.post(f"/api/v1/dead-letters/{letter_id}/replay", headers=auth(account_key))
        assert first.status_code == 202, first.text
        move(runtime, message_id, MessageStatus.failed, error_code="provider_rejected")

        with pytest.raises(ReplayRefused) as refused:
            replay_dead_letter(slow, stale, runtime.clock())
        assert refused.value.code == "already_replayed"
    finally:
        slow.rollback()
        slow.close()

    assert status_of(runtime, message_id) == "failed"
    with runtime.session_factory() as session:
        requeued = session.scalars(
            select(MessageEvent.status).where(
                MessageEvent.message_id == uuid.UUID(message_id),
                MessageEvent.detail == "replayed from dead letters",
            )
        ).all()
    assert len(requeued) == 1


def test_a_refused_replay_is_not_counted(runtime, client, make_stream, account_key):
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    letter_id = fail_as_dead_letter(runtime, message_id)
    before = value(scrape(client), REPLAYS, type="transactional")
    url = f"/api/v1/dead-letters/{letter_id}/replay"
    assert client.post(url, headers=auth(account_key)).status_code == 202
    again = client.post(url, headers=auth(account_key))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_replayed")
    assert value(scrape(client), REPLAYS, type="transactional") == before + 1


@pytest.mark.parametrize("why", ["stream_deleted", "expired"])
def test_a_replay_that_could_never_send_is_refused_and_changes_nothing(
    runtime, client, make_stream, account_key, why
):
    """A replay of a letter whose stream was deleted since, or whose message's validity is
    over, could only fail again or expire: 409 naming why, and the letter stays unused
    (replayable should the answer ever change), the message failed, the replay uncounted."""
    clock = MovableClock(runtime.clock())
    runtime.clock = clock
    stream = make_stream()
    [message_id] = send(client, stream["token"], message(validity_seconds=60))
    letter_id = fail_as_dead_letter(runtime, message_id)
    if why == "stream_deleted":
        deleted = client.delete(f"/api/v1/streams/{stream['id']}", headers=auth(account_key))
        assert deleted.status_code == 204
    else:
        clock.advance(60)
    before = value(scrape(client), REPLAYS, type="transactional")

    refused = client.post(f"/api/v1/dead-letters/{letter_id}/replay", headers=auth(account_key))

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == why
    assert status_of(runtime, message_id) == "failed"
    assert [letter.replayed_at for letter in letters_of(runtime, message_id)] == [None]
    assert value(scrape(client), REPLAYS, type="transactional") == before


@pytest.mark.parametrize("reported", ["delivered", "undelivered"])
def test_a_sandbox_receipt_for_a_failed_message_moves_it_on(
    runtime, client, make_stream, account_key, reported
):
    """The sandbox took a message we then failed (its record kept failing until the claim
    ran out): its receipt moves the message on as a real carrier's does (``core.receipts``),
    and the letter shows it needs no replay. A repeated receipt changes nothing."""
    token = make_stream(demo=True)["token"]
    [message_id] = send(client, token, message())
    letter_id = fail_as_dead_letter(runtime, message_id)
    delivery = delivery_with(runtime, SandboxProvider(SandboxSettings(), runtime.redis))

    delivery.apply_receipt(message_id, reported)
    delivery.apply_receipt(message_id, "delivered")
    with runtime.session_factory() as session:
        found = session.get(Message, uuid.UUID(message_id))
        assert found is not None
        assert (found.status, found.error_code) == (
            reported,
            "undelivered" if reported == "undelivered" else None,
        )
        history = session.scalars(
            select(MessageEvent.detail)
            .where(MessageEvent.message_id == found.id)
            .order_by(MessageEvent.id.desc())
            .limit(1)
        ).all()
    assert history == [
        "provider receipt: the carrier took it after all (it had failed: provider_unavailable)"
    ]
    [letter] = client.get("/api/v1/dead-letters", headers=auth(account_key)).json()["items"]
    assert letter["message_status"] == reported
    replay = client.post(f"/api/v1/dead-letters/{letter_id}/replay", headers=auth(account_key))
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "not_failed")


# --------------------------------------------------------------- jobs dramatiq gave up on


def test_a_batch_job_dramatiq_gave_up_on_fails_its_waiting_messages_as_dead_letters(
    runtime, client, make_stream
):
    """Invariant 1: each waiting message of a batch job whose retries ran out becomes
    ``failed`` and a dead letter, as a single-message job's does; one already sent in the
    batch is left as it is, with no dead letter."""
    token = make_stream()["token"]
    waiting = send(client, token, message(), message(recipient_phone="+972524265293"))
    [sent] = send(client, token, message(recipient_phone="+972524265294"))
    move(runtime, sent, MessageStatus.sending, MessageStatus.sent)
    before = value(scrape(client), LETTERS, type="transactional", reason="worker_error")

    with capture_logs() as logs:
        DeadLetters(runtime).after_process_message(
            runtime.broker,
            given_up(delivery_batch_actor_name("transactional"), ([*waiting, sent],)),
            exception=RuntimeError("database down"),
        )

    assert [status_of(runtime, i) for i in waiting] == ["failed", "failed"]
    logged = [
        (x["message_id"], x["reason"], x["error"])
        for x in logs
        if x["event"] == "message_dead_lettered"
    ]
    assert logged == [(i, "worker_error", "RuntimeError") for i in waiting]
    for message_id in waiting:
        [letter] = letters_of(runtime, message_id)
        assert (letter.reason, letter.error_message) == ("worker_error", "RuntimeError")
    assert status_of(runtime, sent) == "sent"
    assert letters_of(runtime, sent) == []
    after = value(scrape(client), LETTERS, type="transactional", reason="worker_error")
    assert after == before + 2


def test_a_message_being_sent_is_left_to_its_claim_when_dramatiq_gives_up(
    runtime, client, make_stream
):
    """Invariant 2: a job dramatiq gave up on may name a message another worker holds a
    live claim on, or one whose call went out before the job raised. Failing it as a dead
    letter would offer a replay of a message the carrier may have taken: it stays
    ``sending`` for the claim lease to decide."""
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    move(runtime, message_id, MessageStatus.sending)
    DeadLetters(runtime).after_process_message(
        runtime.broker,
        given_up(delivery_actor_name("transactional"), (message_id,)),
        exception=RuntimeError("database down"),
    )
    assert status_of(runtime, message_id) == "sending"
    assert letters_of(runtime, message_id) == []


@pytest.mark.parametrize("batch", [False, True], ids=["single job", "batch job"])
def test_a_job_a_running_worker_gives_up_on_becomes_a_dead_letter(
    runtime, client, make_stream, monkeypatch, redis_client, batch
):
    """Invariant 1, through a worker started as the pools start one: when a delivery job
    keeps raising (the database gone) and dramatiq's Retries gives up on it, its message
    becomes ``failed`` and a dead letter the account can see and replay, not only a job in
    dramatiq's dead-letter queue. dramatiq calls the after-hooks last middleware first, so
    this holds only with ``DeadLetters`` running after Retries has marked the job failed."""
    token = make_stream()["token"]
    [message_id] = send(client, token, message())

    def database_down(*_args, **_kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(Delivery, "deliver_many", database_down)
    actor = (delivery_batch_actor_name if batch else delivery_actor_name)("transactional")
    with pipeline(runtime, ["transactional"], relay=False):
        runtime.broker.enqueue(
            dramatiq.Message(
                queue_name="transactional",
                actor_name=actor,
                args=([message_id],) if batch else (message_id,),
                kwargs={},
                options={"max_retries": 0},  # its first failure is its last
            )
        )
        assert wait_until(lambda: status_of(runtime, message_id) == "failed", 20)
    assert redis_client.zcard("dramatiq:transactional.XQ") == 1  # dramatiq's copy too
    [letter] = letters_of(runtime, message_id)
    assert (letter.reason, letter.error_message) == ("worker_error", "RuntimeError")


def test_a_single_job_dramatiq_gave_up_on_is_still_a_dead_letter(runtime, client, make_stream):
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    DeadLetters(runtime).after_process_message(
        runtime.broker,
        given_up(delivery_actor_name("transactional"), (message_id,)),
        exception=RuntimeError("database down"),
    )
    assert status_of(runtime, message_id) == "failed"
    assert [x.reason for x in letters_of(runtime, message_id)] == ["worker_error"]


# --------------------------------------------------------------- monitoring


def test_a_message_whose_provider_has_no_adapter_here_is_a_dead_letter(
    runtime, client, make_stream
):
    """The stream's provider is not among this pool's adapters (an operator's mistake):
    the message fails without a call, as a dead letter (reason ``configuration``) to replay
    once the pool runs the adapter."""
    [message_id] = send(client, make_stream()["token"], message())
    no_sandbox = Delivery(runtime, ProviderRegistry({}, "sandbox"), RedisAdmission(runtime.redis))
    no_sandbox.deliver(message_id, "transactional")
    assert status_of(runtime, message_id) == "failed"
    assert [x.reason for x in letters_of(runtime, message_id)] == ["configuration"]


def test_a_retries_exhausted_dead_letter_is_counted(
    settings, runtime, client, make_stream, account_key
):
    runtime.settings = settings.model_copy(
        update={"max_send_attempts": 2, "retry_backoff_seconds": 0.05}
    )
    token = make_stream()["token"]
    before = value(scrape(client), LETTERS, type="transactional", reason="retries_exhausted")
    [message_id] = send(client, token, message(recipient_phone=TIMEOUT))
    with pipeline(runtime, ["transactional"]):
        assert wait_until(lambda: status_of(runtime, message_id) == "failed", timeout=30)
    assert [x.reason for x in letters_of(runtime, message_id)] == ["retries_exhausted"]
    assert wait_until(
        lambda: (
            value(scrape(client), LETTERS, type="transactional", reason="retries_exhausted")
            == before + 1
        ),
        timeout=5,
    )


def test_a_dead_letter_is_counted_only_once_its_row_is_committed(runtime, client, make_stream):
    token = make_stream()["token"]
    [message_id] = send(client, token, message())
    labels = {"type": "transactional", "reason": "retries_exhausted"}
    before = value(scrape(client), LETTERS, **labels)

    def record(session) -> None:
        assert record_dead_letter(
            session,
            uuid.UUID(message_id),
            reason="retries_exhausted",
            error_message=None,
            at=runtime.clock(),
        )

    with runtime.session_factory() as session:  # rolled back: no row, no count
        record(session)
        session.flush()
        session.rollback()
        session.commit()
    with runtime.session_factory() as session:  # closed without commit
        record(session)
    with runtime.session_factory() as session:  # its savepoint rolled back
        with session.begin_nested() as savepoint:
            record(session)
            session.flush()
            savepoint.rollback()
        session.commit()
    assert letters_of(runtime, message_id) == []
    assert value(scrape(client), LETTERS, **labels) == before

    with runtime.session_factory() as session:
        record(session)
        session.commit()
    assert len(letters_of(runtime, message_id)) == 1
    assert value(scrape(client), LETTERS, **labels) == before + 1


def test_a_replay_is_counted_and_logged_with_ids_only(runtime, client, make_stream, account_key):
    stream = make_stream()
    content = "Your parcel 4411 is on its way"
    [message_id] = send(client, stream["token"], message(message_content=content))
    letter_id = fail_as_dead_letter(runtime, message_id)
    before = value(scrape(client), REPLAYS, type="transactional")

    with capture_logs() as logs:
        answer = client.post(f"/api/v1/dead-letters/{letter_id}/replay", headers=auth(account_key))
    assert answer.status_code == 202, answer.text
    assert answer.json()["message_status"] == "queued"

    [line] = [x for x in logs if x["event"] == "dead_letter_replayed"]
    assert line["dead_letter_id"] == str(letter_id)
    assert line["message_id"] == message_id
    assert line["stream_id"] == stream["id"]
    assert line["queue"] == "transactional"
    assert content not in repr(line) and stream["token"] not in repr(line)
    assert value(scrape(client), REPLAYS, type="transactional") == before + 1


def test_a_spent_claim_the_relay_dead_letters_is_logged_with_its_message_id(
    settings, runtime, client, make_stream
):
    """The relay fails a claim that outlived its lease with its attempts used up (or a
    WhatsApp claim) as an ``outcome_unknown`` dead letter: the carrier may have taken the
    message, so it is the one dead letter an operator must check with the carrier before
    replaying it. ``StreamsMessageDeadLetters`` sends the operator to the logs
    (``message_dead_lettered``): each such message is logged there by its id and its
    stream's, as the workers log theirs, never with its text."""
    runtime.settings = settings.model_copy(update={"max_send_attempts": 1})
    stream = make_stream()
    content = "Your parcel 4411 is on its way"
    [message_id] = send(client, stream["token"], message(message_content=content))
    lease = runtime.settings.claim_lease_seconds
    move(
        runtime,
        message_id,
        MessageStatus.sending,
        attempts=1,
        claimed_at=runtime.clock() - timedelta(seconds=lease + 5),
    )
    with capture_logs() as logs:
        assert Relay(runtime).sweep().claims_spent == 1
    [line] = [x for x in logs if x["event"] == "message_dead_lettered"]
    assert line["log_level"] == "warning"
    assert {key: line[key] for key in ("message_id", "stream_id", "reason", "attempts")} == {
        "message_id": message_id,
        "stream_id": stream["id"],
        "reason": "outcome_unknown",
        "attempts": 1,
    }
    assert content not in repr(line) and stream["token"] not in repr(line)


def test_an_alert_fires_on_new_message_dead_letters():
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    rule = alerts["StreamsMessageDeadLetters"]
    assert check_expression(rule["expr"], rule["alert"]) == {LETTERS}
    assert f"increase({LETTERS}[" in rule["expr"].replace(" ", "")
    assert rule["labels"]["severity"] == "warning"
    assert rule["annotations"]["summary"]
