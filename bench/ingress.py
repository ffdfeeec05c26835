"""Ingress throughput: accepted sends per second on ``streams serve``, against a trivial
FastAPI endpoint measured in the same run, and batch sends in messages per second.

    .venv/bin/python bench/ingress.py [--duration 10] [--concurrency 32] [--batch-size 1000]
                                      [--rounds 1] [--profile]

It sets everything up itself (a fresh PostgreSQL database built by the migrations, a flushed
Redis database, an account, a ready transactional demo stream made through the management API),
starts both servers as child processes, loads them with wrk (or httpx when wrk is missing),
prints a table and writes the figures to ``bench/results/ingress-<time>.json``. No workers
run: what is measured is acceptance (validate, store in PostgreSQL, enqueue onto Redis).
Everything it made is removed at the end, also on errors and Ctrl-C.

Targets (from the issue): single sends ≥ 0.5× the trivial endpoint; batches ≥ 50,000 msg/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: put the repository root (not bench/) on the path, so that ``bench`` and
    # the application packages import the same way as under ``python -m bench.ingress``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import signal
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

from bench.cpu_usage import take_snapshot, usage_between
from bench.environment import (
    create_bench_account,
    create_bench_stream,
    database_activity,
    queued_in_redis,
    scratch_database,
    scratch_redis,
    stored_message_counts,
)
from bench.ingress_report import format_table, machine_info, summarize, write_report
from bench.load import Generator, LoadResult, LoadSpec, choose_generator, run_load
from bench.pools import QUOTA_ASKED_NEVER_REFUSING
from bench.profiles import ProfileSummary, format_summary, sampling, summarize_collapsed
from bench.servers import Server, free_port, running_server

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SEND_PATH = "/v1/messages"
SEND_ITEM = {"recipient_phone": "+972524265292", "message_content": "Benchmark message"}
STREAM_QUEUE = "transactional"
#: Pause before each recorded run, so that requests left in flight by the previous run (the
#: server finishes them after the client has gone) do not count against this one.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class BenchOptions:
    """The command line, checked."""

    duration: float
    concurrency: int
    batch_size: int
    batch_connections: int
    rounds: int
    warmup: float
    profile: bool
    profile_rate: int
    profile_gil: bool
    generator: str
    wrk_threads: int
    baseline_route: str
    postgres_url: str
    redis_url: str


@dataclass(frozen=True)
class Measurement:
    """One load run against one server, with the CPU each party used meanwhile (in cores)
    and, for the ingress, what PostgreSQL counted meanwhile (``pg_stat_database`` deltas)."""

    server: str
    load: LoadResult
    cpu: dict[str, float]
    database: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            **self.load.as_dict(),
            "cpu_cores": self.cpu,
            "postgres_counters": self.database,
        }


@dataclass(frozen=True)
class ProfiledRun:
    """A run with py-spy attached: its (slowed down) measurement and where the samples fell.
    ``sampled_share`` is the share of the run's wall time in which a sample was taken; in GIL
    mode that is about how long the GIL was held (a lower bound: py-spy drops samples when
    the machine is saturated)."""

    measurement: Measurement
    summary: ProfileSummary
    raw_profile: str
    threads: str
    sampled_share: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement.as_dict(),
            "raw_profile": self.raw_profile,
            "threads": self.threads,
            "sampled_share": self.sampled_share,
            "summary": self.summary.as_dict(),
        }


def parse_options(argv: Sequence[str] | None) -> BenchOptions:
    """Parse and check the command line; exits with a usage error on bad values."""
    parser = argparse.ArgumentParser(
        prog="bench/ingress.py",
        description="Accepted sends per second on `streams serve`, against a trivial FastAPI "
        "endpoint, and batch sends in messages per second.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="connections for single sends (32)"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch (1000)")
    parser.add_argument(
        "--batch-connections", type=int, default=4, help="connections for batch sends (4)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure this many times, interleaved (1)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument(
        "--profile", action="store_true", help="then profile the ingress with py-spy"
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s (250)")
    parser.add_argument(
        "--profile-threads",
        choices=("gil", "busy"),
        default="gil",
        help="sample the GIL holder only (gil, default) or every thread py-spy thinks busy",
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--baseline-route",
        choices=("async", "sync"),
        default="async",
        help="the trivial route as a coroutine (async, default) or a plain def run in the "
        "thread pool like the ingress' send route (sync)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STREAMS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a server database; a scratch database is created beside it",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("STREAMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="a Redis database used by nothing else: it is flushed",
    )
    args = parser.parse_args(argv)
    for name in ("duration", "concurrency", "batch_size", "batch_connections", "rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return BenchOptions(
        duration=args.duration,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        batch_connections=args.batch_connections,
        rounds=args.rounds,
        warmup=max(0.0, args.warmup),
        profile=args.profile,
        profile_rate=args.profile_rate,
        profile_gil=args.profile_threads == "gil",
        generator=args.generator,
        wrk_threads=args.wrk_threads,
        baseline_route=args.baseline_route,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
    )


def send_body(size: int) -> bytes:
    """A send request of ``size`` identical items without ``internal_id`` (no dedup look-up)."""
    return json.dumps({"messages": [SEND_ITEM] * size}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Bench:
    """Everything a run needs once set up: the options, the servers, the stream's token."""

    options: BenchOptions
    generator: Generator
    streams: Server
    baseline: Server
    token: str
    database_url: str
    run_id: str

    def spec(self, server: Server, batch_size: int, connections: int) -> LoadSpec:
        """POST batches of ``batch_size`` to ``server``'s send path with the stream token."""
        return LoadSpec(
            url=server.base_url + SEND_PATH,
            body=send_body(batch_size),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            connections=connections,
            duration=self.options.duration,
        )


