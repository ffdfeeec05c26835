"""Admission: may this message go out now, under its stream's and its provider's limits?

Limits hold across every worker process and host (invariant 5) because the state lives in
Redis and one Lua call decides atomically, on Redis's own clock.

The algorithm is GCRA (the generic cell rate algorithm): each bucket keeps a theoretical
arrival time (TAT). A message of ``cost`` segments conforms when TAT ≤ now; sending it
moves TAT to max(TAT, now) + cost × interval. Unlike fixed windows there is no edge to
burst over, and unlike a token bucket there is one number to keep. A message bigger than
a second's allowance is still sent when the bucket is idle; it then pays forward.

A message that does not conform yet is not sent now. If its turn comes within the
caller's ``inline_budget`` (and before it expires), it is admitted for that turn: the
buckets are paid as of then, and ``wait_seconds`` says how long the caller sleeps before
sending. That is one call per message however many threads wait; threads used to sleep
until the bucket's next turn, all of them, and ask again (2,000 calls a second with 32
threads at 100/s, the one turn going to whoever asked first). A thread that dies in its
sleep leaves its turn unused: the rate is then under-used, never exceeded.

Otherwise the message spends nothing and is parked until ``come_back_after``: a place on
the waiting schedule of the stream, or of the provider when the provider holds it back
longest (a stream held back by its own rate leaves the provider's schedule alone, or its
backlog would push back every other stream of the provider). A schedule spaces parked
messages at its bucket's rate, so a backlog returns a few at a time instead of all at
once; each asks again when it returns. Only parked messages take places.

A ``priority`` message (an OTP code) is never parked behind what other streams parked on
their shared provider: it takes a place on the provider's priority schedule, counted from
the provider's TAT, and the plain schedule moves back by the turn it takes. So a
marketing backlog on the carrier's rate holds a code back by the turns already paid for
(at most the inline budget) and two intervals, not by the backlog (invariant 6). While a
code waits for its place, no other message books a turn ahead (its inline budget is 0):
booked, that turn could be the one the code comes back for, and a backlog coming back at
its places would take every such turn before the code. A place the backlog was promised
earlier may then find its turn taken: that message books the next turn, or is parked
again.

A place is a promise that its message comes back then and uses the bucket, so a schedule
keeps only promises that can still be kept, and errs early when unsure: a message that
returns too early is parked again, one that returns too late is held up for nothing.
* A message that would come back after its ``expires_at`` takes no place (the caller
  expires it).
* When a message finds every bucket it is held to idle for longer than ``TOLERANCE_US``,
  the places promised for that time went unused (their messages expired, were cancelled,
  rejected or deleted), and the stream's schedule is dropped: later messages are parked
  from the stream's TAT again. The provider's is dropped when its own bucket stood idle.
* A schedule remembers the interval it was counted in; under a new limit, what is parked
  ahead is counted again at the new interval.

``TOLERANCE_US`` lets a message go up to 20 ms before its exact turn. Without it, every
admission's own latency (a sleep overshooting, a Redis round trip) would be lost from the
stream's rate; with it, the long-run rate is exact and any one second holds at most the
limit plus 20 ms' worth.

Caps (``max_per_day`` messages per UTC day, ``max_per_recipient_per_hour`` over a rolling
hour) are counted only when a message is admitted, in the same call, and answer "reject".
In the fleet both go by Redis's clock, so hosts whose clocks differ agree on the hour and
on when a day begins.
Both count messages, not admissions: each keeps the ids it admitted, so a message admitted
again (a retry after a carrier timeout, a claim taken back after its lease, a job
delivered twice) is neither counted twice nor refused by its own earlier count. The day's
set holds one id per message admitted under a cap that day (at most the cap) for 48 hours.
A message known never to have reached the carrier (its first call refused for good, or
never made) is ``release``d: its id leaves both caps, so a refused message does not use up
the day or stop the recipient's next message. One that may have reached it (a timeout, a
claim taken back, retries run out) keeps its place. What a message took of a rate is not
given back: that time has passed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, Protocol

import redis

Verdict = Literal["admit", "wait", "reject"]
Scope = Literal["stream", "provider"]
_HOUR_US = 3_600_000_000
TOLERANCE_US = 20_000


@dataclass(frozen=True, slots=True)
class Limits:
    per_second: float | None = None  # segments (WhatsApp: messages), for the stream
    provider_per_second: float | None = None  # the same, for the provider fleet-wide
    per_day: int | None = None  # messages per UTC day, for the stream
    per_recipient_per_hour: int | None = None  # messages per recipient, for the stream

    @property
    def paces(self) -> bool:
        """A rate spaces sends in time; caps only count them."""
        return self.per_second is not None or self.provider_per_second is not None

    @property
    def counts(self) -> bool:
        """A cap counts the messages it admits (and takes back those ``release``d)."""
        return self.per_day is not None or self.per_recipient_per_hour is not None


@dataclass(frozen=True, slots=True)
class Ticket:
    """``admit``: send in ``wait_seconds`` (its turn, paid for: 0 is now). ``wait``: it
    conforms in ``wait_seconds``, past the caller's inline budget or its expiry; park it and
    retry after ``come_back_after`` seconds. ``reject``: a cap is reached (``reason``)."""

    verdict: Verdict
    wait_seconds: float = 0.0
    come_back_after: float = 0.0
    reason: str | None = None
    #: Which rate set the wait (``admit`` and ``wait``): the stream's own limit, or the
    #: provider's, shared by every stream on it.
    scope: Scope = "stream"


@dataclass(frozen=True, slots=True)
class Request:
    stream_id: str
    provider: str
    recipient: str
    message_id: str
    cost: int
    limits: Limits
    #: The caller's UTC day. The fleet's admission counts ``max_per_day`` on the day of
    #: Redis's clock, one for every host, when that is this day or one either side of it.
    day: date
    #: How long the caller would wait in its thread for the message's turn; a longer wait
    #: parks the message.
    inline_budget: float = 0.0
    #: When the caller will expire the message: it takes no place on the schedule after it.
    expires_at: datetime | None = None
    #: Goes ahead of other streams' parked messages on a shared provider (an OTP code).
    priority: bool = False


class Admission(Protocol):
    def admit(self, request: Request) -> Ticket: ...

    def release(self, release: Release) -> None:
        """Take a message that will not be sent out of the caps it was counted in."""
        ...


@dataclass(frozen=True, slots=True)
class Release:
    """A message admitted under its stream's caps that will not go out after all."""

    stream_id: str
    recipient: str
    message_id: str
    #: The UTC days it may have been counted in: the caller's today and the days either
    #: side (the send may have ended past midnight, and Redis's clock decides the day).
    days: tuple[date, ...]


