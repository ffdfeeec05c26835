"""A batch job's provider calls go side by side (``workers.provider_calls``), against the
fake HTTP SMS API with a carrier's latency and one worker thread, so that only the batch
itself can overlap its calls."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError

from tests.conftest import auth, message
from tests.fakes.http_sms import FakeHttpSms, provider_settings
from tests.fakes.server import serve
from tests.processes import wait_until
from workers.admission import RedisAdmission
from workers.delivery import Delivery
from workers.pool import start_worker
from workers.providers.registry import ProviderRegistry

BATCH = 12


@pytest.fixture
def sms():
    fake = FakeHttpSms(latency_seconds=0.2)
    with serve(fake.app()) as base:
        fake.base_url = base
        yield fake


@pytest.fixture
def concurrency() -> int:
    return 4


@pytest.fixture
def provider_timeout() -> float:
    return 1


@pytest.fixture
def settings(settings, sms, concurrency, provider_timeout):
    return settings.model_copy(
        update={
            "http_provider": provider_settings(sms.base_url, timeout_seconds=provider_timeout),
            "default_provider": "http",
            "batch_send_concurrency": concurrency,
        }
    )


def status_of(runtime, message_id: str) -> str:
    with runtime.session_factory() as session:
        return session.execute(
            text("SELECT status FROM messages WHERE id = :id"), {"id": message_id}
        ).scalar_one()


def statuses(runtime) -> dict[str, int]:
    with runtime.session_factory() as session:
        rows = session.execute(text("SELECT status, count(*) FROM messages GROUP BY status"))
        return {status: count for status, count in rows}


@contextmanager
def one_batch(client, runtime, make_stream, recipients: list[str], stream_settings=None):
    """Send ``recipients`` as one batch (one job: fewer than ``enqueue_chunk_size``) and let
    a one-thread worker take it while in the block."""
    stream = make_stream(settings=stream_settings) if stream_settings else make_stream()
    answer = client.post(
        "/v1/messages",
        json={"messages": [message(recipient_phone=r) for r in recipients]},
        headers=auth(stream["token"]),
    )
    assert answer.status_code == 202 and answer.json()["accepted"] == len(recipients)
    worker = start_worker(runtime, ["transactional"], threads=1)
    try:
        yield
    finally:
        worker.stop(timeout=5_000)


def drain_one_batch(
    client, runtime, make_stream, recipients: list[str], ends: dict, stream_settings=None
) -> None:
    """``one_batch`` until the statuses are ``ends``."""
    with one_batch(client, runtime, make_stream, recipients, stream_settings):
        assert wait_until(lambda: statuses(runtime) == ends, 20), statuses(runtime)


def numbers(count: int) -> list[str]:
    return [f"+9725242{65300 + n}" for n in range(count)]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_batch_jobs_calls_overlap_up_to_the_setting(
    client, runtime, make_stream, sms, concurrency
):
    drain_one_batch(client, runtime, make_stream, numbers(BATCH), {"sent": BATCH})
    taken = sms.accepted()
    assert len({r["body"]["reference"] for r in taken}) == len(taken) == BATCH
    assert sms.most_in_flight == concurrency


@pytest.mark.parametrize(
    ("stream_settings", "most_in_flight"),
    [
        # Caps count messages but space nothing: the batch still calls side by side.
        ({"max_per_day": 1000, "max_per_recipient_per_hour": 5}, 4),
        # A rate spaces the calls: each admitted message is claimed and sent at once.
        ({"max_per_second": 1000}, 1),
    ],
)
def test_only_a_rate_limit_makes_a_batch_call_one_at_a_time(
    client, runtime, make_stream, sms, stream_settings, most_in_flight
):
    drain_one_batch(client, runtime, make_stream, numbers(BATCH), {"sent": BATCH}, stream_settings)
    assert len({r["body"]["reference"] for r in sms.accepted()}) == BATCH
    assert sms.most_in_flight == most_in_flight


def test_a_refusal_in_a_batch_fails_that_message_alone(client, runtime, make_stream, sms):
    sms.fail_next(1, 422, body={"error": {"message": "sender not allowed"}})  # permanent
    drain_one_batch(client, runtime, make_stream, numbers(BATCH), {"sent": 11, "failed": 1})
    assert sms.most_in_flight > 1
    with runtime.session_factory() as session:
        failed = session.execute(
            text("SELECT error_code FROM messages WHERE status = 'failed'")
        ).scalar_one()
    assert failed == "provider_rejected"


@pytest.mark.parametrize("provider_timeout", [5])
def test_a_call_that_hangs_first_does_not_hold_up_the_others_calls(
    client, runtime, make_stream, sms
):
    """The job's first call, made in the worker's thread, hangs for 3 s: once the 50 ms
    budget has passed, the other eleven go out side by side all the same."""
    recipients = numbers(BATCH)
    sms.latency_by_recipient[recipients[0]] = 3
    with one_batch(client, runtime, make_stream, recipients):
        assert wait_until(lambda: len(sms.accepted()) == BATCH - 1, 2.5), len(sms.accepted())
        assert wait_until(lambda: sms.in_flight == 1, 1), sms.in_flight
        assert statuses(runtime) == {"sending": BATCH}
        assert wait_until(lambda: statuses(runtime) == {"sent": BATCH}, 10), statuses(runtime)
    assert sms.requests[-1]["body"]["to"] == recipients[0]  # it was the first call


@pytest.mark.parametrize("provider_timeout", [5])
def test_a_call_that_hangs_does_not_hold_up_the_others_records(client, runtime, make_stream, sms):
    """One call side by side hangs for 3 s: the rest are recorded ``sent`` meanwhile (a
    wave), and it is recorded when it ends."""
    recipients = numbers(BATCH)
    sms.latency_by_recipient[recipients[5]] = 3
    with one_batch(client, runtime, make_stream, recipients):
        others = {"sent": BATCH - 1, "sending": 1}
        assert wait_until(lambda: statuses(runtime) == others, 2.5), statuses(runtime)
        assert wait_until(lambda: sms.in_flight == 1, 1), sms.in_flight
        assert wait_until(lambda: statuses(runtime) == {"sent": BATCH}, 10), statuses(runtime)


def test_a_batch_whose_record_fails_gives_back_the_claims_of_calls_never_made(
    client, runtime, settings, make_stream, sms
):
    """The first wave's record fails (the carrier's id holds a NUL, which PostgreSQL
    refuses) while calls of the batch are still to be made. Those calls are not made, and
    their claims go back at once, so the job's retry sends them; they used to wait out the
    claim lease (300 s by default). The calls made stay claimed for the lease to decide,
    since the carrier has them."""
    runtime.settings = settings.model_copy(update={"batch_send_concurrency": 2})
    sms.latency_seconds = 0.5
    stream = make_stream()
    ids = [
        r["message_id"]
        for r in client.post(
            "/v1/messages",
            json={"messages": [message() for _ in range(BATCH)]},
            headers=auth(stream["token"]),
        ).json()["results"]
    ]
    sms.fail_next(1, 200, body={"message_id": "sms-TAKEN\u0000", "status": "accepted"})
    delivery = Delivery(
        runtime, ProviderRegistry.from_runtime(runtime), RedisAdmission(runtime.redis)
    )
    with pytest.raises(DataError):
        delivery.deliver_many(ids, queue="transactional")
    assert wait_until(lambda: sms.in_flight == 0, 10)  # the calls in flight have ended
    offered = {request["body"]["reference"] for request in sms.requests}
    states = {i: status_of(runtime, i) for i in ids}
    given_back = [i for i in ids if states[i] == "queued"]
    assert given_back, "the batch still had calls to make when its record failed"
    assert not offered & set(given_back), "a claim given back whose call was made"
    assert set(states.values()) == {"queued", "sending"}
    assert {states[i] for i in offered} == {"sending"}, "calls made are left to the lease"

    result = delivery.deliver_many(given_back, queue="transactional")  # the job's retry
    assert result.failed == [] and result.handed_back == []
    assert {status_of(runtime, i) for i in given_back} <= {"sent", "delivered"}