def measure(bench: Bench, server: Server, spec: LoadSpec) -> Measurement:
    """Run ``spec`` against ``server`` and record the CPU use around it; for the ingress, also
    PostgreSQL's counters."""
    time.sleep(SETTLE_SECONDS)
    probe_database = server is bench.streams
    counters_before = database_activity(bench.database_url) if probe_database else {}
    before = take_snapshot(server.pid)
    result = run_load(spec, bench.generator, wrk_threads=bench.options.wrk_threads)
    after = take_snapshot(server.pid)
    database = None
    if probe_database:
        counters_after = database_activity(bench.database_url)
        database = {k: counters_after[k] - counters_before[k] for k in counters_after}
    return Measurement(server.name, result, usage_between(before, after), database)


def warm_up(bench: Bench, spec: LoadSpec) -> None:
    """A short unrecorded run: fills connection pools and the token cache, imports lazily
    loaded code."""
    if bench.options.warmup > 0:
        shortened = replace(spec, duration=bench.options.warmup)
        run_load(shortened, bench.generator, wrk_threads=bench.options.wrk_threads)


def run_single_rounds(bench: Bench) -> tuple[list[Measurement], list[Measurement]]:
    """Single sends on the baseline and the ingress, ``rounds`` times each. The order
    alternates from round to round so that drift on a noisy machine favours neither."""
    servers = (bench.baseline, bench.streams)
    specs = {s.name: bench.spec(s, 1, bench.options.concurrency) for s in servers}
    for server in servers:
        warm_up(bench, specs[server.name])
    results: dict[str, list[Measurement]] = {s.name: [] for s in servers}
    for round_index in range(bench.options.rounds):
        for server in servers if round_index % 2 == 0 else reversed(servers):
            measurement = measure(bench, server, specs[server.name])
            results[server.name].append(measurement)
            _progress(f"single  {server.name:9s} round {round_index + 1}", measurement)
    return results[bench.baseline.name], results[bench.streams.name]


def run_batch_rounds(bench: Bench) -> list[Measurement]:
    """Batches of ``batch_size`` on the ingress, ``rounds`` times."""
    options = bench.options
    spec = bench.spec(bench.streams, options.batch_size, options.batch_connections)
    warm_up(bench, spec)
    measurements = []
    for round_index in range(options.rounds):
        measurement = measure(bench, bench.streams, spec)
        measurements.append(measurement)
        _progress(f"batch   {bench.streams.name:9s} round {round_index + 1}", measurement)
    return measurements


def run_profiles(bench: Bench) -> dict[str, ProfiledRun]:
    """One more single and one more batch run on the ingress, with py-spy attached."""
    options = bench.options
    specs = {
        "single": bench.spec(bench.streams, 1, options.concurrency),
        "batch": bench.spec(bench.streams, options.batch_size, options.batch_connections),
    }
    profiles: dict[str, ProfiledRun] = {}
    for kind, spec in specs.items():
        output = RESULTS / f"{bench.run_id}-profile-{kind}.txt"
        rate, gil = options.profile_rate, options.profile_gil
        with sampling(bench.streams.pid, output, rate=rate, gil=gil):
            measurement = measure(bench, bench.streams, spec)
        _progress(f"profile {kind:6s}", measurement)
        summary = summarize_collapsed(output.read_text())
        profiles[kind] = ProfiledRun(
            measurement=measurement,
            summary=summary,
            raw_profile=str(output.relative_to(REPO)),
            threads="gil" if gil else "busy",
            sampled_share=round(summary.samples / (rate * measurement.load.duration_s), 3),
        )
    return profiles


def _progress(label: str, measurement: Measurement) -> None:
    load = measurement.load
    print(
        f"  {label}: {load.accepted_per_second:9.1f} req/s  {load.items_per_second:9.1f} items/s"
        f"  errors {load.error_count}",
        file=sys.stderr,
        flush=True,
    )


def server_environment(database_url: str, redis_url: str) -> dict[str, str]:
    """The ingress' environment: this one plus the scratch services, quiet logging, and
    an ingress quota that is asked but never refuses (``QUOTA_ASKED_NEVER_REFUSING``)."""
    return {
        **QUOTA_ASKED_NEVER_REFUSING,
        **os.environ,
        "STREAMS_DATABASE_URL": database_url,
        "STREAMS_REDIS_URL": redis_url,
        "STREAMS_SECRET_KEY": "bench-secret-key-not-for-production",
        "STREAMS_LOG_LEVEL": "WARNING",
    }


