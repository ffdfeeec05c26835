"""When a marketing message may go out: the stream's sending window in the recipient's
local time. Pure functions; the clock and the zones are passed in.

The recipient's zone comes from the number (``phonenumbers.timezone``) unless the stream
sets one. A number that spans several zones (+1 without an area code known, +7, +61) is
sent only when the window is open in all of them; when no such moment comes within a day
(the zones are too far apart for the window), the first zone decides: the message goes
whenever the window is open there, so a message is never held forever, nor for days
because a clock change some days off opens a common moment then.

The window opens when the local clock first reaches its start and closes when it first
reaches its end: at the first of two readings when the clock falls back, and at the jump
when spring forward skips the time. Open or closed is decided on those moments, so a
repeated hour does not reopen a window that closed in its first reading, nor close one
that opened there, and every opening returned is a moment the window is open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

_SEARCH_DAYS = 3


@dataclass(frozen=True, slots=True)
class SendingWindow:
    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> SendingWindow:
        return cls(time.fromisoformat(start), time.fromisoformat(end))

    def contains(self, local: time) -> bool:
        """Start inclusive, end exclusive; a window may wrap past midnight (22:00–06:00)."""
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@lru_cache(maxsize=4096)
def zones_for_number(e164: str) -> tuple[str, ...]:
    """IANA zones of a number, as libphonenumber knows them (empty when unknown)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(
        zone for zone in phone_timezones.time_zones_for_number(number) if _known_zone(zone)
    )


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


#: How far ahead a moment open in all of a number's zones is looked for: a day, and the hour a
#: clock change can add to it. A common moment further off than that is not a daily one.
_COMMON_HORIZON = timedelta(hours=25)
#: A window lasts at most a day: when the zone's offset has not changed in this long, the
#: local clock ran evenly since the window last opened or closed, and its reading decides.
_EVEN_CLOCK = timedelta(hours=26)


def next_send_time(now: datetime, window: SendingWindow, zones: Sequence[str]) -> datetime:
    """``now`` if the window is open for the recipient, else the UTC moment it opens.

    ``now`` must be timezone-aware. No zones (unknown number) means UTC.
    """
    names = list(zones) or ["UTC"]
    if _open_everywhere(now, window, names):
        return now
    openings = sorted(
        opening
        for name in names
        for opening in _openings(now, window, _zone(name))
        if opening <= now + _COMMON_HORIZON
    )
    for opening in openings:
        if _open_everywhere(opening, window, names):
            return opening
    first = _zone(names[0])
    if is_open(now, window, first):
        return now
    return min(_openings(now, window, first))


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``, kept. zoneinfo's own cache holds only the last 8 zones strongly: a
    number of 42 zones (+1 800) read its zone files from disk again on every look-up, and
    that was most of the 28 ms a marketing send to it cost."""
    return ZoneInfo(name)


def _open_everywhere(moment: datetime, window: SendingWindow, zones: Sequence[str]) -> bool:
    return all(is_open(moment, window, _zone(name)) for name in zones)


def is_open(moment: datetime, window: SendingWindow, zone: ZoneInfo) -> bool:
    """Whether the window is open in ``zone`` at ``moment``: it opened (the clock reached
    its start) since it last closed (the clock reached its end)."""
    if window.start == window.end:
        return True
    local = moment.astimezone(zone)
    if (moment - _EVEN_CLOCK).astimezone(zone).utcoffset() == local.utcoffset():
        return window.contains(local.time())
    # A clock change in the last day: the wall-clock reading may repeat or skip. Find the
    # last opening and the last closing at or before ``moment`` instead.
    # Start and end both skipped by one jump are reached at the same moment: the clock
    # passed the earlier reading first, so the later wall time is the one in force.
    days = [local.date() + timedelta(days=offset) for offset in (-2, -1, 0, 1)]

    def last(at: time) -> tuple[datetime, datetime]:
        return max(
            (reached, wall)
            for day in days
            if (reached := _clock_reaches(wall := datetime.combine(day, at), zone)) <= moment
        )

    return last(window.start) > last(window.end)


def _openings(now: datetime, window: SendingWindow, zone: ZoneInfo) -> list[datetime]:
    """The moments after ``now`` at which the window opens in ``zone``, one a day at most.

    A day on which the window never opens (it lies wholly inside a spring-forward gap) has
    none, so the window is open at each moment returned.
    """
    local_today = now.astimezone(zone).date()
    found = []
    for offset in range(_SEARCH_DAYS):
        opening = _clock_reaches(
            datetime.combine(local_today + timedelta(days=offset), window.start), zone
        )
        if opening > now and is_open(opening, window, zone):
            found.append(opening.astimezone(now.tzinfo))
    return found


def _clock_reaches(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the local clock in ``zone`` shows ``wall`` (naive) or later.

    A time that occurs twice (fall back) gives its first occurrence. A time that never occurs
    (spring forward) gives the transition, where the clock jumps past it: ``combine`` alone
    would give the time read with the old offset, as late as the gap is long.
    """
    first = wall.replace(tzinfo=zone)  # fold=0: the earlier offset, the first occurrence
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In the gap the clock is before ``wall`` at the fold=1 reading and past it at fold=0:
    # the transition lies between, on a whole second.
    before = math.floor(wall.replace(tzinfo=zone, fold=1).timestamp())
    after = math.ceil(first.timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, zone)
