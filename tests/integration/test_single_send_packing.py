"""Single sends that one group commit stores go out as batch jobs on the packed queues
(``packed_single_send_queues``: marketing and transactional by default) and as one job each
everywhere else (OTP above all: invariant 6)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from dispatcher.auth import find_stream_access
from dispatcher.intake import prepare_item
from schemas.enums import StreamType
from tests.conftest import message
from tests.queued_jobs import jobs_on

SENDS = 45


def send_together(app, runtime, token: str, count: int) -> set[str]:
    """``count`` single sends handed to the ingress' group committer at once, so that one
    group commit stores them all; returns their message ids."""
    committer = app.state.group_committer
    access = find_stream_access(runtime, token, runtime.clock())
    items = [
        prepare_item(0, message(recipient_phone=f"+9725242652{n:02d}"), access, runtime.clock())
        for n in range(count)
    ]

    async def store_all():  # type: ignore[no-untyped-def]
        return await asyncio.gather(*(committer.store(access, item) for item in items))

    results = asyncio.run(store_all())
    assert all(r.status == "queued" for r in results), results
    return {r.message_id for r in results}


@pytest.mark.parametrize("stream_type", ["marketing", "transactional"])
def test_a_group_goes_out_as_batch_jobs_on_the_packed_queues(
    app, runtime, make_stream, redis_client, stream_type
):
    stream = make_stream(type=stream_type, name="Packed")
    ids = send_together(app, runtime, stream["token"], SENDS)
    jobs = jobs_on(redis_client, StreamType(stream_type).queue_name)
    sizes = sorted(len(batch) for _, batch in jobs)
    assert sizes == [5, 20, 20]  # enqueue_chunk_size 20, as a batch send's
    assert {actor for actor, _ in jobs} == {f"deliver_batch_{stream_type}"}
    enqueued = Counter(message_id for _, batch in jobs for message_id in batch)
    assert set(enqueued) == ids and set(enqueued.values()) == {1}  # each once, none lost


@pytest.mark.parametrize("stream_type", ["otp", "two_way", "whatsapp"])
def test_other_queues_keep_a_job_per_single_send(
    app, runtime, make_stream, redis_client, stream_type
):
    stream = make_stream(type=stream_type, name="Latency first")
    ids = send_together(app, runtime, stream["token"], SENDS)
    jobs = jobs_on(redis_client, StreamType(stream_type).queue_name)
    assert {actor for actor, _ in jobs} == {f"deliver_{stream_type}"}
    assert sorted(batch[0] for _, batch in jobs) == sorted(ids)


def test_packing_follows_the_setting(app, runtime, make_stream, redis_client, monkeypatch):
    monkeypatch.setattr(runtime.settings, "packed_single_send_queues", [])
    stream = make_stream(type="marketing", name="Promotions")
    ids = send_together(app, runtime, stream["token"], SENDS)
    jobs = jobs_on(redis_client, StreamType.marketing.queue_name)
    assert len(jobs) == SENDS and {batch[0] for _, batch in jobs} == ids


def test_unknown_queues_are_refused_by_name():
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match=r"packed_single_send_queues\[1\] 'sms'"):
        Settings(_env_file=None, packed_single_send_queues="marketing,sms")
