"""End-to-end worker throughput: accepted → delivered, against a no-op actor's drain rate
measured in the same run.

    .venv/bin/python bench/throughput.py [--messages 20000] [--processes 2] [--threads 8]
                                         [--rounds 1] [--profile]

**streams**: N queued messages of one transactional demo stream (no limits) are written
straight to PostgreSQL and Redis (``bench.backlog``: the rows and jobs the ingress would
write, without the ingress, whose own rate ``bench/ingress.py`` measures). A
``streams worker --queues transactional`` pool is started and waits, idle, until every
process polls Redis; then the jobs are pushed and the clock runs until the last message is
``delivered`` (the time of the last ``delivered`` event). The sandbox carrier answers at once
and reports delivery at once (``STREAMS_SANDBOX_LATENCY_MS=0``,
``STREAMS_SANDBOX_RECEIPT_DELAY_SECONDS=0``): the worker records the receipt in the same
transaction as the send, so each message is one delivery job (or a twentieth of one with
``--job-size 20``), with no receipt job.

``--preload ingress`` makes each round's backlog through a running ``streams serve``
instead: N single sends posted ``--concurrency`` at a time (``bench.preload``), so the
jobs have the shapes the ingress gives them (on the packed queues, transactional and
marketing by default, concurrent single sends become batch jobs; with
``STREAMS_PACKED_SINGLE_SEND_QUEUES=marketing`` transactional ones stay a job each). Their
jobs are held aside while the pool starts and moved back when the clock starts.

``--preload relay`` stores the backlog as a campaign ``scheduled`` a moment ahead, with a
``streams relay`` running: the clock starts at the scheduled time, and the relay releases the
messages onto the queue in the jobs it makes. The relay runs with no look-ahead and a sweep
every 50 ms, so that its whole release is inside the clock (deployed, it works up to a
second ahead, as delayed jobs). ``STREAMS_ENQUEUE_CHUNK_SIZE=1`` gives the relay's one
job per message of before 7 December 2026.

**no-op**: the same with ``bench/noop_worker.py`` (same broker and middleware, same process
and thread counts, same Redis) and N jobs of an actor that returns at once; the clock runs
until the queue is empty and every job acknowledged.

Target (from the issue): streams ≥ 0.75 × the no-op rate. ``--profile`` adds one more
streams round with py-spy attached to every worker process and prints where their time went.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from bench.backlog import (
    BenchStream,
    analyze_messages,
    check_job_encoding,
    copy_messages,
    create_stream_row,
    new_account,
    push_deliveries,
    push_jobs,
)
from bench.cpu_usage import process_tree
from bench.environment import (
    BENCH_STREAM,
    create_bench_stream,
    database_activity,
    scratch_database,
    scratch_redis,
    stored_message_counts,
)
from bench.ingress_report import machine_info, write_report
from bench.noop_worker import NOOP_ACTOR, NOOP_QUEUE
from bench.pools import (
    CpuWatch,
    Pool,
    noop_worker_argv,
    process_environment,
    queue_lengths,
    running_ingress,
    running_pool,
    running_relay,
    streams_worker_argv,
)
from bench.preload import held_queue, send_singles
from bench.profiles import ProfileSummary, format_summary, sampling, summarize_collapsed
from bench.runs import (
    REPO,
    RESULTS,
    RunTimedOut,
    add_service_options,
    bounded_run,
    main_guard,
    new_run_id,
    progress,
    stop_on_signals,
    wait_for,
)
from core.settings import Settings
from schemas.enums import StreamType

#: From the issue: the pipeline drains at least this share of the no-op actor's rate.
TARGET_RATIO = 0.75


@dataclass(frozen=True)
class Options:
    messages: int
    job_size: int
    preload: str
    stream_type: StreamType
    concurrency: int
    processes: int
    threads: int
    rounds: int
    drain_timeout: float
    profile: bool
    profile_rate: int
    profile_gil: bool
    postgres_url: str
    redis_url: str
    max_seconds: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Messages per second from queued to delivered through `streams worker`, "
        "against a no-op dramatiq actor on the same broker.",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (20000)")
    parser.add_argument(
        "--job-size",
        type=int,
        default=1,
        help="messages per delivery job: 1 = one job per message (single sends, the relay); "
        "20 = how the ingress enqueues batch sends (STREAMS_ENQUEUE_CHUNK_SIZE) (1)",
    )
    parser.add_argument(
        "--preload",
        choices=("direct", "ingress", "relay"),
        default="direct",
        help="make the backlog directly (COPY and jobs pushed to Redis, default), as single "
        "sends through a running `streams serve`, with the job shapes the ingress gives them, "
        "or as a campaign scheduled a moment ahead that a running `streams relay` releases",
    )
    parser.add_argument(
        "--stream-type",
        choices=(StreamType.transactional.value, StreamType.marketing.value, StreamType.otp.value),
        default=StreamType.transactional.value,
        help="the stream's type, hence its queue (transactional); otp only with --preload "
        "direct, since the ingress preload posts ready texts, not OTP sends",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="with --preload ingress: single sends in flight at once (32)",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per process (8)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (1)")
    parser.add_argument(
        "--drain-timeout", type=float, default=600, help="give up a drain after this (600 s)"
    )
    parser.add_argument("--profile", action="store_true", help="then profile a streams round")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s (250)")
    parser.add_argument(
        "--profile-threads",
        choices=("gil", "busy"),
        default="gil",
        help="sample the GIL holder only (gil, default) or every thread py-spy thinks busy",
    )
    add_service_options(parser)
    args = parser.parse_args(argv)
    if min(args.messages, args.job_size, args.concurrency, args.processes, args.threads,
           args.rounds) <= 0:  # fmt: skip
        parser.error(
            "--messages, --job-size, --concurrency, --processes, --threads, --rounds must be "
            "positive"
        )
    if args.preload != "direct" and args.job_size != 1:
        parser.error(f"with --preload {args.preload}, the {args.preload} chooses the job sizes")
    if args.preload == "ingress" and args.stream_type == StreamType.otp.value:
        parser.error("--stream-type otp needs --preload direct: the preload posts ready texts")
    runs = 2 * args.rounds + (1 if args.profile else 0)
    return Options(
        messages=args.messages,
        job_size=args.job_size,
        preload=args.preload,
        stream_type=StreamType(args.stream_type),
        concurrency=args.concurrency,
        processes=args.processes,
        threads=args.threads,
        rounds=args.rounds,
        drain_timeout=args.drain_timeout,
        profile=args.profile,
        profile_rate=args.profile_rate,
        profile_gil=args.profile_threads == "gil",
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        max_seconds=args.max_seconds or 120 + runs * (60 + args.drain_timeout),
    )


@dataclass(frozen=True)
class Drain:
    """One timed drain: ``messages`` in ``seconds`` and the resources used meanwhile."""

    kind: str
    messages: int
    jobs: int
    seconds: float
    push_seconds: float
    cpu_cores: dict[str, float]
    postgres_commits: int
    redis_commands: int
    #: Jobs added to each queue by the drain (follow-up queues no pool here consumes).
    queues_grew: dict[str, int]
    #: With ``--preload ingress``: the sends' rate and answers (``bench.preload.Preload``).
    preload: dict[str, Any] | None = None

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "messages_per_second": round(self.per_second, 1)}


@dataclass(frozen=True)
class IngressTarget:
    """The running ``streams serve`` of ``--preload ingress`` and the stream's send token."""

    base_url: str
    token: str


