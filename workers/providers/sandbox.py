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

Like carriers with a bulk API (Infobip's ``/sms/2/text/advanced`` takes a list of messages),
it takes up to ``max_batch`` messages in one request (``send_batch``): one wait of
``latency_ms`` and one ledger round trip for all of them, each message with its own answer.
``max_batch = 1`` makes it a carrier that takes one message per request. ``send`` is a
request of one, so ``send_batch`` is where a test's carrier changes what the carrier
does.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
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


#: The ledger in one round trip, for the references of one request: keep the first provider
#: id of each reference and count submissions and repeats. Returns the first provider id of
#: each, in order. One script also means a reference and its count are recorded together: a
#: worker killed between two separate calls left a reference counted as neither a
#: submission nor a repeat.
#: KEYS: the submissions and repeats counters, then each reference's ledger key; ARGV: the
#: ledger TTL, then each reference's new provider id.
_RECORD_LUA = """
local first, new = {}, 0
for i = 3, #KEYS do
  local id = ARGV[i - 1]
  if redis.call('SET', KEYS[i], id, 'NX', 'EX', ARGV[1]) then
    new = new + 1
  else
    id = redis.call('GET', KEYS[i])
  end
  first[i - 2] = id
end
if new > 0 then redis.call('INCRBY', KEYS[1], new) end
if #KEYS - 2 > new then redis.call('INCRBY', KEYS[2], #KEYS - 2 - new) end
return first
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
        #: The most messages it takes in one request (``send_batch``).
        self.max_batch = settings.max_batch
        self._redis = redis_client
        self._random = random.Random(seed)
        self._memory: dict[str, str] = {}
        self._counts = {"submissions": 0, "repeats": 0}
        self._lock = Lock()
        self._record_script: Script | None = None

    def rate_scope(self, stream_id: uuid.UUID) -> str:
        return self.name

    def send(self, message: OutboundMessage) -> Accepted:
        answer = self.send_batch([message])[0]
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[Accepted | ProviderError]:
        """One request for ``messages`` (at most ``max_batch``): each one's answer, in
        order. A repeated reference is answered like its first submission, receipt
        included: the worker that made the first one died before it could pass the receipt
        on."""
        if len(messages) > self.max_batch:
            raise ValueError(
                f"{len(messages)} messages in one request; the most is {self.max_batch}"
            )
        if self._settings.latency_ms:
            time.sleep(self._settings.latency_ms / 1000)
        judged = [self._judge(message) for message in messages]
        taken = [
            m.reference for m, j in zip(messages, judged, strict=True) if isinstance(j, Receipt)
        ]
        first_ids = iter(self._record(taken))
        return [
            Accepted(provider_message_id=next(first_ids), receipt=j)
            if isinstance(j, Receipt)
            else j
            for j in judged
        ]

    def _judge(self, message: OutboundMessage) -> ProviderError | Receipt:
        """The carrier's answer to one message: a refusal, or the receipt it will send."""
        magic = MAGIC_NUMBERS.get(message.recipient[-6:])
        if magic == "refused" or self._random.random() < self._settings.failure_rate:
            refused = "The sandbox carrier refused the message."
            return ProviderError("sandbox_refused", refused, transient=False)
        if magic == "timeout" or self._random.random() < self._settings.transient_failure_rate:
            late = "The sandbox carrier did not answer in time."
            return ProviderError("sandbox_timeout", late, transient=True)
        if magic == "throttled":
            throttled = "The sandbox carrier is throttling (429)."
            return ProviderError("sandbox_throttled", throttled, transient=True, retry_after=1.0)
        undelivered = (
            magic == "undelivered" or self._random.random() < self._settings.undelivered_rate
        )
        return Receipt(
            status="undelivered" if undelivered else "delivered",
            after_seconds=self._settings.receipt_delay_seconds,
        )

    def _record(self, references: list[str]) -> list[str]:
        """Remember ``references``, each with a new provider id; returns the provider id of
        each one's first submission."""
        if not references:
            return []
        new_ids = ["sbx_" + uuid.uuid4().hex for _ in references]
        if self._redis is not None:
            if self._record_script is None:
                self._record_script = self._redis.register_script(_RECORD_LUA)
            first = self._record_script(
                keys=[SUBMISSIONS_KEY, REPEATS_KEY, *(LEDGER_PREFIX + r for r in references)],
                args=[_LEDGER_TTL_SECONDS, *new_ids],
            )
            return [id_.decode() for id_ in first]
        with self._lock:
            first_ids = []
            for reference, new_id in zip(references, new_ids, strict=True):
                if reference in self._memory:
                    self._counts["repeats"] += 1
                else:
                    self._memory[reference] = new_id
                    self._counts["submissions"] += 1
                first_ids.append(self._memory[reference])
            return first_ids

    def submissions(self) -> int:
        """How many distinct messages reached the carrier."""
        if self._redis is not None:
            return int(self._redis.get(SUBMISSIONS_KEY) or 0)
        return self._counts["submissions"]
