"""Worker threads waiting their turn under a stream's rate (``workers.gates``): each message
is admitted for a turn of its own in one call and its thread sleeps until then, rather than
every thread waking for the bucket's next turn and asking again and again."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from core.settings import SandboxSettings
from schemas.enums import StreamType
from workers.admission import LocalAdmission, Request, Ticket
from workers.gates import Gates
from workers.jobs import Job
from workers.providers.sandbox import SandboxProvider

RATE = 50  # messages a second
THREADS = 8
EACH = 5  # messages per thread


class CountingAdmission(LocalAdmission):
    def __init__(self) -> None:
        super().__init__()
        self.asks = 0
        self._count = threading.Lock()

    def admit(self, request: Request) -> Ticket:
        with self._count:
            self.asks += 1
        return super().admit(request)


def job(stream_id: uuid.UUID) -> Job:
    return Job(
        message_id=uuid.uuid4(),
        stream_id=stream_id,
        account_id=uuid.uuid4(),
        stream_type=StreamType.marketing,
        sender=None,
        recipient="+972524265292",
        body="hi",
        segments=1,
        encoding="GSM-7",
        attempts=0,
        attempts_base=0,
        expires_at=None,
        demo=False,
        settings={"max_per_second": RATE},
    )


def test_threads_waiting_their_turn_ask_once_each_and_keep_the_rate():
    """8 threads send 40 messages at 50/s, every turn within the inline budget (nothing is
    parked): one call to admission per message, and the sends keep the rate. Threads that
    slept until the bucket's next turn and asked again called it 258-282 times here."""
    admission = CountingAdmission()
    runtime = SimpleNamespace(
        clock=lambda: datetime.now(UTC),
        settings=SimpleNamespace(throttle_inline_wait_seconds=5.0),
    )
    gates = Gates(runtime, admission, outcomes=None)  # type: ignore[arg-type]
    provider = SandboxProvider(SandboxSettings(_env_file=None))
    stream = uuid.uuid4()
    sent: list[float] = []
    refused: list[Job] = []

    def sends() -> None:
        for _ in range(EACH):
            message = job(stream)
            if gates._admit(message, provider, log_=None):
                sent.append(time.monotonic())
            else:
                refused.append(message)

    threads = [threading.Thread(target=sends) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    messages = THREADS * EACH
    assert refused == [] and len(sent) == messages
    assert admission.asks == messages
    # The rate holds: the last send comes no sooner than the rate allows after the first
    # (each may go up to the tolerance early, the first at once).
    sent.sort()
    assert sent[-1] - sent[0] >= (messages - 1) / RATE - 0.03, sent[-1] - sent[0]
    # And no two sends bunch up: any 10 in a row span most of their 9 intervals.
    assert min(sent[i + 9] - sent[i] for i in range(messages - 9)) >= 9 / RATE - 0.05
