"""The ``streams`` command as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from core.credentials import digest
from schemas.tables import Account
from tests.processes import STREAMS, environment, running, wait_until
from workers import broker_epoch
from workers.cpu_priority import autogroup_nice


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


def test_migrate_begins_the_broker_epoch_once(settings, runtime, redis_client):
    """``streams migrate`` leaves the broker's sentinel in Redis, recording no loss, so the
    relay does not take a Redis a release starts using for one that lost its data; run
    again, it keeps the sentinel it finds (whatever loss that records). (With messages
    marked enqueued and an empty Redis, it writes none: ``tests/faults``.)"""
    redis_client.delete(broker_epoch.KEY)
    first = run(settings, "migrate")
    assert first.returncode == 0, first.stderr
    written = redis_client.get(broker_epoch.KEY)
    assert written is not None
    assert broker_epoch.Epoch.decode(written).lost_before is None
    assert run(settings, "migrate").returncode == 0
    assert redis_client.get(broker_epoch.KEY) == written


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


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_worker_nice_lowers_every_process_of_the_pool_and_its_session(settings, tmp_path):
    log = tmp_path / "worker.log"
    ours = niceness(os.getpid())
    lowered = min(ours + 7, 19)
    args = ["worker", "--queues", "marketing", "--processes", "2", "--threads", "1", "--nice", "7"]
    with running(args, environment(settings), log) as pool:  # a session of its own
        assert wait_until(lambda: log.read_text().count("worker_started") == 2, 60), log.read_text()
        pool_pids = [pool.pid, *children(pool.pid)]
        assert len(pool_pids) >= 3
        assert {niceness(pid) for pid in pool_pids} == {lowered}
        if autogroup_nice() is not None:
            assert autogroup_nice(Path(f"/proc/{pool.pid}/autogroup")) == lowered
    assert niceness(os.getpid()) == ours


def test_worker_nice_is_refused_out_of_range(settings):
    result = run(settings, "worker", "--queues", "marketing", "--nice", "-5")
    assert result.returncode == 2
    assert "--nice: must be a whole number from 0 to 19" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value"), [("--processes", "0"), ("--processes", "-2"), ("--threads", "0")]
)
def test_worker_refuses_a_pool_that_could_consume_nothing(settings, flag, value):
    """API.md, Command line: ``streams worker [--queues otp,transactional] [--processes N
    --threads M]`` -- ``a worker pool for the named queues``.

    A pool of no process (``--processes 0`` or a negative count) or no thread would run on,
    exit 0 when stopped, and never send a message of its queue: an operator's typo
    (``OTP_PROCESSES=0``) is refused with exit 2 and the flag named, as ``--nice -5`` is."""
    try:
        result = run(settings, "worker", "--queues", "marketing", flag, value)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`streams worker {flag} {value}` was still running after 60 s")
    assert result.returncode == 2, result.stderr
    assert f"{flag}: must be a whole number of at least 1" in result.stderr
