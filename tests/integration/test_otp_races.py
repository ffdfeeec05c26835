"""OTP under real concurrency against PostgreSQL: a code is valid exactly once however many
right answers race, wrong guesses never exceed ``max_failures``, and racing sends store one
code. Threads release together at a barrier so the transactions really overlap."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from dispatcher.auth import find_stream_access
from dispatcher.recipient_caps import KEY_PREFIX
from schemas.otp import OtpSendRequest, OtpVerifyRequest
from schemas.tables import Message, OtpCode
from tests.otp_codes import PHONE, code_of, send_code, together, verify

THREADS = 8


def test_concurrent_right_verifications_exactly_one_wins(app, runtime, otp_stream, clock):
    """Twenty rounds of eight simultaneous right answers, straight at the service (no HTTP
    in between to spread them out): each round has exactly one ``valid``."""
    stream = otp_stream(resend_cooldown_seconds=0, codes_per_recipient_per_hour=1000)
    access = find_stream_access(runtime, stream["token"], clock())
    codes = app.state.one_time_codes
    for _ in range(20):
        sent = codes.send(access, OtpSendRequest(recipient_phone=PHONE))
        code = code_of(runtime, sent.message_id)
        answers = together(
            THREADS,
            lambda _, code=code: codes.verify(
                access, OtpVerifyRequest(recipient_phone=PHONE, code=code)
            ),
        )
        assert [a.valid for a in answers].count(True) == 1, answers
        assert {a.reason for a in answers if not a.valid} == {"used"}


def test_concurrent_right_verifications_over_http(client, runtime, otp_stream, clock):
    stream = otp_stream()
    code = code_of(runtime, send_code(client, stream).json()["message_id"])

    answers = together(THREADS, lambda _: verify(client, stream, code).json())

    assert sorted(map(str, answers)) == sorted(
        [str({"valid": True, "attempts_left": 0})]
        + [str({"valid": False, "attempts_left": 0, "reason": "used"})] * (THREADS - 1)
    )


def test_concurrent_wrong_guesses_never_exceed_max_failures(client, runtime, otp_stream, clock):
    stream = otp_stream(max_failures=3)
    code = code_of(runtime, send_code(client, stream).json()["message_id"])
    wrong = "00000" if code != "00000" else "11111"

    answers = together(12, lambda _: verify(client, stream, wrong).json())

    reasons = Counter(a["reason"] for a in answers)
    assert reasons == {"wrong_code": 3, "too_many_failures": 9}
    assert sorted(a["attempts_left"] for a in answers if a["reason"] == "wrong_code") == [0, 1, 2]
    with runtime.session_factory() as session:
        assert session.scalar(select(OtpCode.attempts_left)) == 0
    assert verify(client, stream, code).json()["reason"] == "too_many_failures"


def test_right_and_wrong_answers_racing_leave_a_consistent_code(client, runtime, otp_stream, clock):
    stream = otp_stream(max_failures=3)
    code = code_of(runtime, send_code(client, stream).json()["message_id"])
    wrong = "00000" if code != "00000" else "11111"

    answers = together(THREADS, lambda i: verify(client, stream, code if i % 2 else wrong).json())

    assert [a["valid"] for a in answers].count(True) <= 1
    assert sum(a.get("reason") == "wrong_code" for a in answers) <= 3
    with runtime.session_factory() as session:
        left, used = session.execute(select(OtpCode.attempts_left, OtpCode.used_at)).one()
    assert left >= 0
    assert (used is not None) == any(a["valid"] for a in answers)


def test_concurrent_sends_to_one_number_store_one_code(client, runtime, otp_stream, clock):
    """One send wins; the others answer 429. Racers may be counted against the per-number
    cap for a moment, but every reservation of a send that did not happen is given back."""
    stream = otp_stream(resend_cooldown_seconds=30, codes_per_recipient_per_hour=5)
    access = find_stream_access(runtime, stream["token"], clock())

    responses = together(THREADS, lambda _: send_code(client, stream))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {202: 1, 429: THREADS - 1}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} <= {
        "resend_cooldown",
        "recipient_limit",
    }
    assert runtime.redis.zcard(f"{KEY_PREFIX}account:{access.account_id}:{PHONE}") == 1
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
        assert session.scalar(select(func.count()).select_from(OtpCode)) == 1
    assert runtime.redis.llen("dramatiq:otp") == 1
    winner = next(r for r in responses if r.status_code == 202).json()["message_id"]
    assert verify(client, stream, code_of(runtime, winner)).json()["valid"] is True


def test_concurrent_sends_with_one_internal_id_all_get_the_one_send(
    client, runtime, otp_stream, clock
):
    """A client's retries racing each other (the same ``internal_id``): all answer 202 with
    the one message that went out; the racers that lost count nothing against the cap."""
    stream = otp_stream(resend_cooldown_seconds=30, codes_per_recipient_per_hour=5)
    access = find_stream_access(runtime, stream["token"], clock())

    responses = together(THREADS, lambda _: send_code(client, stream, internal_id="login-1"))

    assert Counter(r.status_code for r in responses) == {202: THREADS}, [r.text for r in responses]
    assert len({r.json()["message_id"] for r in responses}) == 1
    assert [r.json().get("duplicate") for r in responses].count(None) == 1
    assert runtime.redis.zcard(f"{KEY_PREFIX}account:{access.account_id}:{PHONE}") == 1
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
        assert session.scalar(select(func.count()).select_from(OtpCode)) == 1
    assert runtime.redis.llen("dramatiq:otp") == 1
