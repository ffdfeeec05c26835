"""The OTP send and verify API: the code lifecycle (valid once, wrong-code countdown, expiry,
cooldown, supersede), the three code modes, and every error naming its field while changing
nothing (invariant 7)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from core.otp_codes import UNAMBIGUOUS_ALPHANUMERIC
from schemas.tables import Message, OtpCode
from tests.conftest import auth
from tests.otp_codes import OTHER_PHONE, PHONE, code_of, send_code, sent_text, together, verify

STREAMS = "/api/v1/streams"


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def counts(runtime) -> tuple[int, int]:
    """(messages, otp code rows)."""
    with runtime.session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Message)) or 0,
            session.scalar(select(func.count()).select_from(OtpCode)) or 0,
        )


def code_row(runtime) -> tuple:
    with runtime.session_factory() as session:
        return tuple(
            session.execute(
                select(OtpCode.code_digest, OtpCode.attempts_left, OtpCode.sent_at)
            ).one()
        )


# ---------------------------------------------------------------- send


def test_send_answers_202_and_puts_the_message_on_the_otp_queue(client, runtime, otp_stream, clock):
    stream = otp_stream()

    response = send_code(client, stream)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body.keys() == {"message_id", "expires_at"}
    assert datetime.fromisoformat(body["expires_at"]) == clock.now + timedelta(seconds=300)
    assert runtime.redis.llen("dramatiq:otp") == 1
    assert runtime.redis.llen("dramatiq:transactional") == 0
    text, masked = sent_text(runtime, body["message_id"])
    assert re.fullmatch(r"Your code is [0-9]{5}", text)
    assert masked == "Your code is *****"
    assert code_of(runtime, body["message_id"]) not in response.text
    shown = client.get(f"/v1/messages/{body['message_id']}", headers=auth(stream["token"])).json()
    assert shown["message_content"] == "Your code is *****"
    assert (shown["status"], shown["segments"], shown["encoding"]) == ("queued", 1, "GSM-7")


def test_generated_codes_follow_length_and_alphabet(client, runtime, otp_stream):
    unlimited = {"resend_cooldown_seconds": 0, "codes_per_recipient_per_hour": 1000}
    digits = otp_stream(name="Digits", code_length=8, **unlimited)
    letters = otp_stream(name="Letters", code_length=10, alphabet="alphanumeric", **unlimited)
    seen: set[str] = set()
    for _ in range(10):
        code = code_of(runtime, send_code(client, digits).json()["message_id"])
        assert re.fullmatch(r"[0-9]{8}", code)
        code = code_of(runtime, send_code(client, letters, phone=OTHER_PHONE).json()["message_id"])
        assert len(code) == 10 and set(code) <= set(UNAMBIGUOUS_ALPHANUMERIC)
        seen.add(code)
    assert len(seen) == 10, "every send makes a new code"
    assert not set("0O1IL") & set("".join(seen))


# ---------------------------------------------------------------- verify


def test_right_code_is_valid_once_and_then_used(client, runtime, otp_stream, clock):
    stream = otp_stream()
    code = code_of(runtime, send_code(client, stream).json()["message_id"])

    first = verify(client, stream, code)
    again = verify(client, stream, code)

    assert first.status_code == 200
    assert first.json() == {"valid": True, "attempts_left": 0}
    assert again.json() == {"valid": False, "attempts_left": 0, "reason": "used"}


def test_verify_accepts_the_number_in_any_written_form(client, runtime, otp_stream, clock):
    stream = otp_stream()
    code = code_of(runtime, send_code(client, stream).json()["message_id"])

    assert verify(client, stream, f" {code} ", phone="+972 52-426-5292").json()["valid"] is True


def test_wrong_codes_count_down_and_then_the_code_is_dead(client, runtime, otp_stream, clock):
    stream = otp_stream(max_failures=3)
    code = code_of(runtime, send_code(client, stream).json()["message_id"])
    wrong = "00000" if code != "00000" else "11111"

    answers = [verify(client, stream, wrong).json() for _ in range(3)]

    assert answers == [
        {"valid": False, "attempts_left": 2, "reason": "wrong_code"},
        {"valid": False, "attempts_left": 1, "reason": "wrong_code"},
        {"valid": False, "attempts_left": 0, "reason": "wrong_code"},
    ]
    dead = verify(client, stream, code).json()
    assert dead == {"valid": False, "attempts_left": 0, "reason": "too_many_failures"}


def test_a_code_expires_at_its_ttl(client, runtime, otp_stream, clock):
    stream = otp_stream(ttl_seconds=60)
    first = code_of(runtime, send_code(client, stream).json()["message_id"])
    second = code_of(runtime, send_code(client, stream, phone=OTHER_PHONE).json()["message_id"])

    clock.advance(59)
    assert verify(client, stream, first).json()["valid"] is True
    clock.advance(1)
    expired = verify(client, stream, second, phone=OTHER_PHONE)

    assert expired.json() == {"valid": False, "attempts_left": 0, "reason": "expired"}


def test_an_expired_code_uses_no_attempt_on_a_wrong_guess(client, runtime, otp_stream, clock):
    stream = otp_stream(ttl_seconds=60)
    send_code(client, stream)
    before = code_row(runtime)
    clock.advance(61)

    assert verify(client, stream, "99999").json()["reason"] == "expired"
    assert code_row(runtime) == before


def test_verify_without_a_sent_code_is_no_code(client, runtime, otp_stream):
    stream = otp_stream()
    answer = verify(client, stream, "12345")
    assert answer.status_code == 200
    assert answer.json() == {"valid": False, "attempts_left": 0, "reason": "no_code"}
    assert counts(runtime) == (0, 0)


def test_a_code_verifies_only_on_its_own_stream(client, runtime, otp_stream, clock):
    one, two = otp_stream(name="One"), otp_stream(name="Two")
    code = code_of(runtime, send_code(client, one).json()["message_id"])

    assert verify(client, two, code).json()["reason"] == "no_code"
    assert verify(client, one, code, phone=OTHER_PHONE).json()["reason"] == "no_code"
    assert verify(client, one, code).json()["valid"] is True


# ---------------------------------------------------------------- cooldown and supersede


def test_resend_inside_the_cooldown_is_429_with_retry_after(client, runtime, otp_stream, clock):
    stream = otp_stream(resend_cooldown_seconds=30)
    code = code_of(runtime, send_code(client, stream).json()["message_id"])
    before = (counts(runtime), code_row(runtime), runtime.redis.llen("dramatiq:otp"))

    clock.advance(10.2)
    refused = send_code(client, stream)

    error = error_of(refused, 429)
    assert error["code"] == "resend_cooldown"
    assert error["field"] == "recipient_phone"
    assert refused.headers["Retry-After"] == "20"  # 19.8 s, rounded up
    assert (counts(runtime), code_row(runtime), runtime.redis.llen("dramatiq:otp")) == before
    clock.advance(19.8)
    assert send_code(client, stream).status_code == 202
    assert verify(client, stream, code).json()["reason"] == "wrong_code", "superseded"


def test_a_send_repeated_with_its_internal_id_returns_the_first_and_sends_nothing(
    client, runtime, otp_stream, clock
):
    """A client that timed out waiting for the answer sends again. With the same
    ``internal_id`` it gets the first send back (``duplicate``), not a 429 that leaves it
    guessing, and not a second code that would void the first one the user may be typing.
    Nothing is counted against the cooldown or the per-number cap again."""
    stream = otp_stream(resend_cooldown_seconds=30, codes_per_recipient_per_hour=1)
    first = send_code(client, stream, internal_id="login-7")
    assert first.status_code == 202, first.text
    assert first.json()["internal_id"] == "login-7" and "duplicate" not in first.json()
    code = code_of(runtime, first.json()["message_id"])
    before = (counts(runtime), code_row(runtime), runtime.redis.llen("dramatiq:otp"))

    clock.advance(5)
    again = send_code(client, stream, internal_id="login-7")

    assert again.status_code == 202, again.text
    assert again.json() == {**first.json(), "duplicate": True}
    assert (counts(runtime), code_row(runtime), runtime.redis.llen("dramatiq:otp")) == before
    assert verify(client, stream, code).json()["valid"] is True, "the first code still holds"
    other = send_code(client, stream, internal_id="login-8")  # a new id is a new send:
    assert error_of(other, 429)["code"] == "recipient_limit", "counted against the cap"


@pytest.mark.parametrize(
    ("rules", "fields", "field"),
    [
        ({"code_mode": "customer_code", "code_length": 6}, {}, "code"),
        ({}, {"recipient_phone": "not a phone"}, "recipient_phone"),
    ],
)
def test_a_repeat_with_a_bad_body_is_refused_like_any_send(
    client, runtime, otp_stream, rules, fields, field
):
    """A repeat is checked like any send before its internal_id is looked up, as on
    /v1/messages: a bad body gets the 422 naming its field, not the first send back."""
    stream = otp_stream(**rules)
    good = {"code": "482913"} if "code_mode" in rules else {}
    assert send_code(client, stream, internal_id="login-1", **good).status_code == 202

    again = send_code(client, stream, internal_id="login-1", **fields)

    assert error_of(again, 422)["field"] == field


def test_invariant_4_an_otp_internal_id_names_a_send_of_its_own_stream_only(
    client, runtime, otp_stream, other_account_key
):
    """Another account's stream (or another stream of the same account) with the same
    internal_id makes its own send: a repeat is looked up by stream, never across them."""
    mine = otp_stream()
    first = send_code(client, mine, internal_id="login-1").json()
    sibling = otp_stream(name="Other codes")
    theirs = otp_stream(key=other_account_key, name="Their codes")

    for stream in (sibling, theirs):
        answer = send_code(client, stream, internal_id="login-1")
        assert answer.status_code == 202, answer.text
        assert "duplicate" not in answer.json()
        assert answer.json()["message_id"] != first["message_id"]
    assert counts(runtime)[0] == 3


def test_an_otp_internal_id_taken_by_a_message_that_is_no_code_is_409(client, runtime, otp_stream):
    stream = otp_stream()
    sent = client.post(
        "/v1/messages",
        json={
            "messages": [
                {"internal_id": "m-1", "recipient_phone": PHONE, "message_content": "Welcome"}
            ]
        },
        headers=auth(stream["token"]),
    )
    assert sent.status_code == 202, sent.text
    before = counts(runtime)

    error = error_of(send_code(client, stream, internal_id="m-1"), 409)

    assert (error["code"], error["field"]) == ("internal_id_taken", "internal_id")
    assert counts(runtime) == before


def test_cooldown_is_per_number(client, runtime, otp_stream, clock):
    stream = otp_stream()
    assert send_code(client, stream).status_code == 202
    assert send_code(client, stream, phone=OTHER_PHONE).status_code == 202


def test_a_used_code_ends_the_cooldown(client, runtime, otp_stream, clock):
    """Logging in again right after a successful login is not a resend."""
    stream = otp_stream(resend_cooldown_seconds=60)
    code = code_of(runtime, send_code(client, stream).json()["message_id"])
    assert verify(client, stream, code).json()["valid"] is True

    again = send_code(client, stream)

    assert again.status_code == 202
    assert verify(client, stream, code_of(runtime, again.json()["message_id"])).json()["valid"]


def test_a_new_send_supersedes_the_previous_code(client, runtime, otp_stream, clock):
    stream = otp_stream(resend_cooldown_seconds=30, max_failures=3)
    old = code_of(runtime, send_code(client, stream).json()["message_id"])
    clock.advance(30)
    new_message = send_code(client, stream).json()["message_id"]
    new = code_of(runtime, new_message)
    if new == old:  # one chance in 100,000: the supersede would be invisible
        pytest.skip("the generator drew the same code twice")

    stale = verify(client, stream, old).json()
    fresh = verify(client, stream, new).json()

    assert stale == {"valid": False, "attempts_left": 2, "reason": "wrong_code"}
    assert fresh == {"valid": True, "attempts_left": 0}
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(OtpCode)) == 1
        assert str(session.scalar(select(OtpCode.message_id))) == new_message


def test_a_new_send_restores_the_attempts_and_the_ttl(client, runtime, otp_stream, clock):
    stream = otp_stream(ttl_seconds=60, resend_cooldown_seconds=0, max_failures=2)
    send_code(client, stream)
    verify(client, stream, "00000")
    verify(client, stream, "00000")
    clock.advance(120)

    code = code_of(runtime, send_code(client, stream).json()["message_id"])

    assert verify(client, stream, code).json() == {"valid": True, "attempts_left": 0}


# ---------------------------------------------------------------- code modes


def test_customer_code_mode_sends_the_clients_code(client, runtime, otp_stream, clock):
    stream = otp_stream(code_mode="customer_code", code_length=6)

    sent = send_code(client, stream, code="482913")

    assert sent.status_code == 202, sent.text
    assert sent_text(runtime, sent.json()["message_id"]) == (
        "Your code is 482913",
        "Your code is ******",
    )
    assert verify(client, stream, "482913").json()["valid"] is True


def test_alphanumeric_client_codes_verify_in_any_case(client, runtime, otp_stream, clock):
    stream = otp_stream(code_mode="customer_code", code_length=6, alphabet="alphanumeric")
    sent = send_code(client, stream, code="ab12Cd")
    assert sent_text(runtime, sent.json()["message_id"])[0] == "Your code is AB12CD"
    assert verify(client, stream, "aB12cD").json()["valid"] is True


@pytest.mark.parametrize(
    ("rules", "fields", "code", "field"),
    [
        ({"code_mode": "customer_code"}, {}, "missing_code", "code"),
        ({"code_mode": "customer_code"}, {"code": "1234"}, "invalid_code", "code"),
        ({"code_mode": "customer_code"}, {"code": "123456"}, "invalid_code", "code"),
        ({"code_mode": "customer_code"}, {"code": "12a45"}, "invalid_code", "code"),
        ({"code_mode": "customer_code"}, {"code": "１２３４５"}, "invalid_code", "code"),
        (
            {"code_mode": "customer_code", "alphabet": "alphanumeric"},
            {"code": "ab-12"},
            "invalid_code",
            "code",
        ),
        ({"code_mode": "generate"}, {"code": "12345"}, "code_not_allowed", "code"),
        (
            {"code_mode": "generate"},
            {"message_content": "Code 12345"},
            "invalid_field",
            "message_content",
        ),
        ({"code_mode": "full_text"}, {"message_content": "Code 12345"}, "missing_code", "code"),
        ({"code_mode": "full_text"}, {"code": "12345"}, "missing_content", "message_content"),
        (
            {"code_mode": "full_text"},
            {"code": "12345", "message_content": "Code 54321"},
            "code_not_in_text",
            "message_content",
        ),
        (
            {"code_mode": "full_text"},
            {"code": "12345", "message_content": "Code 12345", "variables": {"a": "b"}},
            "invalid_field",
            "variables",
        ),
        ({"template": "{app}: {code}"}, {}, "missing_variable", "variables.app"),
        ({}, {"variables": {"code": "11111"}}, "reserved_variable", "variables.code"),
        ({}, {"variables": {"app": True}}, "invalid_variable", "variables.app"),
        ({}, {"variables": {"app": ["x"]}}, "invalid_variable", "variables.app"),
        ({}, {"variables": {"app": "x" * 501}}, "invalid_variable", "variables.app"),
        ({}, {"variables": {"app": "\udfff"}}, "invalid_variable", "variables.app"),
        (
            {"template": "{a}{b}{c}{d} {code}"},
            {"variables": {name: "x" * 500 for name in "abcd"}},
            "content_too_long",
            "variables",
        ),
        ({}, {"recipient_phone": "0524265292"}, "invalid_phone", "recipient_phone"),
        ({}, {"recipient_phone": "+1555"}, "invalid_phone", "recipient_phone"),
        ({}, {"surprise": 1}, "invalid_field", "surprise"),
        ({}, {"code": ""}, "invalid_field", "code"),
        ({}, {"internal_id": ""}, "invalid_field", "internal_id"),
        ({}, {"internal_id": "x" * 129}, "invalid_field", "internal_id"),
    ],
)
def test_bad_sends_name_the_field_and_change_nothing(
    client, runtime, otp_stream, rules, fields, code, field
):
    stream = otp_stream(**rules)

    error = error_of(send_code(client, stream, **fields), 422)

    assert (error["code"], error["field"]) == (code, field)
    assert counts(runtime) == (0, 0)
    assert runtime.redis.llen("dramatiq:otp") == 0
    for value in fields.values():
        if isinstance(value, str) and value.isdigit():
            assert value not in error["message"], "an error body never repeats a code"


def test_full_text_mode_sends_the_clients_text_and_masks_the_code(
    client, runtime, otp_stream, clock
):
    stream = otp_stream(code_mode="full_text", code_length=6)
    text = "Acme: 739201 is your login code. Do not share it."

    sent = send_code(client, stream, code="739201", message_content=text)

    assert sent.status_code == 202, sent.text
    assert sent_text(runtime, sent.json()["message_id"]) == (
        text,
        "Acme: ****** is your login code. Do not share it.",
    )
    assert verify(client, stream, "739201").json()["valid"] is True


def test_variables_fill_the_template(client, runtime, otp_stream, clock):
    stream = otp_stream(
        template="{app}: your code is {code}. Valid {ttl_minutes} min.", ttl_seconds=90
    )

    sent = send_code(client, stream, variables={"app": "Acme", "unused": 7})

    assert sent.status_code == 202, sent.text
    text, masked = sent_text(runtime, sent.json()["message_id"])
    assert masked == "Acme: your code is *****. Valid 2 min."
    assert text.startswith("Acme: your code is ") and "*" not in text


def test_segments_are_counted_on_the_real_text(client, runtime, otp_stream, clock):
    stream = otp_stream(template="{greeting} {code}")
    sent = send_code(client, stream, variables={"greeting": "Привет, ваш код"})
    message_id = sent.json()["message_id"]
    shown = client.get(f"/v1/messages/{message_id}", headers=auth(stream["token"])).json()
    assert (shown["encoding"], shown["segments"]) == ("UCS-2", 1)


# ---------------------------------------------------------------- who may call


@pytest.mark.parametrize("path", ["/v1/otp/send", "/v1/otp/verify"])
def test_otp_routes_refuse_other_stream_types(client, runtime, make_stream, path):
    stream = make_stream(type="transactional")

    response = client.post(
        path, json={"recipient_phone": PHONE, "code": "12345"}, headers=auth(stream["token"])
    )

    assert error_of(response, 409)["code"] == "wrong_stream_type"
    assert counts(runtime) == (0, 0)


@pytest.mark.parametrize("path", ["/v1/otp/send", "/v1/otp/verify"])
def test_otp_routes_need_a_valid_token(client, runtime, otp_stream, account_key, path):
    otp_stream()
    for headers in ({}, auth("st_" + "A" * 43), auth(account_key)):
        response = client.post(path, json={"recipient_phone": PHONE, "code": "1"}, headers=headers)
        assert error_of(response, 401)["code"] == "invalid_token"


def test_otp_routes_keep_the_ip_allowlist(client_from, runtime, otp_stream, make_stream):
    stream = make_stream(type="otp", demo=True, allowed_ips=["198.51.100.0/24"], name="Locked")
    assert error_of(send_code(client_from("203.0.113.10"), stream), 403)["code"] == (
        "ip_not_allowed"
    )
    assert send_code(client_from("198.51.100.20"), stream).status_code == 202


def test_a_disabled_otp_stream_refuses_sends(client, runtime, otp_stream, account_key):
    stream = otp_stream()
    client.post(f"{STREAMS}/{stream['id']}/disable", headers=auth(account_key))
    assert error_of(send_code(client, stream), 403)["code"] == "stream_disabled"
    assert counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipient_phone": PHONE}, "code"),
        ({"code": "12345"}, "recipient_phone"),
        ({"recipient_phone": PHONE, "code": "1" * 33}, "code"),
        ({"recipient_phone": "nope", "code": "12345"}, "recipient_phone"),
    ],
)
def test_bad_verify_bodies_name_the_field_and_change_nothing(
    client, runtime, otp_stream, clock, body, field
):
    stream = otp_stream()
    send_code(client, stream)
    before = code_row(runtime)

    response = client.post("/v1/otp/verify", json=body, headers=auth(stream["token"]))

    assert error_of(response, 422)["field"] == field
    assert code_row(runtime) == before


# ---------------------------------------------------------------- settings


def test_otp_settings_have_defaults_for_every_rule(client, account_key, otp_stream):
    stream = otp_stream()
    settings = client.get(f"{STREAMS}/{stream['id']}/settings", headers=auth(account_key)).json()
    assert settings == {
        "code_mode": "generate",
        "code_length": 5,
        "alphabet": "digits",
        "ttl_seconds": 300,
        "max_failures": 3,
        "resend_cooldown_seconds": 30,
        "template": "Your code is {code}",
        "codes_per_recipient_per_hour": 5,
        "codes_per_recipient_scope": "account",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code_mode": "sms"}, "code_mode"),
        ({"code_length": 3}, "code_length"),
        ({"code_length": 11}, "code_length"),
        ({"alphabet": "hex"}, "alphabet"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"max_failures": 0}, "max_failures"),
        ({"resend_cooldown_seconds": -1}, "resend_cooldown_seconds"),
        ({"template": "Your code"}, "template"),
        ({"template": "Your code is {code"}, "template"),
        ({"template": "{code} }"}, "template"),
        ({"template": "{code} {user.name}"}, "template"),
        ({"codes_per_recipient_per_hour": 0}, "codes_per_recipient_per_hour"),
        ({"codes_per_recipient_scope": "planet"}, "codes_per_recipient_scope"),
    ],
)
def test_invalid_otp_settings_are_422_naming_the_field(
    client, account_key, otp_stream, body, field
):
    stream = otp_stream()
    url = f"{STREAMS}/{stream['id']}/settings"
    before = client.get(url, headers=auth(account_key)).json()

    error = error_of(client.put(url, json=body, headers=auth(account_key)), 422)

    assert error["field"] in (field, f"settings.{field}")
    assert client.get(url, headers=auth(account_key)).json() == before


def test_settings_changes_apply_to_the_next_send(client, runtime, account_key, otp_stream, clock):
    stream = otp_stream()
    client.put(
        f"{STREAMS}/{stream['id']}/settings",
        json={"code_length": 8, "template": "Acme code {code}"},
        headers=auth(account_key),
    )
    text, _ = sent_text(runtime, send_code(client, stream).json()["message_id"])
    assert re.fullmatch(r"Acme code [0-9]{8}", text)


# ---------------------------------------------------------------- streams dev


def test_the_otp_lifecycle_on_sqlite_without_redis(tmp_path):
    """``streams dev`` runs on SQLite with no Redis: the upsert, the conditional updates and
    the in-process cap work there too."""
    from fastapi.testclient import TestClient

    from core.accounts import create_account
    from core.migrate import upgrade
    from core.runtime import build_runtime
    from core.settings import Settings
    from dispatcher.app import create_app
    from dispatcher.recipient_caps import MemoryRecipientCap

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    upgrade(url)
    settings = Settings(database_url=url, redis_url=None, secret_key="dev-key", _env_file=None)
    runtime = build_runtime(settings)
    try:
        app = create_app(settings, runtime=runtime)
        assert isinstance(app.state.one_time_codes.cap, MemoryRecipientCap)
        key = create_account(runtime.session_factory, "Dev")[1]
        with TestClient(app) as dev:
            stream = dev.post(
                STREAMS,
                json={
                    "name": "Codes",
                    "type": "otp",
                    "demo": True,
                    "settings": {"codes_per_recipient_per_hour": 2, "ttl_seconds": 60},
                },
                headers=auth(key),
            ).json()
            stream["token"] = dev.get(f"{STREAMS}/{stream['id']}/token", headers=auth(key)).json()[
                "token"
            ]
            code = code_of(runtime, send_code(dev, stream).json()["message_id"])
            assert send_code(dev, stream).json()["error"]["code"] == "resend_cooldown"
            assert verify(dev, stream, "x").json()["attempts_left"] == 2
            assert verify(dev, stream, code).json() == {"valid": True, "attempts_left": 0}
            assert verify(dev, stream, code).json()["reason"] == "used"
            assert send_code(dev, stream).status_code == 202
            start = runtime.clock()
            runtime.clock = lambda: start + timedelta(seconds=61)
            assert verify(dev, stream, code).json()["reason"] == "expired"
            assert send_code(dev, stream).json()["error"]["code"] == "recipient_limit"

            # Racing repeats of one internal_id take turns here too (a lock of the process),
            # so none meets the first's place under a cap of one.
            one = dev.post(
                STREAMS,
                json={
                    "name": "One",
                    "type": "otp",
                    "demo": True,
                    "settings": {"codes_per_recipient_per_hour": 1},
                },
                headers=auth(key),
            ).json()
            one["token"] = dev.get(f"{STREAMS}/{one['id']}/token", headers=auth(key)).json()[
                "token"
            ]
            racers = together(
                8, lambda _: send_code(dev, one, phone=OTHER_PHONE, internal_id="r-1")
            )
            assert Counter(r.status_code for r in racers) == {202: 8}, [r.text for r in racers]
            assert len({r.json()["message_id"] for r in racers}) == 1
    finally:
        runtime.close()


def test_openapi_documents_the_otp_and_event_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/otp/send"]) == {"post"}
    assert set(paths["/v1/otp/verify"]) == {"post"}
    assert set(paths["/api/v1/streams/{stream_id}/events"]) == {"get", "post"}
    assert set(paths["/api/v1/streams/{stream_id}/events/{key}"]) == {"patch", "delete"}
