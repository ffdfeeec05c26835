"""The per-recipient OTP send cap: at most N codes to one number in any rolling hour.

A sliding window (a log of send times per key), not fixed clock-hour buckets, so no burst of
2N can straddle an hour boundary. Two backends behind one small interface:

* ``RedisRecipientCap``: the window is a sorted set, checked and added to in one Lua script,
  so the cap holds across every ingress process. The script stamps and trims the window on
  Redis's own clock (``TIME``), never the calling host's: ingress hosts' clocks differ, and a
  host running ahead would otherwise trim the others' sends out of the hour.
* ``MemoryRecipientCap``: one process only, for ``streams dev`` (no Redis); its one clock is
  the caller's ``now``.

A reservation can be released when the send it was made for does not happen (a resend
refused by the cooldown), so refused sends do not use up the cap.

``reserve`` may also charge the stream's ingress quota (``dispatcher.ingress_quota``) in
the same step: the OTP send then asks Redis once for both (its latency is accept → provider
call). The quota is checked first; nothing is counted in either unless both allow.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis

from dispatcher.ingress_quota import QUOTA_LUA, MemoryIngressQuota, QuotaCharge, retry_after

WINDOW = timedelta(hours=1)
KEY_PREFIX = "streams:otp:cap:"


@dataclass(frozen=True, slots=True)
class CapDecision:
    allowed: bool
    #: The reservation to release if the send is called off (allowed only).
    member: str | None = None
    #: Whole seconds until a send would be allowed again (refused only).
    retry_after_seconds: int = 0
    #: Refused by the stream's ingress quota, not by the recipient's cap.
    by_quota: bool = False


def seconds_until_free(
    send_times: list[float], limit: int, now: float, window_seconds: float
) -> int:
    """How long until fewer than ``limit`` of ``send_times`` (epoch seconds, ascending) fall
    inside the window ending now; rounded up, at least 1. Pure."""
    if len(send_times) < limit:
        return 0
    # The window must lose (count - limit + 1) entries; the last of those leaves at its
    # time + window.
    leaving = send_times[len(send_times) - limit]
    return max(1, math.ceil(leaving + window_seconds - now))


class RecipientCap(Protocol):
    def reserve(
        self, key: str, limit: int, now: datetime, quota: QuotaCharge | None = None
    ) -> CapDecision:
        """Count one send for ``key`` if fewer than ``limit`` were counted in the hour before
        now, and ``quota`` (when given) fits the stream's ingress quota; count nothing
        otherwise (``by_quota`` says which refused). ``now`` is the caller's clock; a backend
        shared by several hosts decides on a clock of its own instead (one clock for all of
        them) and ignores it."""
        ...

    def release(self, key: str, member: str) -> None:
        """Forget a reservation made by ``reserve`` (best effort)."""
        ...


# KEYS[2], when given, is the stream's ingress quota (ARGV[4..6]: cost, interval, burst).
_RESERVE = (
    QUOTA_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key, window, limit, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local quota_tat = nil
if #KEYS > 1 then
  local wait
  local cost, interval, burst = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  wait, quota_tat = quota_wait(KEYS[2], now_us, cost, interval, burst)
  if wait > 0 then return {0, {}, string.format('%.6f', now), string.format('%.0f', wait)} end
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count >= limit then
  local times = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local scores = {}
  for i = 2, #times, 2 do scores[#scores + 1] = times[i] end
  return {0, scores, string.format('%.6f', now), '0'}
end
redis.call('ZADD', key, now, member)
redis.call('PEXPIRE', key, math.ceil(window * 1000))
if quota_tat then quota_pay(KEYS[2], now_us, quota_tat) end
return {1, {}, string.format('%.6f', now), '0'}
"""
)


class RedisRecipientCap:
    """Shared by every ingress process through Redis, on Redis's clock: the window's send
    times (epoch seconds, the scores), its trimming and the retry-after all come from one
    ``TIME`` inside the script, so hosts whose clocks differ still agree."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_RESERVE)

    def reserve(
        self, key: str, limit: int, now: datetime, quota: QuotaCharge | None = None
    ) -> CapDecision:
        """As ``RecipientCap.reserve``; ``now`` is not used (see the class)."""
        member = uuid.uuid4().hex
        window = WINDOW.total_seconds()
        keys, args = [KEY_PREFIX + key], [repr(window), limit, member]
        if quota is not None:
            keys.append(quota.key)
            args.extend(quota.args)
        allowed, scores, moment, quota_wait = self._script(keys=keys, args=args)
        if allowed:
            return CapDecision(True, member=member)
        if float(quota_wait) > 0:
            return CapDecision(
                False, retry_after_seconds=retry_after(float(quota_wait)), by_quota=True
            )
        times = sorted(float(s) for s in scores)
        return CapDecision(
            False, retry_after_seconds=seconds_until_free(times, limit, float(moment), window)
        )

    def release(self, key: str, member: str) -> None:
        self._client.zrem(KEY_PREFIX + key, member)


class MemoryRecipientCap:
    """One process's sliding windows (``streams dev`` only: not shared across processes)."""

    def __init__(self, quota: MemoryIngressQuota | None = None) -> None:
        self._windows: dict[str, list[tuple[float, str]]] = {}
        self._lock = threading.Lock()
        #: The process's ingress quota, which ``reserve`` charges with the cap.
        self._quota = quota if quota is not None else MemoryIngressQuota()

    def reserve(
        self, key: str, limit: int, now: datetime, quota: QuotaCharge | None = None
    ) -> CapDecision:
        moment = now.timestamp()
        window = WINDOW.total_seconds()
        with self._lock, self._quota.lock:
            quota_tat = 0
            if quota is not None:
                wait, quota_tat = self._quota.measure(quota)
                if wait > 0:
                    return CapDecision(False, retry_after_seconds=retry_after(wait), by_quota=True)
            entries = [e for e in self._windows.pop(key, []) if e[0] > moment - window]
            if len(entries) >= limit:
                self._windows[key] = entries
                times = sorted(t for t, _ in entries)
                return CapDecision(
                    False, retry_after_seconds=seconds_until_free(times, limit, moment, window)
                )
            member = uuid.uuid4().hex
            self._windows[key] = [*entries, (moment, member)]
            if quota is not None:
                self._quota.pay(quota, quota_tat)
            return CapDecision(True, member=member)

    def release(self, key: str, member: str) -> None:
        with self._lock:
            entries = self._windows.get(key)
            if entries is not None:
                self._windows[key] = [e for e in entries if e[1] != member]


def build_recipient_cap(
    client: redis.Redis | None, quota: MemoryIngressQuota | None = None
) -> RecipientCap:
    """Redis's cap when there is a client; else one process's, charging ``quota`` (the
    process's ingress quota, so that OTP sends and ``/v1/messages`` share it)."""
    return RedisRecipientCap(client) if client is not None else MemoryRecipientCap(quota)
