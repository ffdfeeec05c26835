from datetime import UTC, datetime
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


def test_window_wrapping_midnight():
    night = SendingWindow.parse("22:00", "06:00")
    assert night.contains(datetime(2026, 1, 1, 23, 0).time())
    assert night.contains(datetime(2026, 1, 1, 5, 59).time())
    assert not night.contains(datetime(2026, 1, 1, 6, 0).time())
    assert next_send_time(utc(2026, 1, 15, 12, 0), night, ["UTC"]) == utc(2026, 1, 15, 22, 0)


def test_unknown_number_uses_utc():
    assert zones_for_number("not a number") == ()
    assert next_send_time(utc(2026, 1, 15, 21, 0), DAYTIME, ()) == utc(2026, 1, 16, 9, 0)