def interval_us(per_second: float | None) -> int:
    """Microseconds per segment, rounded up so that a high rate is never exceeded (19 µs
    for 50,001 a second would allow 52,631); 0 means unlimited."""
    return math.ceil(1_000_000 / per_second) if per_second else 0


_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local si, pi, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tolerance, budget, expiry = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local priority = ARGV[10] == '1'
local function num(key) return tonumber(redis.call('GET', key) or '0') end
local function store(key, value, lasts_until)
  local ttl = math.floor(((lasts_until or value) - now) / 1000) + 60000
  redis.call('SET', key, string.format('%.0f', value), 'PX', ttl)
end
-- The next place on a bucket's waiting schedule (``wkey``), from the bucket's TAT. ``ikey``
-- holds the interval the schedule was counted in: what is parked ahead is counted again at
-- a new one.
local function place(wkey, ikey, interval, tat)
  local base, ahead, counted_in = math.max(tat, now), num(wkey), num(ikey)
  if ahead > base and counted_in > 0 and counted_in ~= interval then
    ahead = base + math.floor((ahead - base) * interval / counted_in)
  end
  return math.max(ahead, base)
end
local stat, ptat, wait, swait = 0, 0, 0, 0
if si > 0 then stat = num(KEYS[1]); swait = stat - now - tolerance; wait = math.max(wait, swait) end
if pi > 0 then ptat = num(KEYS[3]); wait = math.max(wait, ptat - now - tolerance) end
-- Which limit holds it back: the provider's when its turn comes later than the stream's.
local scope = 'stream'
if wait > math.max(swait, 0) then scope = 'provider' end
-- While codes wait for places on the provider, nothing else books a turn ahead: a turn
-- booked now could be the one a code comes back for.
if pi > 0 and not priority and num(KEYS[10]) > now then budget = 0 end
-- Its turn is past the budget, or comes only when (or after) it expires: not admitted.
if wait > budget or (wait > 0 and expiry > 0 and now + wait >= expiry) then
  local back = wait
  if wait > budget then
    -- Parked: a place on the stream's schedule, or on the provider's when the provider
    -- holds it back longest. A stream held back by its own rate leaves the provider's
    -- schedule alone: it would push back every other stream of the provider.
    -- A priority message queues behind priority places only (KEYS[10]); every plain place
    -- (KEYS[8]) comes after those.
    local sslot, pslot = 0, 0
    if si > 0 then sslot = place(KEYS[2], KEYS[7], si, stat) end
    if pi > 0 and ptat - now - tolerance > 0 then
      pslot = place(KEYS[10], KEYS[11], pi, ptat)
      if not priority then pslot = place(KEYS[8], KEYS[9], pi, pslot) end
    end
    local slot = math.max(sslot, pslot)
    if pslot > sslot then scope = 'provider' elseif sslot > pslot then scope = 'stream' end
    if expiry == 0 or slot < expiry then
      if si > 0 then store(KEYS[2], slot + cost * si); store(KEYS[7], si, slot + cost * si) end
      if pslot > 0 and pslot >= sslot then
        local wkey, ikey = KEYS[8], KEYS[9]
        if priority then
          wkey, ikey = KEYS[10], KEYS[11]
          -- The turn it takes is one the plain schedule counted on: push that back by it.
          local plain = num(KEYS[8])
          if plain > slot then store(KEYS[8], plain + cost * pi) end
        end
        store(wkey, slot + cost * pi); store(ikey, pi, slot + cost * pi)
      end
    end
    back = math.max(back, slot - now)
  end
  return {'wait', string.format('%.0f', wait), string.format('%.0f', back), scope}
