"""OTP latency under a marketing backlog (invariant 6): does a million queued marketing
messages, with the marketing pool busy draining them, move the latency of OTP sends?

    .venv/bin/python bench/otp_latency.py [--rate 20] [--duration 30] [--backlog 1000000]
                                          [--rounds 1]

One run, two scenarios, each sending one-time codes one at a time at ``--rate`` per second
for ``--duration`` seconds (``POST /v1/otp/send`` on an OTP demo stream of a real ``streams
serve``, each to a number of its own; ``--api messages`` posts a ready text to
``/v1/messages`` instead):

(a) the marketing queue is empty (the marketing pool runs, idle);
(b) ``--backlog`` marketing messages are queued and the marketing pool is draining them;
(c) the control: the marketing queue is empty, as in (a), and every core is kept busy by a
    spinner under ``SCHED_IDLE`` in an idle CPU cgroup, which gives its core up the moment
    anything else wakes (``bench/cpu_spinners.py`` says why it takes both). It is what busy
    cores cost the OTP path by themselves, with no CPU share, lock, database or queue
    taken from it. ``--no-busy-control`` leaves it out.

With ``--rounds N`` each scenario runs N times: (a) and (c) in turns, then (b) N times back to
back on the same backlog, which must last that long (the report says if it ran dry).
The headline figures pool the sends of all rounds: a p99 of 600 sends is their sixth
slowest, which moves a lot from run to run; each round's own figures are reported too.

Processes, as in production: ``streams serve`` (1 worker), ``streams worker --queues otp``
(its own pool), ``streams worker --queues marketing``, ``streams relay``. The sandbox
carrier answers at once.

**What is measured**, per OTP message, from *accept* = its ``created_at`` (the ingress' clock
when it began to accept the request, the same instant as its ``queued`` event):

* **accept → provider call** (the headline figure): when the sandbox carrier recorded the
  message in its Redis ledger (``streams:sandbox:ref:<id>``, written when it takes the
  message; with zero latency that is the provider call). The ledger key has no timestamp but
  is set with a TTL of 7 days, so its creation time is ``Redis TIME − (7 days − PTTL)``,
  to about 0.1 ms when TIME and the TTLs are read with no other client's command between
  them (in one script: ``PTTLS_AT_ONE_INSTANT``).
* **accept → claim**: the ``sending`` event, written when the worker claims the message,
  right after admission and one transaction before the provider call.
* **HTTP**: the request's round trip as the sender saw it (accept, store, enqueue).

The backlog for (b) is written straight to PostgreSQL with COPY and pushed to Redis with a
pipeline (``bench/backlog.py`` explains the exact keys). Targets (from the issue): p99 < 50 ms,
and the loaded p99 ≤ 1.2 × the empty-queue p99. The report also splits that ratio in two:
(c)/(a), the machine's own cost of busy cores, and (b)/(c), what the backlog adds to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import math
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg
import redis

from bench.backlog import (
    check_job_encoding,
    copy_messages,
    create_stream_row,
    new_account,
    push_deliveries,
)
from bench.cpu_spinners import running_spinners
from bench.environment import create_bench_stream, scratch_database, scratch_redis
from bench.ingress_report import machine_info, write_report
from bench.pools import (
    CpuWatch,
    Pool,
    process_environment,
    running_ingress,
    running_pool,
    running_relay,
    streams_worker_argv,
)
from bench.runs import (
    REPO,
    RESULTS,
    add_service_options,
    bounded_run,
    main_guard,
    new_run_id,
    progress,
    stop_on_signals,
    wait_for,
)
from bench.servers import Server
from schemas.enums import StreamType
from workers.providers.sandbox import LEDGER_PREFIX

#: From the issue: OTP p99 under this, and the loaded p99 within this factor of the empty one.
TARGET_P99_MS = 50.0
TARGET_LOADED_FACTOR = 1.2
#: ``workers/providers/sandbox.py`` sets every ledger key with this TTL.
LEDGER_TTL_MS = 7 * 24 * 3600 * 1000
OTP_STREAM = {"name": "OTP benchmark", "type": "otp", "demo": True}
#: Each send goes to a number of its own: a number gets one code per resend cooldown (30 s)
#: and a few per hour. None of them ends in the sandbox's test numbers (``…00000[1-4]``).
FIRST_RECIPIENT = 972_525_100_000


#: The marketing pool's ``streams worker --nice`` by default, as the Procfile starts it: on one
#: host, roughly the CPU weight deploy/k8s gives a marketing pod (a small CPU request) next to
#: the OTP pod (guaranteed CPU).
MARKETING_NICE = 10
#: The OTP pool's poll interval as the Procfile and deploy/k8s start it: the app's default
#: (0 here), since OTP jobs wake the pool through the queue's doorbell. It was 5 ms before.
OTP_POLL_MS = 0


@dataclass(frozen=True)
class Options:
    rate: float
    duration: float
    api: str
    backlog: int
    backlog_job_size: int
    rounds: int
    otp_processes: int
    otp_threads: int
    marketing_processes: int
    marketing_threads: int
    settle: float
    marketing_nice: int
    otp_poll_ms: int
    busy_control: bool
    postgres_url: str
    redis_url: str
    max_seconds: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/otp_latency.py",
        description="OTP accept-to-provider latency with an empty marketing queue and with a "
        "large marketing backlog being drained, in one run.",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="OTP sends per second (20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per scenario (30)")
    parser.add_argument(
        "--api",
        choices=("otp", "messages"),
        default="otp",
        help="send through POST /v1/otp/send (otp, default: a generated code, sealed text) or "
        "POST /v1/messages with a ready text (messages)",
    )
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="marketing messages queued for (b)"
    )
    parser.add_argument(
        "--backlog-job-size",
        type=int,
        default=1,
        help="marketing messages per delivery job: 1 = one job each (enqueue_delivery); 20 = "
        "as the ingress enqueues a batch send (1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of each scenario, pooled in the headline figures (1)",
    )
    parser.add_argument("--otp-processes", type=int, default=1, help="OTP pool processes (1)")
    parser.add_argument("--otp-threads", type=int, default=8, help="OTP pool threads (8)")
    parser.add_argument(
        "--marketing-processes", type=int, default=2, help="marketing pool processes (2)"
    )
    parser.add_argument(
        "--marketing-threads", type=int, default=8, help="marketing pool threads (8)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds between the end of the backlog push and the start of (b) (5)",
    )
    parser.add_argument(
        "--marketing-nice",
        type=int,
        default=MARKETING_NICE,
        help="start the marketing pool with `streams worker --nice N`, as the Procfile does: "
        "on one shared host, the CPU weights "
        "deploy/k8s gives the pools (the OTP pod's CPU is guaranteed, marketing's is a small "
        f"request); 0 = the pools compete as equals ({MARKETING_NICE})",
    )
    parser.add_argument(
        "--otp-poll-ms",
        type=int,
        default=OTP_POLL_MS,
        help="STREAMS_WORKER_POLL_MS for the OTP pool only; 0 = the app's default, 50, as the "
        "Procfile and deploy/k8s start it (OTP jobs ring the queue's doorbell); 5 = the "
        f"setting deployed before the doorbell ({OTP_POLL_MS})",
    )
    parser.add_argument(
        "--busy-control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run (c), the control: the marketing queue empty and every core kept busy "
        "by an idle-priority spinner (on)",
    )
    add_service_options(parser)
    args = parser.parse_args(argv)
    if min(args.rate, args.duration, args.rounds, args.otp_processes, args.otp_threads) <= 0:
        parser.error("--rate, --duration, --rounds and the OTP pool sizes must be positive")
    sizes = (args.backlog, args.backlog_job_size, args.marketing_processes, args.marketing_threads)
    if min(sizes) <= 0:
        parser.error("--backlog, --backlog-job-size and the marketing pool must be positive")
    return Options(
        **{k: v for k, v in vars(args).items() if k != "max_seconds"},
        max_seconds=args.max_seconds
        or 3 * args.rounds * args.duration + 600 + args.backlog / 2_000,
    )


@dataclass
class Send:
    """One OTP send as the sender saw it."""

    message_id: str
    sent_at: float  # epoch seconds, when the request left
    http_ms: float


@dataclass
class Scenario:
    name: str
    sends: list[Send] = field(default_factory=list)
    errors: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    marketing_queue: dict[str, int] = field(default_factory=dict)
    #: WAL bytes the server wrote and checkpoints it began during the sends (all databases)
    wal: dict[str, int] = field(default_factory=dict)


class Recipients:
    """A fresh phone number for every send of the run."""

    def __init__(self) -> None:
        self._next = FIRST_RECIPIENT

    def take(self) -> str:
        self._next += 1
        return f"+{self._next}"


def send_request(api: str, recipient: str) -> tuple[str, dict[str, Any]]:
    """The path and body of one OTP send: the OTP API (a generated code, sealed text) or the
    generic send API with a ready text."""
    if api == "otp":
        return "/v1/otp/send", {"recipient_phone": recipient}
    item = {"recipient_phone": recipient, "message_content": "Your code is 48213"}
    return "/v1/messages", {"messages": [item]}


def send_otps(
    base_url: str,
    token: str,
    options: Options,
    recipients: Recipients,
    name: str,
    duration: float | None = None,
) -> Scenario:
    """POST one OTP send at a time, on a fixed schedule of ``rate`` per second. A send that
    falls behind schedule goes at once (no catch-up burst beyond that)."""
    scenario = Scenario(name)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    rate = options.rate
    count = int(rate * (duration if duration is not None else options.duration))
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as client:
        client.get("/healthz")  # open the connection outside the measurement
        scenario.started_at = time.time()
        start = time.monotonic()
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            path, body = send_request(options.api, recipients.take())
            sent_at, before = time.time(), time.perf_counter()
            try:
                response = client.post(path, json=body)
            except httpx.HTTPError:
                scenario.errors += 1
                continue
            elapsed_ms = (time.perf_counter() - before) * 1000
            if response.status_code != 202:
                scenario.errors += 1
                continue
            answer = response.json()
            message_id = (
                answer["message_id"]
                if "message_id" in answer
                else answer["results"][0]["message_id"]
            )
            scenario.sends.append(Send(message_id, sent_at, elapsed_ms))
        scenario.ended_at = time.time()
    return scenario


def pooled(name: str, rounds: list[Scenario]) -> Scenario:
    """The rounds of one scenario as one: every send, errors and marketing sends added up,
    the queue before the first and after the last, CPU averaged over the rounds."""
    first, last = rounds[0], rounds[-1]
    cpu = {
        key: sum(r.cpu_cores.get(key, 0.0) for r in rounds) / len(rounds) for key in first.cpu_cores
    }
    queue = {k: v for k, v in first.marketing_queue.items() if k.endswith("_before")}
    queue |= {k: v for k, v in last.marketing_queue.items() if k.endswith("_after")}
    queue["marketing_sends"] = sum(r.marketing_queue["marketing_sends"] for r in rounds)
    wal = {key: sum(r.wal[key] for r in rounds) for key in first.wal}
    return Scenario(
        name,
        sends=[send for r in rounds for send in r.sends],
        errors=sum(r.errors for r in rounds),
        started_at=first.started_at,
        ended_at=first.started_at + sum(r.ended_at - r.started_at for r in rounds),
        cpu_cores=cpu,
        marketing_queue=queue,
        wal=wal,
    )


def claimed_count(database_url: str, ids: list[str]) -> int:
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM message_events WHERE status = 'sending' AND message_id = ANY(%s)",
            ([uuid.UUID(i) for i in ids],),
        ).fetchone()
    return int(row[0]) if row else 0


#: TIME and the PTTL of each key in one script. Redis runs a script alone, so no other
#: client's command comes between the readings (Redis 7.0 still reads its live clock for
#: each PTTL: the last of a call's keys is read some 0.1 ms after TIME). A pipeline is not
#: run alone: Redis reads a long one in chunks and serves other clients between them, so
#: with the marketing pool busy on Redis the last keys' TTLs were read milliseconds after
#: TIME, and their messages seemed to reach the carrier that much sooner (one run's loaded
#: p50 came out at 1.1 ms, below its accept → claim).
PTTLS_AT_ONE_INSTANT = """
local now = redis.call('TIME')
local out = {now[1], now[2]}
for i, key in ipairs(KEYS) do out[i + 2] = redis.call('PTTL', key) end
return out
"""
#: Keys per script call: a call blocks Redis while it runs (about 1 µs a key).
PTTL_CHUNK = 100


def ledger_written_ms(redis_url: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, float]:
    """When the sandbox wrote each message's ledger key (epoch ms), from its remaining TTL:
    ``Redis TIME − (7 days − PTTL)``. Messages without a key are left out."""
    client = redis.Redis.from_url(redis_url)
    written = {}
    try:
        script = client.register_script(PTTLS_AT_ONE_INSTANT)
        for start in range(0, len(ids), PTTL_CHUNK):
            chunk = ids[start : start + PTTL_CHUNK]
            seconds, micros, *ttls = script(keys=[LEDGER_PREFIX + str(i) for i in chunk])
            now_ms = int(seconds) * 1000 + int(micros) / 1000
            written |= {
                message_id: now_ms - (LEDGER_TTL_MS - int(ttl))
                for message_id, ttl in zip(chunk, ttls, strict=True)
                if int(ttl) > 0
            }
    finally:
        client.close()
    return written


def latencies(database_url: str, redis_url: str, scenario: Scenario) -> dict[str, Any]:
    """accept → claim and accept → provider call, per message, in milliseconds; and how many
    messages seem to have reached the carrier more than 1 ms before their claim, which
    cannot happen (a check on the two clocks and the TTL arithmetic: it should be 0)."""
    ids = [uuid.UUID(s.message_id) for s in scenario.sends]
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT m.id, extract(epoch FROM m.created_at)::float8,"
            " extract(epoch FROM e.at)::float8"
            " FROM messages m JOIN message_events e"
            " ON e.message_id = m.id AND e.status = 'sending' WHERE m.id = ANY(%s)",
            (ids,),
        ).fetchall()
    accepted = {row[0]: row[1] * 1000 for row in rows}
    claimed: dict[uuid.UUID, float] = {}
    for message_id, _, claimed_at in rows:  # the first claim: a retaken one has two
        claimed[message_id] = min(claimed.get(message_id, math.inf), claimed_at * 1000)
    written = ledger_written_ms(redis_url, ids)
    provider_ms = [at - accepted[i] for i, at in written.items() if i in accepted]
    return {
        "accept_to_provider_ms": describe(provider_ms),
        "accept_to_claim_ms": describe([claimed[i] - accepted[i] for i in claimed]),
        "http_ms": describe([s.http_ms for s in scenario.sends]),
        "provider_before_claim": sum(
            1 for i, at in written.items() if i in claimed and at < claimed[i] - 1.0
        ),
    }


def describe(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99, max, mean (nearest-rank percentiles)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))], 2)

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


def marketing_queue(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        return {
            "jobs_waiting": int(client.llen("dramatiq:marketing")),
            "jobs_unacked": int(client.hlen("dramatiq:marketing.msgs")),
        }
    finally:
        client.close()


def wal_counters(database_url: str) -> tuple[int, int]:
    """The server's WAL position in bytes and the checkpoints it has begun (timed and
    requested; ``pg_stat_checkpointer`` from PostgreSQL 17, ``pg_stat_bgwriter`` before)."""
    with psycopg.connect(database_url) as connection:
        version = connection.info.server_version
        checkpoints = (
            "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            if version >= 170000
            else "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        )
        row = connection.execute(
            f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, ({checkpoints})"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def sends_between(database_url: str, start: float, end: float, stream_type: str) -> int:
    """``sending`` events of ``stream_type`` messages in [start, end) (epoch seconds)."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id"
            " WHERE e.status = 'sending' AND m.stream_type = %s"
            " AND e.at >= to_timestamp(%s) AND e.at < to_timestamp(%s)",
            (stream_type, start, end),
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Processes:
    ingress: Server
    otp: Pool
    marketing: Pool
    relay_pid: int

    def trees(self) -> dict[str, int]:
        return {
            "ingress": self.ingress.pid,
            "otp_pool": self.otp.pid,
            "marketing_pool": self.marketing.pid,
            "relay": self.relay_pid,
        }