@dataclass(frozen=True)
class Bench:
    options: Options
    database_url: str
    redis_url: str
    #: The stream the direct preload writes to (``--preload direct``).
    stream: BenchStream | None
    #: Where single sends go (``--preload ingress``).
    ingress: IngressTarget | None
    env: dict[str, str]
    run_id: str

    @property
    def queue(self) -> str:
        return self.options.stream_type.queue_name


@dataclass(frozen=True)
class Backlog:
    """A round's messages, stored, with their jobs not yet on the queue: ``push()`` puts
    them there and returns the seconds it took."""

    jobs: int
    push: Callable[[], float]
    preload: dict[str, Any] | None = None
    #: With ``--preload relay``: called once the pool is up, schedules the messages and
    #: returns the time they are due (epoch seconds), when the clock starts.
    schedule: Callable[[], float] | None = None


def redis_commands(redis_url: str) -> int:
    """Commands the Redis server has processed so far (all databases, all clients)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def delivered_so_far(database_url: str) -> tuple[int, float | None]:
    """How many ``delivered`` events there are, and the time of the last (epoch seconds)."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT count(*), extract(epoch FROM max(at))::float8 FROM message_events"
            " WHERE status = 'delivered'"
        ).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def streams_drain(bench: Bench, stack: ExitStack, label: str) -> Drain:
    """Load N messages, start a pool, push their jobs and time until all are delivered."""
    done_before, _ = delivered_so_far(bench.database_url)
    backlog = make_backlog(bench, stack)
    pool = stack.enter_context(streams_pool(bench, label))
    return _timed_streams(bench, "streams", pool, backlog, done_before)


