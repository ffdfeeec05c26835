"""The Lua admission in Redis gives the same answers as the rules' in-process version, and
its state is shared by every client (the fleet)."""

from datetime import date

import redis as redis_lib

from tests.conftest import REDIS_URL
from workers.admission import Limits, RedisAdmission, Request


def request(message_id: str, limits: Limits, stream: str = "s", cost: int = 1) -> Request:
    return Request(stream, "sandbox", "+1", message_id, cost, limits, date(2026, 1, 1))


def test_two_clients_share_one_limit(redis_client):
    first = RedisAdmission(redis_lib.Redis.from_url(REDIS_URL))
    second = RedisAdmission(redis_lib.Redis.from_url(REDIS_URL))
    limits = Limits(per_second=2)
    assert first.admit(request("a", limits)).verdict == "admit"
    ticket = second.admit(request("b", limits))
    assert ticket.verdict == "wait"
    assert 0.45 < ticket.wait_seconds <= 0.5
    assert ticket.come_back_after >= ticket.wait_seconds


def test_caps_and_rejections(redis_client):
    admission = RedisAdmission(redis_client)
    limits = Limits(per_recipient_per_hour=1, per_day=5)
    assert admission.admit(request("a", limits)).verdict == "admit"
    assert admission.admit(request("a", limits)).verdict == "admit"  # the same message again
    ticket = admission.admit(request("b", limits))
    assert (ticket.verdict, ticket.reason) == ("reject", "max_per_recipient_per_hour")


def test_keys_expire(redis_client):
    admission = RedisAdmission(redis_client)
    admission.admit(request("a", Limits(per_second=5, per_day=3, per_recipient_per_hour=3)))
    keys = redis_client.keys("streams:limits:*")
    assert keys
    assert all(redis_client.ttl(key) > 0 for key in keys), "no limit state lives forever"
