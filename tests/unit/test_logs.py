"""Invariant 8: secrets never reach logs. Tokens, OTP codes and provider credentials are
redacted in every log line, whether it comes through structlog or the standard library."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from core.logs import REDACTED, configure_logging, redact_secrets, scrub

#: These feed made-up secrets to loggers on purpose, to see them redacted.
pytestmark = pytest.mark.logs_secrets_on_purpose

TOKEN = "st_" + "T0kenRandomPart-_" * 3  # shaped like core.credentials.new_stream_token()
KEY = "sk_" + "AccountKeyRandom9" * 3
WEBHOOK = "whsec_" + "WebhookSecretXyz" * 3
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.signature"
OTP = "482913"
PASSWORD = "hunter2-provider"

NOISY_LOGGERS = ("uvicorn.access", "dramatiq.worker.WorkerThread")


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """structlog and stdlib logging configured for JSON on a captured stderr; both restored
    afterwards. Yields a function that returns the lines written so far, parsed.

    stderr is a StringIO of our own rather than capsys's, because pytest hands capsys a
    different stream during set-up than during the test, and ``configure_logging`` binds the
    stream it sees at set-up.
    """
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, [logging.getLogger(n).level for n in NOISY_LOGGERS])
    saved_structlog = structlog.get_config()
    configure_logging(level="DEBUG", fmt="json")
    read = 0

    def lines() -> list[dict[str, Any]]:
        nonlocal read
        text = stderr.getvalue()
        new, read = text[read:], len(text)
        return [json.loads(line) for line in new.splitlines() if line.strip()]

    yield lines
    structlog.configure(**saved_structlog)
    structlog.contextvars.clear_contextvars()
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in zip(NOISY_LOGGERS, saved[2], strict=True):
        logging.getLogger(name).setLevel(level)


def _one(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(lines) == 1, lines
    return lines[0]


# -- structlog route ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("token", TOKEN),
        ("access_token", "EAAGm0PX4ZCpsBAWhatsAppCloud"),
        ("previous_token", TOKEN),
        ("authorization", "Bearer " + BEARER),
        ("Authorization", "Basic dXNlcjpwYXNzd29yZA=="),
        ("api_key", "provider-api-key-123"),
        ("apikey", "provider-api-key-123"),
        ("account_key", KEY),
        ("password", PASSWORD),
        ("secret", WEBHOOK),
        ("webhook_secret", WEBHOOK),
        ("client_secret", "oauth-client-secret"),
        ("credentials", {"username": "acme", "password": PASSWORD}),
        ("code", OTP),
        ("otp", OTP),
        ("otp_code", OTP),
        ("pin", "1234"),
    ],
)
def test_secrets_never_reach_logs_sensitive_keys(json_log: Any, key: str, value: Any) -> None:
    structlog.get_logger().info("otp_sent", message_id="m-1", **{key: value})
    line = _one(json_log())
    assert line[key] == REDACTED
    assert line["message_id"] == "m-1"
    assert line["event"] == "otp_sent"
    assert line["level"] == "info"


def test_secrets_never_reach_logs_nested(json_log: Any) -> None:
    structlog.get_logger().warning(
        "callback_failed",
        request={
            "url": "https://example.com/cb",
            "headers": {"Authorization": "Bearer " + BEARER, "X-Auth-Token": TOKEN},
            "body": {"message_id": "m-2", "code": OTP},
        },
        providers=[{"name": "http", "api_key": "provider-api-key-123"}],
        attempts=(1, {"password": PASSWORD}),
    )
    raw = json.dumps(line := _one(json_log()))
    for secret in (BEARER, TOKEN, OTP, "provider-api-key-123", PASSWORD):
        assert secret not in raw
    assert line["request"] == {
        "url": "https://example.com/cb",
        "headers": {"Authorization": REDACTED, "X-Auth-Token": REDACTED},
        "body": {"message_id": "m-2", "code": REDACTED},
    }
    assert line["providers"] == [{"name": "http", "api_key": REDACTED}]
    assert line["attempts"] == [1, {"password": REDACTED}]


def test_secrets_never_reach_logs_free_text(json_log: Any) -> None:
    log = structlog.get_logger()
    log.info(f"token reset, new token {TOKEN}")
    log.info("request", detail=f"Authorization: Bearer {BEARER}, key={KEY}")
    log.info("webhook %s configured for %s", WEBHOOK, "m-3")
    lines = json_log()
    raw = "\n".join(json.dumps(line) for line in lines)
    for secret in (TOKEN, TOKEN[3:], KEY, KEY[3:], BEARER, WEBHOOK):
        assert secret not in raw
    assert [line["event"] for line in lines] == [
        f"token reset, new token {REDACTED}",
        "request",
        f"webhook {REDACTED} configured for m-3",
    ]
    assert lines[1]["detail"] == f"Authorization: Bearer {REDACTED}, key={REDACTED}"


def test_secrets_never_reach_logs_exception_traceback(json_log: Any) -> None:
    try:
        raise RuntimeError(f"provider refused {TOKEN}")
    except RuntimeError:
        structlog.get_logger().exception("send_failed", message_id="m-4")
    line = _one(json_log())
    assert TOKEN not in json.dumps(line)
    assert line["exception"].endswith(f"RuntimeError: provider refused {REDACTED}")
    assert line["message_id"] == "m-4"


def test_non_secret_fields_are_kept(json_log: Any) -> None:
    structlog.get_logger().error(
        "provider_error",
        message_id="m-5",
        error_code="30007",
        status_code=502,
        token_count=None,
        stream_id="s-1",
        client_ip="198.51.100.7",
        recipient="+972524265292",
        segments=2,
        queued=True,
    )
    line = _one(json_log())
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "event": "provider_error",
        "level": "error",
        "message_id": "m-5",
        "error_code": "30007",
        "status_code": 502,
        "token_count": REDACTED,  # over-redaction by name is the safe side
        "stream_id": "s-1",
        "client_ip": "198.51.100.7",
        "recipient": "+972524265292",
        "segments": 2,
        "queued": True,
    }


def test_bound_context_is_redacted(json_log: Any) -> None:
    structlog.contextvars.bind_contextvars(token=TOKEN, request_id="r-1")
    try:
        structlog.get_logger().bind(api_key="provider-api-key-123").info("bound")
    finally:
        structlog.contextvars.clear_contextvars()
    line = _one(json_log())
    assert (line["token"], line["api_key"], line["request_id"]) == (REDACTED, REDACTED, "r-1")


@pytest.mark.parametrize("header", ["X-Api-Key", "Api-Key", "x-api-key"])
def test_secrets_never_reach_logs_api_key_header(json_log: Any, header: str) -> None:
    structlog.get_logger().info("callback", headers={header: "provider-api-key-123"})
    assert _one(json_log())["headers"] == {header: REDACTED}


@pytest.mark.parametrize(
    "value",
    [ValueError(f"bad token {TOKEN}"), {TOKEN}, frozenset({TOKEN})],
    ids=["exception", "set", "frozenset"],
)
def test_secrets_never_reach_logs_non_string_values(json_log: Any, value: Any) -> None:
    structlog.get_logger().warning("callback_failed", error=value)
    assert TOKEN not in json.dumps(_one(json_log()))


def test_secrets_never_reach_logs_basic_auth_in_free_text(json_log: Any) -> None:
    structlog.get_logger().info("request", detail="Authorization: Basic dXNlcjpwYXNzd29yZA==")
    assert _one(json_log())["detail"] == f"Authorization: Basic {REDACTED}"


# -- standard library route --------------------------------------------------------------------


def test_secrets_never_reach_logs_stdlib(json_log: Any) -> None:
    logging.getLogger("x").warning("provider call with st_%s failed", TOKEN[3:])
    logging.getLogger("x.y").error(f"Authorization: Bearer {BEARER} key {KEY}")
    lines = json_log()
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("x", "warning", f"provider call with {REDACTED} failed"),
        ("x.y", "error", f"Authorization: Bearer {REDACTED} key {REDACTED}"),
    ]


def test_secrets_never_reach_logs_stdlib_exception(json_log: Any) -> None:
    try:
        raise RuntimeError(f"provider refused {TOKEN}")
    except RuntimeError:
        logging.getLogger("dramatiq.worker").exception("Failed to process message")
    line = _one(json_log())
    assert TOKEN not in json.dumps(line)
    assert line["event"] == "Failed to process message"
    assert line["exception"].endswith(f"RuntimeError: provider refused {REDACTED}")


def test_stdlib_level_filtering(json_log: Any) -> None:
    logging.getLogger("uvicorn.access").info(f"GET /v1/messages?token={TOKEN}")
    logging.getLogger("uvicorn.access").warning(f"GET /v1/messages?token={TOKEN}")
    line = _one(json_log())
    assert line["event"] == f"GET /v1/messages?token={REDACTED}"


# -- the pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TOKEN, REDACTED),
        (KEY, REDACTED),
        (WEBHOOK, REDACTED),
        (f"token={TOKEN}&x=1", f"token={REDACTED}&x=1"),
        (f"'{TOKEN}'", f"'{REDACTED}'"),
        (f"{TOKEN},{KEY}", f"{REDACTED},{REDACTED}"),
        (f"Bearer {BEARER}", f"Bearer {REDACTED}"),
        (f"bearer {BEARER}", f"bearer {REDACTED}"),
        (f"BEARER   {BEARER}", f"BEARER   {REDACTED}"),
        (f'{{"auth": "Bearer {BEARER}"}}', f'{{"auth": "Bearer {REDACTED}"}}'),
        (f"Bearer {TOKEN}", f"Bearer {REDACTED}"),
        # too short to be one of ours, and ordinary words with the same letters
        ("st_short", "st_short"),
        ("first_name_and_last_name", "first_name_and_last_name"),
        ("sk_", "sk_"),
        ("message m-1 sent in 2 segments", "message m-1 sent in 2 segments"),
        ("", ""),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_redact_secrets_processor() -> None:
    event = {
        "event": f"reset {TOKEN}",
        "level": "info",
        "timestamp": "2024-01-01T00:00:00Z",
        "logger": "x",
        "token": TOKEN,
        "Password": PASSWORD,
        "code": OTP,
        "error_code": "E42",
        "status_code": 401,
        "message_id": "m-9",
        "detail": f"key {KEY}",
        "nested": {"otp_code": OTP, "list": [TOKEN, {"secret": "s", "n": 1}], "ok": None},
    }
    result = redact_secrets(None, "info", event)
    assert result == {
        "event": f"reset {REDACTED}",
        "level": "info",
        "timestamp": "2024-01-01T00:00:00Z",
        "logger": "x",
        "token": REDACTED,
        "Password": REDACTED,
        "code": REDACTED,
        "error_code": "E42",
        "status_code": 401,
        "message_id": "m-9",
        "detail": f"key {REDACTED}",
        "nested": {
            "otp_code": REDACTED,
            "list": [REDACTED, {"secret": REDACTED, "n": 1}],
            "ok": None,
        },
    }


@pytest.mark.parametrize(
    "key",
    ["error_code", "status_code", "country_code", "code_length", "message_id", "pin_hash_algo"],
)
def test_redact_secrets_keeps_keys_that_only_contain_code_or_pin(key: str) -> None:
    assert redact_secrets(None, "info", {key: "kept"}) == {key: "kept"}