def _interrupted(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def start_servers(
    stack: ExitStack, options: BenchOptions, database_url: str, redis_url: str, run_id: str
) -> tuple[Server, Server]:
    """Start ``streams serve`` and the trivial baseline, both stopped when ``stack`` closes.
    Their output goes to ``bench/results/<run_id>-<name>.log``."""
    streams_port, baseline_port = free_port(), free_port()
    baseline_flags = ["--sync"] if options.baseline_route == "sync" else []
    streams = stack.enter_context(
        running_server(
            "streams",
            [str(Path(sys.executable).with_name("streams")), "serve", "--host", "127.0.0.1",
             "--port", str(streams_port), "--workers", "1"],
            port=streams_port,
            log_path=RESULTS / f"{run_id}-streams.log",
            env=server_environment(database_url, redis_url),
            cwd=REPO,
        )
    )  # fmt: skip
    baseline = stack.enter_context(
        running_server(
            "baseline",
            [sys.executable, "-m", "bench.baseline_app", "--host", "127.0.0.1",
             "--port", str(baseline_port), *baseline_flags],
            port=baseline_port,
            log_path=RESULTS / f"{run_id}-baseline.log",
            cwd=REPO,
        )
    )  # fmt: skip
    return streams, baseline


def build_report(
    bench: Bench,
    started_at: datetime,
    runs: dict[str, list[Measurement]],
    profiles: dict[str, ProfiledRun],
    sanity: dict[str, int],
) -> dict[str, Any]:
    """All figures, parameters and machine facts as one JSON-ready document."""
    options = bench.options
    run_dicts = {kind: [m.as_dict() for m in measurements] for kind, measurements in runs.items()}
    return {
        "benchmark": "ingress",
        "started_at": started_at.isoformat(timespec="seconds"),
        "parameters": {
            "duration_s": options.duration,
            "concurrency": options.concurrency,
            "batch_size": options.batch_size,
            "batch_connections": options.batch_connections,
            "rounds": options.rounds,
            "warmup_s": options.warmup,
            "generator": bench.generator,
            "wrk_threads": options.wrk_threads,
            "baseline_route": options.baseline_route,
        },
        "machine": machine_info(),
        "summary": summarize(run_dicts["baseline"], run_dicts["single"], run_dicts["batch"]),
        "runs": run_dicts,
        "profiles": {kind: run.as_dict() for kind, run in profiles.items()},
        "sanity": sanity,
    }


def sanity_counts(
    database_url: str, redis_url: str, recorded: list[Measurement], settle_timeout: float = 30.0
) -> dict[str, int]:
    """Messages the recorded runs had accepted against what PostgreSQL and the queue hold.

    Requests still in flight when a load run stops are finished by the server afterwards, so
    the counts are read once they stop changing (or after ``settle_timeout`` seconds). Warm-up
    runs add to both stores, so the stored counts are at least the accepted ones.
    """
    deadline = time.monotonic() + settle_timeout
    counts: dict[str, int] = {}
    while True:
        previous = counts
        counts = {
            **stored_message_counts(database_url),
            **queued_in_redis(redis_url, STREAM_QUEUE),
        }
        if counts == previous or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"accepted_in_recorded_runs": sum(m.load.items_accepted for m in recorded), **counts}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole benchmark; returns 0 when it ran (whether or not targets are met)."""
    options = parse_options(argv)
    generator = choose_generator(options.generator)
    started_at = datetime.now(UTC)
    run_id = "ingress-" + started_at.strftime("%Y%m%dT%H%M%SZ")
    signal.signal(signal.SIGTERM, _interrupted)  # clean up on kill as on Ctrl-C
    with ExitStack() as stack:
        print(f"setting up (generator: {generator})", file=sys.stderr, flush=True)
        database_url = stack.enter_context(scratch_database(options.postgres_url))
        redis_url = stack.enter_context(scratch_redis(options.redis_url))
        account_key = create_bench_account(database_url)
        streams, baseline = start_servers(stack, options, database_url, redis_url, run_id)
        token = create_bench_stream(streams.base_url, account_key)
        bench = Bench(options, generator, streams, baseline, token, database_url, run_id)
        print("measuring", file=sys.stderr, flush=True)
        baseline_runs, single_runs = run_single_rounds(bench)
        runs = {"baseline": baseline_runs, "single": single_runs, "batch": run_batch_rounds(bench)}
        profiles = run_profiles(bench) if options.profile else {}
        recorded = [*single_runs, *runs["batch"], *(p.measurement for p in profiles.values())]
        sanity = sanity_counts(database_url, redis_url, recorded)
        report = build_report(bench, started_at, runs, profiles, sanity)
    print(format_table(report))
    for kind, profiled in profiles.items():
        title = (
            f"ingress, {kind} sends; {profiled.threads} samples in "
            f"{profiled.sampled_share * 100:.0f}% of the wall time"
        )
        print()
        print(format_summary(title, profiled.summary))
    path = write_report(report, RESULTS / f"{run_id}.json")
    print(f"\nwritten: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
