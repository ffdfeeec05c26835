"""The sandbox: a simulated carrier ("Demo Sending"), also what the benchmarks drive.

It waits ``latency_ms``, refuses ``failure_rate`` of messages, and reports each accepted one
``delivered`` (or ``undelivered`` at ``undelivered_rate``) after ``receipt_delay_seconds``.
Like a carrier with idempotency keys, it accepts each reference once: a repeat returns the
first answer.

Recipients whose last six digits are one of ``MAGIC_NUMBERS`` behave the same way every
time, so a demo or a test can show each outcome on purpose (as carriers' test numbers do):
``000001`` refused for good, ``000002`` a passing error (timeout), ``000003`` throttled with
Retry-After 1 s, ``000004`` accepted but undelivered.

Its ledger lives in Redis when there is one, so every worker process shares it and tests
can count real submissions.
"""

from __future__ import annotations

import random
import time
import uuid
from threading import Lock

import redis
from redis.commands.core import Script

from core.settings import SandboxSettings
from workers.providers.base import Accepted, OutboundMessage, ProviderError, Receipt

LEDGER_PREFIX = "streams:sandbox:ref:"
SUBMISSIONS_KEY = "streams:sandbox:submissions"
REPEATS_KEY = "streams:sandbox:repeats"
_LEDGER_TTL_SECONDS = 7 * 24 * 3600
MAGIC_NUMBERS = {
    "000001": "refused",
    "000002": "timeout",
    "000003": "throttled",
    "000004": "undelivered",
}


#: The ledger in one round trip: keep the first provider id of a reference and count
#: submissions and repeats. Returns the first provider id. One script also means the
#: reference and its count are recorded together: a worker killed between two separate
#: calls left a reference counted as neither a submission nor a repeat.
#: KEYS: the reference's ledger key, the submissions and repeats counters; ARGV: the new
#: provider id and the ledger TTL.
_RECORD_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('INCR', KEYS[2])
  return ARGV[1]
end
redis.call('INCR', KEYS[3])
return redis.call('GET', KEYS[1])
"""


class SandboxProvider:
    name = "sandbox"
    idempotent = True  # a repeated reference returns the first id

    def __init__(
        self,
        settings: SandboxSettings,
        redis_client: redis.Redis | None = None,
        seed: int | None = None,
    ) -> None:
        self._settings = settings
        #: The carrier's throughput, enforced fleet-wide by admission.
        self.max_per_second = settings.max_per_second
        self._redis = redis_client
        self._random = random.Random(seed)
        self._memory: dict[str, str] = {}
        self._counts = {"submissions": 0, "repeats": 0}
        self._lock = Lock()
        self._record_script: Script | None = None

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        return self.name

    def send(self, message: OutboundMessage) -> Accepted:
        if self._settings.latency_ms:
            time.sleep(self._settings.latency_ms / 1000)
        magic = MAGIC_NUMBERS.get(message.recipient[-6:])
        if magic == "refused" or self._random.random() < self._settings.failure_rate:
            raise ProviderError(
                "sandbox_refused", "The sandbox carrier refused the message.", transient=False
            )
        if magic == "timeout" or self._random.random() < self._settings.transient_failure_rate:
            raise ProviderError(
                "sandbox_timeout", "The sandbox carrier did not answer in time.", transient=True
            )
        if magic == "throttled":
            raise ProviderError(
                "sandbox_throttled",
                "The sandbox carrier is throttling (429).",
                transient=True,
                retry_after=1.0,
            )
        provider_id = "sbx_" + uuid.uuid4().hex
        first_id = self._record(message.reference, provider_id)
        undelivered = (
            magic == "undelivered" or self._random.random() < self._settings.undelivered_rate
        )
        receipt = Receipt(
            status="undelivered" if undelivered else "delivered",
            after_seconds=self._settings.receipt_delay_seconds,
        )
        # A repeat is answered like the first submission, receipt included: the worker that
        # made the first one died before it could pass the receipt on.
        return Accepted(provider_message_id=first_id, receipt=receipt)

    def _record(self, reference: str, provider_id: str) -> str:
        """Remember ``reference``; returns the provider id of its first submission."""
        if self._redis is not None:
            if self._record_script is None:
                self._record_script = self._redis.register_script(_RECORD_LUA)
            first = self._record_script(
                keys=[LEDGER_PREFIX + reference, SUBMISSIONS_KEY, REPEATS_KEY],
                args=[provider_id, _LEDGER_TTL_SECONDS],
            )
            return first.decode() if first else provider_id
        with self._lock:
            if reference in self._memory:
                self._counts["repeats"] += 1
                return self._memory[reference]
            self._memory[reference] = provider_id
            self._counts["submissions"] += 1
            return provider_id

    def submissions(self) -> int:
        """How many distinct messages reached the carrier."""
        if self._redis is not None:
            return int(self._redis.get(SUBMISSIONS_KEY) or 0)
        return self._counts["submissions"]
