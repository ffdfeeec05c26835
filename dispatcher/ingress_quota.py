"""The ingress quota: how many messages a second one stream may hand the send API.

API.md promises "429 with ``Retry-After`` at the ingress quota", as Twilio's and Infobip's
send APIs answer a client that sends faster than its account may. Without it a flooding
client is never told to slow down: everything it posts is stored and queued.

The rule, per stream (the token's): at most ``per_second`` messages a second, counted in
messages (a batch of 100 counts 100), with a burst of ``burst`` messages. It is GCRA, as
in ``workers.admission`` (microsecond integers, the theoretical arrival time in a key that
expires once it has passed): a request of ``cost`` messages conforms when
max(TAT, now) + cost × interval − now ≤ max(burst, cost) × interval, and then moves TAT
there. A request bigger than the burst (a full batch over a small burst) is still let in
when the bucket is idle, and pays forward. A request that does not conform is refused
whole (a batch is never half taken) and counts nothing; ``retry_after_seconds`` is when
it would conform, in whole seconds, at least 1.

Two backends give the same answers:

* ``RedisIngressQuota``: one Lua call per request on Redis's own clock (``TIME``), so every
  ingress process and host shares one quota per stream.
* ``MemoryIngressQuota``: one process, for ``streams dev`` (no Redis).

``IngressGate`` is the one way in for the routes: it answers 429 ``rate_limited``, counts
refusals in ``streams_ingress_quota_refusals_total{type}``, and lets sends through when
the quota cannot be asked (a message is stored in PostgreSQL whatever Redis does,
invariant 1).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import anyio.to_thread
import redis
import structlog

from core import metrics
from dispatcher.auth import StreamAccess
from dispatcher.errors import ApiError
from workers.admission import interval_us

log = structlog.get_logger(__name__)

KEY_PREFIX = "streams:ingress:quota:"
#: After the quota's store failed, sends go through unasked for this long: a hung Redis
#: then costs each ingress process one timeout a second, not one per request.
UNAVAILABLE_PAUSE_SECONDS = 1.0
#: At most one ``ingress_quota_exceeded`` line per stream this often, per process; the
#: counter counts every refusal.
LOG_EVERY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """Messages a second (0: no quota) and the burst above that rate."""

    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    @property
    def interval_us(self) -> int:
        """Microseconds per message, rounded up as the workers' admission rounds it."""
        return interval_us(self.per_second)


@dataclass(frozen=True, slots=True)
class QuotaCharge:
    """What one request asks of its stream's quota."""

    stream_id: uuid.UUID
    cost: int
    rule: QuotaRule

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.stream_id}"

    @property
    def args(self) -> list[int]:
        """The Lua arguments: cost, interval (µs), burst."""
        return [max(self.cost, 1), self.rule.interval_us, self.rule.burst]


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    allowed: bool
    #: Whole seconds until the request would conform (refused only; at least 1).
    retry_after_seconds: int = 0


def conform(tat_us: int, now_us: int, charge: QuotaCharge) -> tuple[int, int]:
    """GCRA for ``charge`` at ``now_us``: ``(wait_us, new_tat_us)``. A request conforms when
    ``wait_us <= 0``; it then moves the TAT to ``new_tat_us``. Pure."""
    cost, interval, burst = charge.args
    new_tat = max(tat_us, now_us) + cost * interval
    return new_tat - max(burst, cost) * interval - now_us, new_tat


def retry_after(wait_us: float) -> int:
    """Whole seconds, rounded up, at least 1 (``Retry-After`` takes integers)."""
    return max(1, math.ceil(wait_us / 1_000_000))


class IngressQuota(Protocol):
    def take(self, charge: QuotaCharge) -> QuotaDecision:
        """Count ``charge.cost`` messages against the stream's quota if they all fit now;
        count nothing otherwise. Raises whatever the store raises (the caller fails open)."""
        ...

    def take_many(self, charges: list[QuotaCharge]) -> list[QuotaDecision]:
        """``take`` for each of ``charges`` in turn, in one step (one round trip): what the
        group committer asks for the single sends it gathered."""
        ...


