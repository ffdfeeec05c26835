from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.quiet_hours import SendingWindow, next_send_time, zones_for_number

DAYTIME = SendingWindow.parse("09:00", "20:00")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 1, 15, 10, 0), utc(2026, 1, 15, 10, 0)),  # 12:00 in Jerusalem: open
        (utc(2026, 1, 15, 7, 0), utc(2026, 1, 15, 7, 0)),  # 09:00 local exactly: open
        (utc(2026, 1, 15, 18, 0), utc(2026, 1, 16, 7, 0)),  # 20:00 local: closed until 09:00
        (utc(2026, 1, 15, 3, 30), utc(2026, 1, 15, 7, 0)),  # 05:30 local: later today
        (utc(2026, 7, 15, 3, 30), utc(2026, 7, 15, 6, 0)),  # summer time: UTC+3
    ],
)
def test_single_zone_number(now, expected):
    zones = zones_for_number("+972524265292")
    assert zones == ("Asia/Jerusalem",)
    assert next_send_time(now, DAYTIME, zones) == expected


def test_several_zones_wait_for_all_of_them():
    zones = ("America/New_York", "America/Los_Angeles")
    # 13:00 UTC = 08:00 New York (closed), 05:00 LA (closed); opens at 09:00 LA = 17:00 UTC.
    assert next_send_time(utc(2026, 1, 15, 13, 0), DAYTIME, zones) == utc(2026, 1, 15, 17, 0)


def test_zones_too_far_apart_fall_back_to_the_first():
    zones = ("Pacific/Kiritimati", "Pacific/Pago_Pago")  # UTC+14 and UTC-11: no common hour
    short = SendingWindow.parse("09:00", "10:00")
    result = next_send_time(utc(2026, 1, 15, 12, 0), short, zones)
    assert result.astimezone(ZoneInfo("Pacific/Kiritimati")).hour == 9


def test_the_first_zone_decides_when_the_zones_never_meet():
    """Asked again at the moment it gave, or later inside the first zone's window, the answer
    is that moment: the fallback does not move on to the next day, so it never holds forever."""
    zones = ("Pacific/Kiritimati", "Pacific/Pago_Pago")
    short = SendingWindow.parse("09:00", "10:00")
    first = next_send_time(utc(2026, 1, 15, 12, 0), short, zones)
    assert next_send_time(first, short, zones) == first
    later = first + timedelta(minutes=30)
    assert next_send_time(later, short, zones) == later


@pytest.mark.parametrize("number", ["+79161234567", "+18005550100"])
def test_a_multi_zone_number_is_sent_at_the_moment_it_was_held_until(number):
    zones = zones_for_number(number)
    assert len(zones) > 1
    office = SendingWindow.parse("10:00", "18:00")
    now = utc(2026, 1, 15, 14, 0)  # closed in the first zone (Almaty 19:00, Adak 04:00)
    held_until = next_send_time(now, office, zones)
    assert held_until > now
    assert next_send_time(held_until, office, zones) == held_until


NEW_YORK = ("America/New_York",)


def test_a_window_opening_in_the_spring_forward_gap_opens_when_the_clock_passes_it():
    """2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00 UTC; a window from 02:30 is open
    from that instant (``contains(03:00)``), not from 03:30 EDT."""
    window = SendingWindow.parse("02:30", "20:00")
    jump = utc(2026, 3, 8, 7, 0)
    assert next_send_time(utc(2026, 3, 8, 6, 0), window, NEW_YORK) == jump
    assert next_send_time(utc(2026, 3, 8, 6, 59, 59), window, NEW_YORK) == jump
    assert next_send_time(jump, window, NEW_YORK) == jump


def test_a_window_wholly_inside_the_spring_forward_gap_opens_the_next_day():
    window = SendingWindow.parse("02:15", "02:45")
    assert next_send_time(utc(2026, 3, 8, 6, 0), window, NEW_YORK) == utc(2026, 3, 9, 6, 15)


def test_a_window_opening_in_the_fall_back_overlap_opens_the_first_time():
    """2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00 UTC; 01:30 happens twice, and
    the window opens at the first, 01:30 EDT (05:30 UTC)."""
    window = SendingWindow.parse("01:30", "20:00")
    assert next_send_time(utc(2026, 11, 1, 4, 0), window, NEW_YORK) == utc(2026, 11, 1, 5, 30)


def test_a_window_that_opened_in_the_first_reading_of_the_repeated_hour_stays_open():
    """01:30-09:00: it opens at 01:30 EDT (05:30 UTC). At 01:10 EST (06:10 UTC), the second
    reading of 01:10, it has been open for 40 minutes: the message goes now, not tomorrow."""
    window = SendingWindow.parse("01:30", "09:00")
    assert next_send_time(utc(2026, 11, 1, 5, 10), window, NEW_YORK) == utc(2026, 11, 1, 5, 30)
    assert next_send_time(utc(2026, 11, 1, 6, 10), window, NEW_YORK) == utc(2026, 11, 1, 6, 10)


