"""The ``streams`` command as a user runs it."""

from __future__ import annotations

import re
import subprocess

from core.credentials import digest
from schemas.tables import Account
from tests.processes import STREAMS, environment


def run(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STREAMS, *args], env=environment(settings), capture_output=True, text=True, timeout=60
    )


def test_accounts_create_prints_the_key_once_and_stores_its_digest(settings, runtime):
    result = run(settings, "accounts", "create", "Acme Ltd")
    assert result.returncode == 0, result.stderr
    key = re.search(r"(sk_[A-Za-z0-9_-]{43,})", result.stdout).group(1)
    with runtime.session_factory() as session:
        account = session.query(Account).one()
    assert account.name == "Acme Ltd"
    assert account.key_digest == digest(key)
    assert key not in result.stderr


def test_accounts_create_refuses_an_empty_name(settings, runtime):
    result = run(settings, "accounts", "create", "  ")
    assert result.returncode == 2
    assert "account name" in result.stderr


def test_migrate_is_idempotent(settings):
    first, second = run(settings, "migrate"), run(settings, "migrate")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "migrations applied" in second.stdout


def test_commands_that_need_a_secret_key_say_so(settings):
    env = environment(settings)
    env["STREAMS_SECRET_KEY"] = ""
    result = subprocess.run(
        [STREAMS, "worker", "--queues", "otp"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "STREAMS_SECRET_KEY is not set" in result.stderr


def test_unknown_queue_is_refused(settings):
    result = run(settings, "worker", "--queues", "otp,sms")
    assert result.returncode == 2
    assert "unknown queue(s) sms" in result.stderr