def run_scenario(
    name: str,
    options: Options,
    processes: Processes,
    token: str,
    database_url: str,
    recipients: Recipients,
    spinners_pid: int | None = None,
) -> Scenario:
    """Send the OTPs, wait until each was claimed (or 30 s), record CPU and marketing load
    (and the control's spinners, if they run)."""
    redis_url = options.redis_url
    before = marketing_queue(redis_url)
    trees = processes.trees()
    if spinners_pid is not None:
        trees["spinners"] = spinners_pid
    cpu = CpuWatch(trees)
    wal_before, checkpoints_before = wal_counters(database_url)
    cpu.start()
    scenario = send_otps(processes.ingress.base_url, token, options, recipients, name)
    scenario.cpu_cores = cpu.stop()
    wal_after, checkpoints_after = wal_counters(database_url)
    scenario.wal = {
        "bytes": wal_after - wal_before,
        "checkpoints": checkpoints_after - checkpoints_before,
    }
    ids = [s.message_id for s in scenario.sends]
    wait_for(lambda: claimed_count(database_url, ids) >= len(ids), 30, f"OTPs of {name} claimed")
    scenario.marketing_queue = {
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in marketing_queue(redis_url).items()},
        "marketing_sends": sends_between(
            database_url, scenario.started_at, scenario.ended_at, "marketing"
        ),
    }
    return scenario