end
-- Nothing held this message back: idle past its turn, the places promised went unused.
if si > 0 and math.max(stat, ptat) < now - tolerance then redis.call('DEL', KEYS[2], KEYS[7]) end
if pi > 0 and ptat < now - tolerance then
  redis.call('DEL', KEYS[8], KEYS[9], KEYS[10], KEYS[11])
end
local per_day, per_recipient = tonumber(ARGV[4]), tonumber(ARGV[5])
-- The UTC day on Redis's clock, one for every host: the caller named its own day (KEYS[4],
-- KEYS[6]) and the days either side (KEYS[12] to KEYS[15]); a host more than a day off
-- keeps its own.
local day_ids, day_count = KEYS[4], KEYS[6]
local shift = math.floor(now / 86400000000) - tonumber(ARGV[11])
if shift == -1 then day_ids, day_count = KEYS[12], KEYS[14] end
if shift == 1 then day_ids, day_count = KEYS[13], KEYS[15] end
if per_day > 0 and redis.call('SISMEMBER', day_ids, ARGV[6]) == 0 then
  -- day_count: the day's plain counter, as kept before ids were; read until it expires.
  local admitted = redis.call('SCARD', day_ids) + num(day_count)
  if admitted >= per_day then return {'reject', 'max_per_day', '0', ''} end
end
if per_recipient > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600000000)
  local seen = redis.call('ZSCORE', KEYS[5], ARGV[6])
  if not seen and redis.call('ZCARD', KEYS[5]) >= per_recipient then
    return {'reject', 'max_per_recipient_per_hour', '0', ''}
  end
  redis.call('ZADD', KEYS[5], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[5], 3600000)