def test_a_window_that_closed_in_the_first_reading_of_the_repeated_hour_stays_closed():
    """20:00-01:30: it closes at 01:30 EDT (05:30 UTC). At 01:10 EST (06:10 UTC) it is
    closed, and opens again at 20:00 EST."""
    window = SendingWindow.parse("20:00", "01:30")
    assert next_send_time(utc(2026, 11, 1, 5, 10), window, NEW_YORK) == utc(2026, 11, 1, 5, 10)
    assert next_send_time(utc(2026, 11, 1, 6, 10), window, NEW_YORK) == utc(2026, 11, 2, 1, 0)


@pytest.mark.parametrize(
    ("window", "days"),
    [
        (SendingWindow.parse("09:00", "20:00"), (utc(2026, 3, 7), utc(2026, 10, 31))),
        (SendingWindow.parse("01:30", "09:00"), (utc(2026, 3, 7), utc(2026, 10, 31))),
        (SendingWindow.parse("20:00", "02:30"), (utc(2026, 3, 7), utc(2026, 10, 31))),
    ],
    ids=["daytime", "opens-in-the-changes", "closes-in-the-changes"],
)
def test_around_clock_changes_a_message_waits_exactly_until_the_window_opens(window, days):
    """Every half hour over three days around each of New York's clock changes: the moment
    returned is one at which the window is open, and it was closed every five minutes before
    it (a message is held no longer than needed, and never sent in quiet hours)."""
    from core.quiet_hours import is_open

    zone = ZoneInfo(NEW_YORK[0])
    for first in days:
        for step in range(3 * 48):
            now = first + timedelta(minutes=30 * step)
            sent = next_send_time(now, window, NEW_YORK)
            assert is_open(sent, window, zone), (now, sent)
            assert sent == now or not is_open(now, window, zone)
            probe = now + timedelta(minutes=5)
            while probe < sent:
                assert not is_open(probe, window, zone), (now, sent, probe)
                probe += timedelta(minutes=5)


def test_a_window_whose_end_and_start_one_jump_skips_is_open_after_it():
    """02:45-02:15 (open all day but half an hour): on 8 March the jump from 02:00 to 03:00
    passes its end and then its start at the same moment, so it is open from then on."""
    window = SendingWindow.parse("02:45", "02:15")
    noon = utc(2026, 3, 8, 16, 0)
    assert next_send_time(noon, window, NEW_YORK) == noon


def test_a_skipped_day_still_has_an_opening():
    """Apia skipped 30 December 2011 (UTC-10 to UTC+14): a window opening at midnight opens
    at the jump, and is found."""
    window = SendingWindow.parse("00:00", "08:00")
    now = utc(2011, 12, 29, 20, 0)
    opens = next_send_time(now, window, ("Pacific/Apia",))
    assert now <= opens <= now + timedelta(days=1)


def test_a_number_of_many_zones_is_not_held_for_a_common_moment_days_away():
    """+1 with no known area code spans 42 zones, from Pago Pago to Saipan: no moment has
    09:00-20:00 open in all of them, so the first zone (Adak) decides. Two days before the
    US clocks fall back a common half hour appears then; that must not hold the message
    for two days while Adak's window is open."""
    zones = zones_for_number("+18005550199")
    assert len(zones) > 40 and zones[0] == "America/Adak"
    for now in (utc(2026, 10, 28, 18, 2), utc(2026, 10, 30, 18, 2)):
        assert next_send_time(now, DAYTIME, zones) == now


def test_window_wrapping_midnight():
    night = SendingWindow.parse("22:00", "06:00")
    assert night.contains(datetime(2026, 1, 1, 23, 0).time())
    assert night.contains(datetime(2026, 1, 1, 5, 59).time())
    assert not night.contains(datetime(2026, 1, 1, 6, 0).time())
    assert next_send_time(utc(2026, 1, 15, 12, 0), night, ["UTC"]) == utc(2026, 1, 15, 22, 0)


def test_unknown_number_uses_utc():
    assert zones_for_number("not a number") == ()
    assert next_send_time(utc(2026, 1, 15, 21, 0), DAYTIME, ()) == utc(2026, 1, 16, 9, 0)


def test_a_number_of_many_zones_looks_each_zone_up_once(monkeypatch):
    """zoneinfo keeps only its last 8 zones: looked up anew for each check, the 42 zones of a
    +1 800 number were read from disk thousands of times per message (28 ms of the worker's
    CPU for each marketing send to it, against 3 ms with the zones kept)."""
    import core.quiet_hours as quiet_hours

    looked_up: list[str] = []

    def counting(name: str) -> ZoneInfo:
        looked_up.append(name)
        return ZoneInfo(name)

    zones = zones_for_number("+18005550199")
    monkeypatch.setattr(quiet_hours, "ZoneInfo", counting)
    quiet_hours._zone.cache_clear()
    for _ in range(3):
        next_send_time(utc(2026, 6, 10, 18, 2), DAYTIME, zones)
    assert sorted(looked_up) == sorted(zones)
    quiet_hours._zone.cache_clear()
