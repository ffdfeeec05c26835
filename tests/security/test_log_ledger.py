"""The session-wide log check (``tests/log_secrecy.py``) finds what it must, and only
that: its scanner on made-up log text (a ledger of its own, so the session's stays clean).
"""

from __future__ import annotations

from core.credentials import new_account_key, new_stream_token, new_webhook_secret
from tests.log_secrecy import LEDGER, SecretLedger


def test_the_ledger_finds_keys_tokens_provider_secrets_and_codes_in_context():
    ledger = SecretLedger()
    ledger.literals.add("EAAGm0PX4ZCpsBAKZC1234abcd")
    ledger.codes.add("48213")
    lines = [
        f'{{"event": "x", "detail": "{new_stream_token()}"}}',
        f"Authorization: Bearer {new_account_key()}",
        f"secret={new_webhook_secret()}",
        "token EAAGm0PX4ZCpsBAKZC1234abcd refused",
        "sending 'Your code is 48213'",
        '{"code": "48213"}',
    ]
    for line in lines:
        ledger.scan("line", line)
    assert len(ledger.leaks) == len(lines)


def test_the_ledger_ignores_redacted_lines_and_digits_elsewhere():
    ledger = SecretLedger()
    ledger.codes.add("48213")
    for line in [
        '{"token": "[redacted]", "at": "2026-11-25T19:40:11.482130Z"}',
        "port 48213 opened; code=[redacted]",
        "Your code is *****",
    ]:
        ledger.scan("line", line)
    assert ledger.leaks == []


def test_the_session_ledger_is_armed():
    assert LEDGER.literals, "provider secrets are registered at configure time"