end
if per_day > 0 then redis.call('SADD', day_ids, ARGV[6]); redis.call('EXPIRE', day_ids, 172800) end
-- Admitted for its turn, now + wait: both buckets are paid as of then.
local go = now + wait
if si > 0 then store(KEYS[1], math.max(stat, go) + cost * si) end
if pi > 0 then store(KEYS[3], math.max(ptat, go) + cost * pi) end
return {'admit', string.format('%.0f', wait), '0', scope}
"""


_EPOCH_DAY = date(1970, 1, 1)


def _scope(answer: str) -> Scope:
    return "provider" if answer == "provider" else "stream"


def _epoch_us(at: datetime | None) -> int:
    """Microseconds since the epoch, on the clock Redis's TIME keeps; 0 for none."""
    return int(at.timestamp() * 1_000_000) if at is not None else 0


class RedisAdmission:
    """The fleet-wide admission, one Lua call per decision."""

    PREFIX = "streams:limits:"

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_ADMIT_LUA)

    def admit(self, request: Request) -> Ticket:
        p = self.PREFIX
        day = f"{p}stream:{request.stream_id}:day:"
        before, after = request.day - timedelta(days=1), request.day + timedelta(days=1)
        keys = [
            f"{p}stream:{request.stream_id}:tat",
            f"{p}stream:{request.stream_id}:waiting",
            f"{p}provider:{request.provider}:tat",
            f"{day}{request.day.isoformat()}:ids",
            f"{p}stream:{request.stream_id}:recipient:{request.recipient}",
            f"{day}{request.day.isoformat()}",
            f"{p}stream:{request.stream_id}:waiting:interval",
            f"{p}provider:{request.provider}:waiting",
            f"{p}provider:{request.provider}:waiting:interval",
            f"{p}provider:{request.provider}:waiting:priority",
            f"{p}provider:{request.provider}:waiting:priority:interval",
            f"{day}{before.isoformat()}:ids",
            f"{day}{after.isoformat()}:ids",
            f"{day}{before.isoformat()}",
            f"{day}{after.isoformat()}",
        ]
        limits = request.limits
        args = [
            interval_us(limits.per_second),
            interval_us(limits.provider_per_second),
            max(request.cost, 1),
            limits.per_day or 0,
            limits.per_recipient_per_hour or 0,
            request.message_id,
            TOLERANCE_US,
            int(request.inline_budget * 1_000_000),
            _epoch_us(request.expires_at),
            1 if request.priority else 0,
            (request.day - _EPOCH_DAY).days,
        ]
        verdict, first, second, scope = (
            part.decode() if isinstance(part, bytes) else str(part)
            for part in self._script(keys=keys, args=args)
        )
        if verdict == "reject":
            return Ticket("reject", reason=first)
        if verdict == "wait":
            return Ticket("wait", int(first) / 1e6, int(second) / 1e6, scope=_scope(scope))
        return Ticket("admit", int(first) / 1e6, scope=_scope(scope))

    def release(self, release: Release) -> None:
        p = f"{self.PREFIX}stream:{release.stream_id}"
        pipe = self._client.pipeline(transaction=False)
        for day in release.days:
            pipe.srem(f"{p}:day:{day.isoformat()}:ids", release.message_id)
        pipe.zrem(f"{p}:recipient:{release.recipient}", release.message_id)
        pipe.execute()