def run(options: Options, run_id: str, stack: ExitStack) -> dict[str, Any]:
    check_job_encoding()
    database_url = stack.enter_context(scratch_database(options.postgres_url))
    redis_url = stack.enter_context(scratch_redis(options.redis_url))
    account_id, account_key = new_account(database_url, "otp latency benchmark")
    marketing = create_stream_row(
        database_url, account_id, name="marketing backlog", stream_type=StreamType.marketing
    )
    env = process_environment(database_url, redis_url)
    ingress = stack.enter_context(running_ingress(env, RESULTS / f"{run_id}-ingress.log"))
    token = create_bench_stream(ingress.base_url, account_key, OTP_STREAM)
    otp_env = dict(env)
    if options.otp_poll_ms:
        otp_env["STREAMS_WORKER_POLL_MS"] = str(options.otp_poll_ms)
    otp_pool = stack.enter_context(
        running_pool(
            "otp pool",
            streams_worker_argv("otp", options.otp_processes, options.otp_threads),
            processes=options.otp_processes,
            redis_url=redis_url,
            env=otp_env,
            log_path=RESULTS / f"{run_id}-otp-workers.log",
        )
    )
    marketing_pool = stack.enter_context(
        running_pool(
            "marketing pool",
            streams_worker_argv(
                "marketing",
                options.marketing_processes,
                options.marketing_threads,
                nice=options.marketing_nice,
            ),
            processes=options.marketing_processes,
            redis_url=redis_url,
            env=env,
            log_path=RESULTS / f"{run_id}-marketing-workers.log",
        )
    )
    relay = stack.enter_context(running_relay(env, RESULTS / f"{run_id}-relay.log"))
    processes = Processes(ingress, otp_pool, marketing_pool, relay.pid)
    progress("ingress, OTP pool, marketing pool and relay are up; warming up")
    recipients = Recipients()
    warm_up = send_otps(ingress.base_url, token, options, recipients, "warm-up", duration=2.0)
    if warm_up.errors or not warm_up.sends:
        raise RuntimeError(f"OTP sends fail ({warm_up.errors} errors): see the ingress log")

    rounds = options.rounds
    per_round = f"{options.rate:g} OTP/s for {options.duration:g} s"
    # (a) and (c) take turns, round by round, so that the host's mood, which moves from
    # minute to minute on a shared virtual machine, weighs on both alike.
    empties, busies, spinners_priority = [], [], None
    spinners = os.cpu_count() or 1
    for n in range(1, rounds + 1):
        progress(f"(a) empty marketing queue, round {n}/{rounds}: {per_round}")
        empties.append(run_scenario("empty", options, processes, token, database_url, recipients))
        if not options.busy_control:
            continue
        log_path = RESULTS / f"{run_id}-spinners-{n}.log"
        with running_spinners(spinners, log_path) as running:
            spinners_priority = running.priority
            progress(
                f"(c) control: {spinners} idle-priority spinners, marketing queue empty, "
                f"round {n}/{rounds}: {per_round}"
            )
            busies.append(
                run_scenario(
                    "busy", options, processes, token, database_url, recipients, running.pid
                )
            )

    progress(f"writing {options.backlog} marketing messages with COPY")
    backlog = copy_messages(database_url, marketing, options.backlog, with_events=False)
    progress(f"  {backlog.copy_seconds:.1f} s; pushing their jobs to dramatiq:marketing")
    pushed, push_seconds = push_deliveries(
        redis_url, marketing.queue, backlog.ids, job_size=options.backlog_job_size
    )
    progress(f"  {pushed} jobs in {push_seconds:.1f} s; the marketing pool is draining")
    time.sleep(options.settle)

    loads = []
    for n in range(1, rounds + 1):
        progress(f"(b) marketing backlog, round {n}/{rounds}: {per_round}")
        loads.append(run_scenario("loaded", options, processes, token, database_url, recipients))
    scenarios = [pooled("empty", empties), pooled("loaded", loads)]
    if busies:
        scenarios.append(pooled("busy", busies))

    round_p99s = []
    for n, (e, b) in enumerate(zip(empties, loads, strict=True)):
        pairs = [("empty", e), ("loaded", b)] + ([("busy", busies[n])] if busies else [])
        p99 = {
            name: latencies(database_url, redis_url, s)["accept_to_provider_ms"]["p99"]
            for name, s in pairs
        }
        round_p99s.append(
            p99
            | {
                "factor": loaded_factor(p99["empty"], p99["loaded"]),
                "backlog_ran_dry": b.marketing_queue["jobs_waiting_after"] == 0,
            }
        )
    results = {
        s.name: {
            **latencies(database_url, redis_url, s),
            "sent": len(s.sends),
            "errors": s.errors,
            "seconds": round(s.ended_at - s.started_at, 2),
            "cpu_cores": s.cpu_cores,
            "marketing": s.marketing_queue,
            "wal": s.wal,
            # every send: when it left (epoch s) and its HTTP round trip (ms), to find when
            # the slow ones happened (against checkpoints in the server's log, say)
            "sends": [[round(x.sent_at, 3), round(x.http_ms, 2)] for x in s.sends],
        }
        for s in scenarios
    }
    empty_p99 = results["empty"]["accept_to_provider_ms"]["p99"]
    loaded_p99 = results["loaded"]["accept_to_provider_ms"]["p99"]
    factor = loaded_factor(empty_p99, loaded_p99)
    busy_p99 = results["busy"]["accept_to_provider_ms"]["p99"] if "busy" in results else None
    return {
        "benchmark": "otp_latency",
        "parameters": asdict(options),
        "backlog": {
            "messages": len(backlog.ids),
            "copy_s": round(backlog.copy_seconds, 1),
            "push_s": round(push_seconds, 1),
            "method": "COPY into messages (no history rows); HSET dramatiq:marketing.msgs + "
            "RPUSH dramatiq:marketing in a pipeline (bench/backlog.py)",
        },
        "scenarios": results,
        "rounds": round_p99s,
        "summary": {
            "empty_p99_ms": empty_p99,
            "loaded_p99_ms": loaded_p99,
            "target_p99_ms": TARGET_P99_MS,
            "empty_p99_met": empty_p99 is not None and empty_p99 < TARGET_P99_MS,
            "loaded_p99_met": loaded_p99 is not None and loaded_p99 < TARGET_P99_MS,
            "loaded_factor": factor,
            "target_loaded_factor": TARGET_LOADED_FACTOR,
            "loaded_factor_met": factor is not None and factor <= TARGET_LOADED_FACTOR,
            "round_factors": [r["factor"] for r in round_p99s],
            # The control (c): the machine's own cost of busy cores, and the backlog's beyond it.
            "busy_p99_ms": busy_p99,
            "busy_spinners": spinners_priority,
            "busy_factor": loaded_factor(empty_p99, busy_p99),
            "loaded_over_busy": loaded_factor(busy_p99, loaded_p99),
        },
    }