#: GCRA on one key, shared with the OTP cap's script (one round trip for both). Numbers are
#: microseconds since the epoch on Redis's clock (doubles: exact below 2^53).
QUOTA_LUA = """
local function quota_wait(key, now, cost, interval, burst)
  local new = math.max(tonumber(redis.call('GET', key) or '0'), now) + cost * interval
  return new - math.max(burst, cost) * interval - now, new
end
local function quota_pay(key, now, new)
  redis.call('SET', key, string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
"""

#: Requests in turn, KEYS[i] with ARGV[3i-2..3i] (cost, interval, burst): for each, 0 with
#: the wait or 1 (a key may repeat: a later request of a stream sees the earlier's payment).
_TAKE_LUA = (
    QUOTA_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local answers = {}
for i, key in ipairs(KEYS) do
  local n = 3 * (i - 1)
  local wait, new = quota_wait(
    key, now, tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2]), tonumber(ARGV[n + 3]))
  if wait > 0 then
    answers[i] = string.format('%.0f', wait)
  else
    quota_pay(key, now, new)
    answers[i] = '0'
  end
end
return answers
"""
)


class RedisIngressQuota:
    """Shared by every ingress process: one Lua call per request (or group), on Redis's
    clock."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_TAKE_LUA)

    def take(self, charge: QuotaCharge) -> QuotaDecision:
        return self.take_many([charge])[0]

    def take_many(self, charges: list[QuotaCharge]) -> list[QuotaDecision]:
        if not charges:
            return []
        waits = self._script(
            keys=[c.key for c in charges], args=[arg for c in charges for arg in c.args]
        )
        return [_decision(float(wait)) for wait in waits]


def _decision(wait_us: float) -> QuotaDecision:
    if wait_us <= 0:
        return QuotaDecision(True)
    return QuotaDecision(False, retry_after_seconds=retry_after(wait_us))