def streams_pool(bench: Bench, label: str) -> AbstractContextManager[Pool]:
    options = bench.options
    return running_pool(
        f"{bench.queue} pool",
        streams_worker_argv(bench.queue, options.processes, options.threads),
        processes=options.processes,
        redis_url=bench.redis_url,
        env=bench.env,
        log_path=RESULTS / f"{bench.run_id}-{label}.log",
    )


def _timed_streams(
    bench: Bench, kind: str, pool: Pool, backlog: Backlog, done_before: int
) -> Drain:
    if backlog.schedule is not None:
        time.sleep(max(0.0, backlog.schedule() - time.time()))
    drain = _timed(
        bench,
        kind,
        pool,
        push=backlog.push,
        finished=lambda: _all_delivered(bench.database_url, done_before + bench.options.messages),
        jobs=backlog.jobs,
    )
    return replace(drain, preload=backlog.preload)


def make_backlog(bench: Bench, stack: ExitStack) -> Backlog:
    """The round's N messages, stored and with their jobs ready to push (held aside in
    ``stack`` with ``--preload ingress``). A receipt given at once is recorded with the
    send, so there is one delivery job per message or per chunk, and no receipt job."""
    options = bench.options
    if options.preload == "relay":
        return _scheduled_backlog(bench, stack)
    if bench.ingress is None:
        assert bench.stream is not None
        ids = copy_messages(bench.database_url, bench.stream, options.messages).ids
        return Backlog(
            jobs=-(-options.messages // options.job_size),
            push=lambda: push_deliveries(
                bench.redis_url, bench.queue, ids, job_size=options.job_size
            )[1],
        )
    stored_before = stored_message_counts(bench.database_url)["stored_in_postgres"]
    sent = send_singles(
        bench.ingress.base_url, bench.ingress.token, options.messages, options.concurrency
    )
    if sent.refused or sent.accepted != options.messages:
        raise RuntimeError(f"the ingress accepted {sent.accepted}, refused {sent.refused}")
    _wait_until_marked_enqueued(bench.database_url, stored_before + options.messages)
    analyze_messages(bench.database_url)
    held = stack.enter_context(held_queue(bench.redis_url, bench.queue))
    progress(
        f"preload: {sent.accepted} single sends in {sent.seconds:.1f} s "
        f"({sent.per_second:.0f}/s) became {held.jobs} jobs"
    )
    return Backlog(
        jobs=held.jobs,
        push=held.release,
        preload={
            "accepted": sent.accepted,
            "seconds": sent.seconds,
            "accepted_per_second": round(sent.per_second, 1),
            "concurrency": options.concurrency,
        },
    )


#: How far ahead of the clock's start the relay's campaign is scheduled: time to move the
#: stored messages to it (an UPDATE and an ANALYZE) before it comes.
SCHEDULED_AHEAD_SECONDS = 2.0


def _scheduled_backlog(bench: Bench, stack: ExitStack) -> Backlog:
    """N messages scheduled for a moment that becomes the clock's start, and a running
    ``streams relay`` to release them. They are stored for tomorrow, then moved to their
    time once the relay runs, so that the COPY's length does not eat into the lead."""
    assert bench.stream is not None
    options = bench.options
    tomorrow = time.time() + 86_400
    ids = copy_messages(
        bench.database_url,
        bench.stream,
        options.messages,
        send_at=datetime.fromtimestamp(tomorrow, UTC),
    ).ids
    # No look-ahead and a sweep every 50 ms: the relay starts releasing at the scheduled
    # time, not up to a second before it, so all of its work is inside the clock.
    relay_env = {
        **bench.env,
        "STREAMS_RELAY_LOOKAHEAD_SECONDS": "0",
        "STREAMS_RELAY_INTERVAL_SECONDS": "0.05",
    }
    stack.enter_context(
        running_relay(relay_env, RESULTS / f"{bench.run_id}-relay-{time.monotonic_ns()}.log")
    )

    def schedule() -> float:
        due = time.time() + SCHEDULED_AHEAD_SECONDS
        with psycopg.connect(bench.database_url) as connection:
            connection.execute(
                "UPDATE messages SET send_at = %s WHERE id = ANY(%s)",
                (datetime.fromtimestamp(due, UTC), ids),
            )
        analyze_messages(bench.database_url)
        if time.time() > due - 0.2:
            raise RuntimeError("scheduling the campaign took its whole lead; raise the lead")
        return due

    chunk = int(
        bench.env.get(
            "STREAMS_ENQUEUE_CHUNK_SIZE", Settings.model_fields["enqueue_chunk_size"].default
        )
    )
    return Backlog(jobs=-(-options.messages // chunk), push=lambda: 0.0, schedule=schedule)


def _all_delivered(database_url: str, wanted: int) -> float | None:
    count, last = delivered_so_far(database_url)
    return last if count >= wanted else None


def noop_drain(bench: Bench, stack: ExitStack, label: str) -> Drain:
    """Start the no-op pool, push N jobs and time until the queue is empty and acked."""
    options = bench.options
    pool = stack.enter_context(
        running_pool(
            "no-op pool",
            noop_worker_argv(NOOP_QUEUE, options.processes, options.threads),
            processes=options.processes,
            redis_url=bench.redis_url,
            env=bench.env,
            log_path=RESULTS / f"{bench.run_id}-{label}.log",
        )
    )
    client = stack.enter_context(redis.Redis.from_url(bench.redis_url))

    def drained() -> float | None:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"dramatiq:{NOOP_QUEUE}")
        pipe.hlen(f"dramatiq:{NOOP_QUEUE}.msgs")
        waiting, unacked = pipe.execute()
        return time.time() if waiting == 0 and unacked == 0 else None

    jobs = ((str(i),) for i in range(options.messages))
    return _timed(
        bench,
        "no-op",
        pool,
        push=lambda: push_jobs(bench.redis_url, NOOP_QUEUE, NOOP_ACTOR, jobs)[1],
        finished=drained,
        jobs=options.messages,
        poll=0.005,
    )


def _timed(
    bench: Bench,
    kind: str,
    pool: Pool,
    *,
    push: Callable[[], float],
    finished: Callable[[], float | None],
    jobs: int,
    poll: float = 0.1,
) -> Drain:
    """Push the jobs with the clock running (``push()`` returns the seconds it took), wait
    until ``finished()`` returns the end time (epoch seconds), and record the CPU, PostgreSQL
    and Redis work meanwhile. The benchmark's own polls count too (about ten short
    transactions a second, a few Redis commands)."""
    cpu = CpuWatch({"workers": pool.pid})
    commits_before = database_activity(bench.database_url)["xact_commit"]
    commands_before = redis_commands(bench.redis_url)
    queues_before = queue_lengths(bench.redis_url)
    cpu.start()
    started = time.time()
    push_seconds = push()
    deadline = time.monotonic() + bench.options.drain_timeout
    while (ended := finished()) is None:
        if time.monotonic() > deadline:
            raise RunTimedOut(f"{kind} drain not finished after {bench.options.drain_timeout} s")
        if pool.process.poll() is not None:
            raise RuntimeError(f"the {kind} pool exited (see {pool.log_path})")
        time.sleep(poll)
    cores = cpu.stop()
    time.sleep(1.0)  # pg_stat_database is reported with up to a second of delay
    commits = database_activity(bench.database_url)["xact_commit"] - commits_before
    drain = Drain(
        kind=kind,
        messages=bench.options.messages,
        jobs=jobs,
        seconds=round(ended - started, 3),
        push_seconds=round(push_seconds, 3),
        cpu_cores=cores,
        postgres_commits=commits,
        redis_commands=redis_commands(bench.redis_url) - commands_before,
        queues_grew={
            name: count - queues_before.get(name, 0)
            for name, count in queue_lengths(bench.redis_url).items()
            if count > queues_before.get(name, 0)
        },
    )
    progress(f"{kind}: {drain.per_second:.1f} msg/s ({drain.seconds:.2f} s)")
    return drain


def worker_processes(pool: Pool) -> list[int]:
    """The processes that run the actors: the pool's spawned children, or the leader itself
    when it runs alone (``--processes 1``)."""
    children = []
    for pid in process_tree(pool.pid)[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            children.append(pid)
    return children or [pool.pid]


@dataclass(frozen=True)
class Profiled:
    drain: Drain
    summary: ProfileSummary
    raw_profiles: list[str]
    sampled_share: float


def profiled_round(bench: Bench) -> Profiled:
    """One more streams round with py-spy attached to each worker process from before the
    push to the end. The collapsed stacks of all processes are summarised together."""
    options = bench.options
    with ExitStack() as stack:
        # Start the pool idle, attach, then time: the jobs are pushed only once the pool is
        # ready, so the profilers are attached before the first job arrives.
        done_before, _ = delivered_so_far(bench.database_url)
        backlog = make_backlog(bench, stack)
        pool = stack.enter_context(streams_pool(bench, "profiled-workers"))
        outputs = []
        for pid in worker_processes(pool):
            output = RESULTS / f"{bench.run_id}-profile-{pid}.txt"
            stack.enter_context(
                sampling(pid, output, rate=options.profile_rate, gil=options.profile_gil)
            )
            outputs.append(output)
        drain = _timed_streams(bench, "streams (profiled)", pool, backlog, done_before)
    text = "\n".join(path.read_text() for path in outputs)
    summary = summarize_collapsed(text)
    sampled = summary.samples / (options.profile_rate * drain.seconds * len(outputs))
    return Profiled(drain, summary, [str(p.relative_to(REPO)) for p in outputs], round(sampled, 3))


def run(options: Options, run_id: str, stack: ExitStack) -> dict[str, Any]:
    check_job_encoding()
    database_url = stack.enter_context(scratch_database(options.postgres_url))
    redis_url = stack.enter_context(scratch_redis(options.redis_url))
    account_id, account_key = new_account(database_url, "throughput benchmark")
    env = process_environment(database_url, redis_url)
    stream, ingress = None, None
    if options.preload == "ingress":
        ingress = start_ingress(stack, env, account_key, options.stream_type, run_id)
    else:
        stream = create_stream_row(
            database_url, account_id, name="throughput benchmark", stream_type=options.stream_type
        )
    bench = Bench(options, database_url, redis_url, stream, ingress, env, run_id)
    runs: dict[str, list[Drain]] = {"streams": [], "no-op": []}
    for round_index in range(options.rounds):
        order = ("streams", "no-op") if round_index % 2 == 0 else ("no-op", "streams")
        for kind in order:
            label = f"{kind.replace('-', '')}-{round_index + 1}"
            with ExitStack() as round_stack:
                if kind == "streams":
                    drain = streams_drain(bench, round_stack, f"{label}-workers")
                else:
                    drain = noop_drain(bench, round_stack, f"{label}-workers")
            runs[kind].append(drain)
    profiled = profiled_round(bench) if options.profile else None
    streams_rate = _median([d.per_second for d in runs["streams"]])
    noop_rate = _median([d.per_second for d in runs["no-op"]])
    ratio = streams_rate / noop_rate if noop_rate else 0.0
    return {
        "benchmark": "throughput",
        "parameters": {**asdict(options), "stream_type": options.stream_type.value},
        "preload": PRELOADS[options.preload],
        "runs": {kind: [d.as_dict() for d in drains] for kind, drains in runs.items()},
        "summary": {
            "streams_messages_per_second": round(streams_rate, 1),
            "noop_messages_per_second": round(noop_rate, 1),
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO,
        },
        "profile": None
        if profiled is None
        else {
            "drain": profiled.drain.as_dict(),
            "raw_profiles": profiled.raw_profiles,
            "threads": "gil" if options.profile_gil else "busy",
            "sampled_share_per_process": profiled.sampled_share,
            "summary": profiled.summary.as_dict(),
        },
        "_profile_summary": profiled.summary if profiled else None,
    }


def _wait_until_marked_enqueued(database_url: str, stored: int) -> None:
    """Wait until the database holds ``stored`` messages, all marked enqueued (the ingress
    writes the marks in the background, every 250 ms). Raises ``RunTimedOut`` otherwise:
    unmarked messages would wait for the relay, which no benchmark runs, and the drain
    would never end."""

    def all_marked() -> bool:
        counts = stored_message_counts(database_url)
        return counts["stored_in_postgres"] == stored and not counts["not_marked_enqueued"]

    wait_for(all_marked, 10.0, f"{stored} messages stored and marked enqueued")


PRELOADS = {
    "direct": "direct: COPY into messages and message_events, jobs pushed to Redis "
    "(bench/backlog.py); the ingress is not involved",
    "ingress": "through the ingress: single sends posted to `streams serve`, jobs held aside "
    "until the clock starts (bench/preload.py)",
    "relay": "through the relay: COPY as scheduled, released by a running `streams relay` "
    "from the scheduled time, when the clock starts",
}


def start_ingress(
    stack: ExitStack, env: dict[str, str], account_key: str, stream_type: StreamType, run_id: str
) -> IngressTarget:
    """``streams serve`` for the whole run (in ``stack``) and a ready demo stream of
    ``stream_type`` made through its management API."""
    server = stack.enter_context(running_ingress(env, RESULTS / f"{run_id}-ingress.log"))
    body = {**BENCH_STREAM, "name": "throughput benchmark", "type": stream_type.value}
    return IngressTarget(server.base_url, create_bench_stream(server.base_url, account_key, body))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def format_report(report: dict[str, Any]) -> str:
    params, summary = report["parameters"], report["summary"]
    lines = [
        f"Streams worker throughput: {params['messages']} {params['stream_type']} messages "
        f"per run, {params['processes']} processes × {params['threads']} threads, sandbox 0 ms, "
        f"receipts at once, {params['rounds']} round(s), medians shown",
        "",
        f"  {'':30s}{'msg/s':>9s}{'drain s':>9s}{'jobs/msg':>9s}{'workers':>9s}{'µs CPU':>8s}"
        f"{'PG':>7s}{'Redis':>7s}{'pg CPU':>8s}{'redis':>7s}{'busy':>6s}",
        f"  {'':30s}{'':9s}{'':9s}{'':9s}{'cores':>9s}{'/msg':>8s}{'tx/msg':>7s}{'cmd/msg':>7s}"
        f"{'cores':>8s}{'cores':>7s}{'':6s}",
    ]
    for kind, label in (
        ("no-op", "no-op actor (same broker)"),
        ("streams", "streams: queued→delivered"),
    ):
        for run in report["runs"][kind]:
            lines.append(_row(label, run))
    if report["profile"]:
        lines.append(_row("streams under py-spy*", report["profile"]["drain"]))
    lines += [
        "",
        f"  ratio streams / no-op: {summary['ratio']:.3f}   (target ≥ {summary['target_ratio']}: "
        f"{'met' if summary['target_met'] else 'MISSED'})",
        f"  pre-load: {report['preload']}.",
        "  Redis commands are counted server-wide (other users of the server count too).",
    ]
    if report["profile"]:
        lines.append("  * slower: py-spy was attached to every worker process")
    grew = {
        kind: run["queues_grew"]
        for kind, runs in report["runs"].items()
        for run in runs
        if run["queues_grew"]
    }
    for kind, queues in grew.items():
        lines.append(
            f"  jobs the {kind} drain left on other queues (no pool here consumes them): "
            + ", ".join(f"{name} {count}" for name, count in sorted(queues.items()))
        )
    return "\n".join(lines)


def _row(label: str, run: dict[str, Any]) -> str:
    cpu = run["cpu_cores"]
    per_message_us = cpu["workers"] * run["seconds"] / run["messages"] * 1e6
    return (
        f"  {label:30s}{run['messages_per_second']:9.1f}{run['seconds']:9.2f}"
        f"{run['jobs'] / run['messages']:9.2f}{cpu['workers']:9.2f}{per_message_us:8.0f}"
        f"{run['postgres_commits'] / run['messages']:7.1f}"
        f"{run['redis_commands'] / run['messages']:7.1f}"
        f"{cpu['postgres']:8.2f}{cpu['redis']:7.2f}{cpu['machine_busy_share'] * 100:5.0f}%"
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    run_id, started = new_run_id("throughput")
    stop_on_signals()
    with ExitStack() as stack, bounded_run(options.max_seconds):
        report = run(options, run_id, stack)
    summary = report.pop("_profile_summary")
    report["started_at"] = started.isoformat(timespec="seconds")
    report["machine"] = machine_info()
    print(format_report(report))
    if summary is not None:
        profile = report["profile"]
        print()
        print(
            format_summary(
                f"streams worker processes, {profile['threads']} samples in "
                f"{profile['sampled_share_per_process'] * 100:.0f}% of each process' wall time",
                summary,
            )
        )
    path = write_report(report, RESULTS / f"{run_id}.json")
    print(f"\nwritten: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    main_guard(main)
