"""A batch job's claims against the relay's lease, and a provider that cannot absorb a
second submission (invariant 2): a claim is used only while it is fresh, and what such a
provider took is recorded before the next call."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from core.runtime import build_runtime
from core.settings import SandboxSettings
from schemas.tables import MessageEvent
from tests.deliveries import delivery_with, send, states
from workers.providers.base import Accepted, OutboundMessage
from workers.providers.sandbox import SandboxProvider


def test_invariant_2_a_batch_gives_back_claims_older_than_half_the_lease(
    settings, client, make_stream
):
    ids = send(client, make_stream(), 3)
    # Calls one after another, each longer than half the lease: after the first, the
    # others' claims are too old to use (the relay may reclaim them while the call runs).
    own = settings.model_copy(
        update={
            "batch_send_concurrency": 1,
            "claim_lease_seconds": 0.4,
            "sandbox": SandboxSettings(latency_ms=300, receipt_delay_seconds=0),
        }
    )
    runtime = build_runtime(own)
    try:
        carrier = SandboxProvider(own.sandbox, runtime.redis)
        result = delivery_with(runtime, carrier).deliver_many(ids)
        assert sorted(result.handed_back) == sorted(ids[1:])
        assert result.failed == []
        assert carrier.submissions() == 1
        found = states(runtime, ids)
        assert found[ids[0]] == ("delivered", 1)
        assert [found[i] for i in ids[1:]] == [("queued", 0), ("queued", 0)]
        with runtime.session_factory() as session:
            details = session.scalars(
                select(MessageEvent.detail).where(MessageEvent.message_id == uuid.UUID(ids[1]))
            ).all()
        assert "claim given back" in details
    finally:
        runtime.close()


class NotIdempotentCarrier(SandboxProvider):
    """The sandbox, but like WhatsApp's Cloud API: no idempotency key. Before each call it
    notes what the database says of the messages it already took."""

    idempotent = False

    def __init__(self, runtime, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runtime = runtime
        self.taken: list[str] = []
        self.seen_before_call: list[dict[str, tuple[str, int]]] = []

    def send(self, message: OutboundMessage) -> Accepted:
        self.seen_before_call.append(states(self.runtime, self.taken) if self.taken else {})
        accepted = super().send(message)
        self.taken.append(message.reference)
        return accepted


def test_invariant_2_what_a_provider_without_idempotency_took_is_recorded_before_the_next(
    runtime, client, make_stream
):
    ids = send(client, make_stream(), 3)
    carrier = NotIdempotentCarrier(runtime, runtime.settings.sandbox, runtime.redis)
    result = delivery_with(runtime, carrier).deliver_many(ids)
    assert result.failed == [] and result.handed_back == []
    assert carrier.taken == ids
    # By the third call, the first two are already out of `sending`, for good.
    assert set(carrier.seen_before_call[2].values()) == {("delivered", 1)}
    assert states(runtime, ids) == {i: ("delivered", 1) for i in ids}