def loaded_factor(empty_p99: float | None, loaded_p99: float | None) -> float | None:
    """p99 with the backlog over p99 without, to 3 places (None if either is missing)."""
    return round(loaded_p99 / empty_p99, 3) if empty_p99 and loaded_p99 else None


def format_report(report: dict[str, Any]) -> str:
    params, summary = report["parameters"], report["summary"]
    backlog = report["backlog"]
    lines = [
        f"Streams OTP latency: {params['rate']:g} OTP/s one at a time for {params['duration']:g} s "
        f"per scenario; OTP pool {params['otp_processes']} × {params['otp_threads']} threads, "
        f"marketing pool {params['marketing_processes']} × {params['marketing_threads']}"
        + (f" with --nice {params['marketing_nice']}" if params["marketing_nice"] else "")
        + (f"; OTP pool polls every {params['otp_poll_ms']} ms" if params["otp_poll_ms"] else ""),
        "  (nice: the marketing pool gets a smaller CPU share than the OTP pool, as deploy/k8s "
        "gives it: guaranteed CPU for OTP, a small request for marketing; not a plain "
        "equal-share run)"
        if params["marketing_nice"]
        else "  (the pools compete for the CPU as equals)",
        f"backlog for (b): {backlog['messages']:,} marketing messages, COPY {backlog['copy_s']} s, "
        f"Redis push {backlog['push_s']} s",
        "",
        f"  {'':34s}{'n':>5s}{'p50':>8s}{'p90':>8s}{'p99':>8s}{'max':>8s}   ms",
    ]
    labels = {
        "empty": "(a) empty marketing queue",
        "loaded": "(b) marketing backlog draining",
        "busy": "(c) control: cores busy, queue empty",
    }
    labels = {name: label for name, label in labels.items() if name in report["scenarios"]}
    for name, label in labels.items():
        scenario = report["scenarios"][name]
        early = scenario.get("provider_before_claim", 0)
        lines.append(
            f"  {label}"
            + (f"  [{early} reached the carrier before their claim: figures off]" if early else "")
        )
        for key, what in (
            ("accept_to_provider_ms", "accept → provider call"),
            ("accept_to_claim_ms", "accept → claim (sending)"),
            ("http_ms", "HTTP round trip (sender)"),
        ):
            d = scenario[key]
            lines.append(
                f"    {what:32s}{d['n']:5d}{_ms(d['p50'])}{_ms(d['p90'])}{_ms(d['p99'])}"
                f"{_ms(d['max'])}"
            )
    lines += [
        "",
        f"  p99 accept → provider: (a) {_ms(summary['empty_p99_ms']).strip()} ms, "
        f"(b) {_ms(summary['loaded_p99_ms']).strip()} ms; "
        f"target < {summary['target_p99_ms']:g} ms: (a) {_verdict(summary['empty_p99_met'])}, "
        f"(b) {_verdict(summary['loaded_p99_met'])}",
        f"  loaded / empty p99: {summary['loaded_factor']}  (target ≤ "
        f"{summary['target_loaded_factor']}: {_verdict(summary['loaded_factor_met'])})",
        *_control_lines(summary),
        *_round_lines(report.get("rounds", [])),
        "",
        "  during each scenario: errors; marketing messages sent (per second); jobs on "
        "dramatiq:marketing before → after",
        "  (a receipt given at once is recorded with its send, so the queue shrinks as it drains);"
        " WAL the server wrote and checkpoints it began; CPU in cores",
    ]
    for name in labels:
        scenario = report["scenarios"][name]
        market, cpu = scenario["marketing"], scenario["cpu_cores"]
        lines.append(
            f"  {name:7s} errors {scenario['errors']}, marketing sent {market['marketing_sends']} "
            f"({market['marketing_sends'] / scenario['seconds']:.0f}/s), waiting "
            f"{market['jobs_waiting_before']:,} → {market['jobs_waiting_after']:,}; "
            f"{_wal_text(scenario)}; " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        )
    return "\n".join(lines)