class MemoryIngressQuota:
    """One process's quota (``streams dev`` only). ``lock`` guards ``measure`` and ``pay``
    for a caller that decides something else in the same step (the OTP cap)."""

    def __init__(self, now_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._now_us = now_us
        self._tats: dict[uuid.UUID, int] = {}
        self.lock = threading.Lock()

    def take(self, charge: QuotaCharge) -> QuotaDecision:
        return self.take_many([charge])[0]

    def take_many(self, charges: list[QuotaCharge]) -> list[QuotaDecision]:
        decisions = []
        with self.lock:
            for charge in charges:
                wait, new_tat = self.measure(charge)
                if wait <= 0:
                    self.pay(charge, new_tat)
                decisions.append(_decision(wait))
        return decisions

    def measure(self, charge: QuotaCharge) -> tuple[int, int]:
        """``conform`` on this process's clock; the caller holds ``lock``."""
        now = self._now_us()
        if len(self._tats) > 10_000:  # forget the streams whose TAT has passed
            self._tats = {k: v for k, v in self._tats.items() if v > now}
        return conform(self._tats.get(charge.stream_id, 0), now, charge)

    def pay(self, charge: QuotaCharge, new_tat: int) -> None:
        """Move the stream's TAT (after ``measure``, the caller holding ``lock``)."""
        self._tats[charge.stream_id] = new_tat


def build_ingress_quota(client: redis.Redis | None) -> IngressQuota:
    return RedisIngressQuota(client) if client is not None else MemoryIngressQuota()


class IngressGate:
    """The send routes' way in to the quota: ``admit`` or ``admit_async`` before any
    database work, after authentication."""

    def __init__(
        self,
        quota: IngressQuota,
        rule: QuotaRule,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quota = quota
        self.rule = rule
        self._monotonic = monotonic
        self._ask_after = 0.0
        self._logged: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    def charge_for(self, access: StreamAccess, cost: int) -> QuotaCharge | None:
        """What a request of ``cost`` messages asks, or None when it is not asked: the
        quota is off, or its store failed less than ``UNAVAILABLE_PAUSE_SECONDS`` ago."""
        if not self.rule.enabled or self._monotonic() < self._ask_after:
            return None
        return QuotaCharge(access.stream_id, cost, self.rule)

    def admit(self, access: StreamAccess, cost: int) -> None:
        """Count ``cost`` messages for the stream, or raise 429 ``rate_limited`` (nothing
        counted). Lets the request through when the quota cannot be asked."""
        charge = self.charge_for(access, cost)
        if charge is None:
            return
        try:
            decision = self.quota.take(charge)
        except Exception as exc:
            self.unavailable(exc)
            return
        if not decision.allowed:
            self.refuse(access, charge, decision.retry_after_seconds)

    def admit_many(self, requests: list[tuple[StreamAccess, int]]) -> list[ApiError | None]:
        """``admit`` for several requests in one step (one Redis round trip), in turn: for
        each, None (counted, or not asked) or the 429 to answer it with."""
        charges = [self.charge_for(access, cost) for access, cost in requests]
        asked = [charge for charge in charges if charge is not None]
        try:
            decisions = iter(self.quota.take_many(asked))
        except Exception as exc:
            self.unavailable(exc)
            return [None] * len(requests)
        answers: list[ApiError | None] = []
        for (access, _), charge in zip(requests, charges, strict=True):
            decision = next(decisions) if charge is not None else QuotaDecision(True)
            if decision.allowed or charge is None:
                answers.append(None)
            else:
                answers.append(self.refusal(access, charge, decision.retry_after_seconds))
        return answers

    async def admit_async(self, access: StreamAccess, cost: int) -> None:
        """``admit`` from the event loop: a Redis call goes to a thread (it may wait for a
        timeout); the in-process quota, or none, costs no thread hop."""
        if not self.rule.enabled:
            return
        if isinstance(self.quota, MemoryIngressQuota):
            self.admit(access, cost)
        else:
            await anyio.to_thread.run_sync(self.admit, access, cost)

    def unavailable(self, exc: Exception) -> None:
        """The quota's store failed: count it, warn (once per pause), stop asking a while."""
        metrics.INGRESS_QUOTA_UNAVAILABLE.inc()
        with self._lock:
            now = self._monotonic()
            warn = now >= self._ask_after
            self._ask_after = now + UNAVAILABLE_PAUSE_SECONDS
        if warn:
            log.warning("ingress_quota_unavailable", error=type(exc).__name__)

    def refuse(self, access: StreamAccess, charge: QuotaCharge, seconds: int) -> NoReturn:
        raise self.refusal(access, charge, seconds)

    def refusal(self, access: StreamAccess, charge: QuotaCharge, seconds: int) -> ApiError:
        """The 429 for a refused ``charge`` (counted and, at most once a second a stream,
        logged)."""
        metrics.INGRESS_QUOTA_REFUSALS.labels(access.type.value).inc()
        if self._log_due(access.stream_id):
            log.info(
                "ingress_quota_exceeded",
                stream_id=str(access.stream_id),
                stream_type=access.type.value,
                requested=charge.cost,
                retry_after_seconds=seconds,
            )
        whole = " A batch is taken whole or not at all." if charge.cost > 1 else ""
        return ApiError(
            429,
            "rate_limited",
            f"This stream may send {self.rule.per_second:g} messages a second (bursts of "
            f"{self.rule.burst}); this request of {charge.cost} is over that, and nothing "
            f"was stored.{whole} Retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )

    def _log_due(self, stream_id: uuid.UUID) -> bool:
        now = self._monotonic()
        with self._lock:
            if now - self._logged.get(stream_id, -math.inf) < LOG_EVERY_SECONDS:
                return False
            if len(self._logged) > 10_000:
                self._logged = {
                    k: v for k, v in self._logged.items() if now - v < LOG_EVERY_SECONDS
                }
            self._logged[stream_id] = now
            return True