class LocalAdmission:
    """The same rules in one process, for ``streams dev`` (no Redis)."""

    def __init__(self, clock_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._clock_us = clock_us
        self._values: dict[str, float] = {}
        self._windows: dict[str, dict[str, int]] = {}
        self._days: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def admit(self, request: Request) -> Ticket:
        with self._lock:
            now = self._clock_us()
            limits = request.limits
            si, pi = interval_us(limits.per_second), interval_us(limits.provider_per_second)
            cost = max(request.cost, 1)
            stream_key, provider_key = f"s:{request.stream_id}", f"p:{request.provider}"
            waiting_key, counted_in_key = f"w:{request.stream_id}", f"wi:{request.stream_id}"
            provider_waiting_key = f"pw:{request.provider}"
            provider_counted_in_key = f"pwi:{request.provider}"
            priority_key = f"pp:{request.provider}"
            priority_counted_in_key = f"ppi:{request.provider}"
            stat = self._values.get(stream_key, 0) if si else 0
            ptat = self._values.get(provider_key, 0) if pi else 0
            stream_wait = stat - now - TOLERANCE_US if si else 0
            wait = max(stream_wait, ptat - now - TOLERANCE_US if pi else 0, 0)
            scope: Scope = "provider" if wait > max(stream_wait, 0) else "stream"
            budget, expiry = int(request.inline_budget * 1_000_000), _epoch_us(request.expires_at)
            if pi and not request.priority and self._values.get(priority_key, 0) > now:
                budget = 0  # codes wait for places: no turn booked ahead of them
            if wait > budget or (wait > 0 and expiry and now + wait >= expiry):
                back = wait
                if wait > budget:
                    stream_slot = provider_slot = 0.0
                    if si:
                        stream_slot = self._parking_slot(
                            waiting_key, counted_in_key, max(stat, now), si
                        )
                    if pi and ptat - now - TOLERANCE_US > 0:
                        provider_slot = self._parking_slot(
                            priority_key, priority_counted_in_key, max(ptat, now), pi
                        )
                        if not request.priority:
                            provider_slot = self._parking_slot(
                                provider_waiting_key, provider_counted_in_key, provider_slot, pi
                            )
                    slot = max(stream_slot, provider_slot)
                    if provider_slot != stream_slot:
                        scope = "provider" if provider_slot > stream_slot else "stream"
                    if not expiry or slot < expiry:
                        if si:
                            self._values[waiting_key] = slot + cost * si
                            self._values[counted_in_key] = si
                        if provider_slot and provider_slot >= stream_slot:
                            if request.priority:
                                self._values[priority_key] = slot + cost * pi
                                self._values[priority_counted_in_key] = pi
                                plain = self._values.get(provider_waiting_key, 0)
                                if plain > slot:
                                    self._values[provider_waiting_key] = plain + cost * pi
                            else:
                                self._values[provider_waiting_key] = slot + cost * pi
                                self._values[provider_counted_in_key] = pi
                    back = max(back, slot - now)
                return Ticket("wait", wait / 1e6, back / 1e6, scope=scope)
            if si and max(stat, ptat) < now - TOLERANCE_US:
                self._values.pop(waiting_key, None)
                self._values.pop(counted_in_key, None)
            if pi and ptat < now - TOLERANCE_US:
                for key in (
                    provider_waiting_key,
                    provider_counted_in_key,
                    priority_key,
                    priority_counted_in_key,
                ):
                    self._values.pop(key, None)
            day = self._days.setdefault(f"d:{request.stream_id}:{request.day.isoformat()}", set())
            if limits.per_day and request.message_id not in day and len(day) >= limits.per_day:
                return Ticket("reject", reason="max_per_day")
            if limits.per_recipient_per_hour:
                window = self._windows.setdefault(f"r:{request.stream_id}:{request.recipient}", {})
                for member in [m for m, at in window.items() if at <= now - _HOUR_US]:
                    del window[member]
                if (
                    request.message_id not in window
                    and len(window) >= limits.per_recipient_per_hour
                ):
                    return Ticket("reject", reason="max_per_recipient_per_hour")
                window[request.message_id] = now
            if limits.per_day:
                day.add(request.message_id)
            go = now + wait
            if si:
                self._values[stream_key] = max(stat, go) + cost * si
            if pi:
                self._values[provider_key] = max(ptat, go) + cost * pi
            return Ticket("admit", wait / 1e6, scope=scope)

    def release(self, release: Release) -> None:
        with self._lock:
            for day in release.days:
                key = f"d:{release.stream_id}:{day.isoformat()}"
                self._days.get(key, set()).discard(release.message_id)
            window = self._windows.get(f"r:{release.stream_id}:{release.recipient}", {})
            window.pop(release.message_id, None)

    def _parking_slot(self, waiting_key: str, counted_in_key: str, base: float, si: int) -> float:
        """The next place on the schedule, what is parked ahead counted at interval ``si``."""
        ahead, counted_in = self._values.get(waiting_key, 0), self._values.get(counted_in_key, 0)
        if ahead > base and counted_in and counted_in != si:
            ahead = base + math.floor((ahead - base) * si / counted_in)
        return max(ahead, base)