def _wal_text(scenario: dict[str, Any]) -> str:
    """WAL per second (and per marketing message sent) and checkpoints begun."""
    wal, seconds = scenario["wal"], max(scenario["seconds"], 1e-9)
    sends = scenario["marketing"]["marketing_sends"]
    per_message = f", {wal['bytes'] / sends / 1024:.1f} KiB per marketing message" if sends else ""
    return (
        f"WAL {wal['bytes'] / seconds / 2**20:.1f} MiB/s{per_message}, "
        f"{wal['checkpoints']} checkpoints begun"
    )


def _control_lines(summary: dict[str, Any]) -> list[str]:
    """The loaded / empty ratio split by the control (c), when it ran."""
    if summary.get("busy_p99_ms") is None:
        return []
    return [
        f"  control (c), cores kept busy by idle-priority spinners, no backlog: p99 "
        f"{_ms(summary['busy_p99_ms']).strip()} ms; (c)/(a) {summary['busy_factor']} is what busy "
        f"cores cost by themselves, (b)/(c) {summary['loaded_over_busy']} what the backlog adds",
        f"    ({summary['busy_spinners']})",
    ]


def _round_lines(rounds: list[dict[str, Any]]) -> list[str]:
    """Each round's own p99s and ratio, when there were several (the figures above pool
    them)."""
    if len(rounds) < 2:
        return []
    lines = [f"  {len(rounds)} rounds pooled above; each round's p99 (a) → (b), ratio:"]
    for n, r in enumerate(rounds, 1):
        dry = "  (the backlog ran dry)" if r["backlog_ran_dry"] else ""
        control = f"; (c) {_ms(r['busy']).strip()} ms" if r.get("busy") is not None else ""
        lines.append(
            f"    round {n}: {_ms(r['empty']).strip()} → {_ms(r['loaded']).strip()} ms, "
            f"{r['factor']}{dry}{control}"
        )
    return lines


def _ms(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8s}"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    run_id, started = new_run_id("otp_latency")
    stop_on_signals()
    with ExitStack() as stack, bounded_run(options.max_seconds):
        report = run(options, run_id, stack)
    report["started_at"] = started.isoformat(timespec="seconds")
    report["machine"] = machine_info()
    print(format_report(report))
    path = write_report(report, RESULTS / f"{run_id}.json")
    print(f"\nwritten: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    main_guard(main)
