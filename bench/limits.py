"""Limit accuracy: does one stream's ``max_per_second`` hold, in segments, across a pool of
worker processes (invariant 5)?

    .venv/bin/python bench/limits.py [--duration 60] [--rate 100] [--processes 4]
                                     [--scope stream|provider]

One transactional demo stream with ``settings.max_per_second = --rate`` gets a backlog big
enough to keep it saturated for the whole run (a mix of one- and two-segment messages,
written straight to PostgreSQL and Redis by ``bench.backlog``). Then ``streams worker
--queues transactional --processes N`` drains it, with ``streams relay`` beside it (a
throttled message that would wait longer than ``throttle_inline_wait_seconds`` is parked in
PostgreSQL and the relay puts it back on the queue when its turn comes). The sandbox carrier
answers at once (``STREAMS_SANDBOX_LATENCY_MS=0``, no receipt delay).

When each message was sent is read afterwards from PostgreSQL: the time of its ``sending``
event, which the worker writes when it claims the message, right after admission and right
before the provider call. Segments are counted per 10 s window (target: within ±5% of
10 × rate) and per 1 s window (informative). The first, partial second after the first
claim and whatever follows the measured span are left out, and their counts are shown.

``--scope provider`` sets the same rate on the carrier instead (issue 3, item 2: each
adapter declares a rate, held fleet-wide): the stream has no limit of its own and the
sandbox declares ``STREAMS_SANDBOX_MAX_PER_SECOND = --rate``, the provider bucket of the
same Lua call.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
import redis

from bench.backlog import (
    check_job_encoding,
    copy_messages,
    create_stream_row,
    new_account,
    push_deliveries,
)
from bench.environment import scratch_database, scratch_redis
from bench.ingress_report import machine_info, write_report
from bench.pools import (
    CpuWatch,
    process_environment,
    running_pool,
    running_relay,
    scrape_metrics,
    streams_worker_argv,
)
from bench.runs import (
    RESULTS,
    add_service_options,
    bounded_run,
    main_guard,
    new_run_id,
    progress,
    stop_on_signals,
    wait_for,
)
from bench.servers import free_port
from schemas.enums import StreamType

#: From the issue: each 10 s window within ±5% of what the limit allows.
TARGET_DEVIATION = 0.05
WINDOW_SECONDS = 10
#: Extra backlog beyond the measured span: start-up, the skipped first second, the tail.
BACKLOG_MARGIN_SECONDS = 30
POOL_METRICS = (
    "streams_messages_held_total",
    "streams_rate_limit_delays_total",
    "streams_rate_limit_delay_seconds_count",
    "streams_segments_sent_total",
)


@dataclass(frozen=True)
class Options:
    duration: int
    rate: int
    processes: int
    threads: int
    messages: int
    two_segment_share: float
    scope: str
    postgres_url: str
    redis_url: str
    max_seconds: float


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/limits.py",
        description="Segments sent per 10 s and 1 s window by a worker pool draining one "
        "rate-limited stream, against the stream's limit.",
    )
    parser.add_argument(
        "--duration", type=int, default=60, help="measured seconds, a multiple of 10 (60)"
    )
    parser.add_argument("--rate", type=int, default=100, help="max_per_second, segments (100)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--threads", type=int, default=8, help="threads per process (8)")
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="backlog size (default: enough segments for the duration + "
        f"{BACKLOG_MARGIN_SECONDS} s at the limit)",
    )
    parser.add_argument(
        "--two-segment-share",
        type=float,
        default=0.5,
        help="share of two-segment messages in the backlog (0.5)",
    )
    parser.add_argument(
        "--scope",
        choices=("stream", "provider"),
        default="stream",
        help="whose rate: the stream's max_per_second (default) or the carrier's, declared "
        "by the sandbox (STREAMS_SANDBOX_MAX_PER_SECOND) with no limit on the stream",
    )
    add_service_options(parser)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration % WINDOW_SECONDS:
        parser.error(f"--duration must be a positive multiple of {WINDOW_SECONDS}")
    if min(args.rate, args.processes, args.threads) <= 0:
        parser.error("--rate, --processes and --threads must be positive")
    if not 0 <= args.two_segment_share <= 1:
        parser.error("--two-segment-share must be within 0..1")
    average = 1 + args.two_segment_share
    messages = args.messages or math.ceil(
        args.rate * (args.duration + BACKLOG_MARGIN_SECONDS) / average
    )
    return Options(
        duration=args.duration,
        rate=args.rate,
        processes=args.processes,
        threads=args.threads,
        messages=messages,
        two_segment_share=args.two_segment_share,
        scope=args.scope,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        max_seconds=args.max_seconds or args.duration + 240,
    )


@dataclass(frozen=True)
class Claim:
    """One ``sending`` event: when (epoch seconds), how many segments, and whether the
    message had been parked and put back on the queue by the relay before."""

    at: float
    segments: int
    came_back: bool


def read_claims(database_url: str, loaded_at: datetime) -> list[Claim]:
    """Every ``sending`` event, in time order. ``came_back``: the message's ``enqueued_at``
    is later than the backlog's, so the relay enqueued it again after it was parked."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT extract(epoch FROM e.at)::float8, m.segments, m.enqueued_at > %s"
            " FROM message_events e JOIN messages m ON m.id = e.message_id"
            " WHERE e.status = 'sending' ORDER BY e.at",
            (loaded_at,),
        ).fetchall()
    return [Claim(at, segments, bool(came_back)) for at, segments, came_back in rows]


def backlog_left(database_url: str, redis_url: str, queue: str) -> dict[str, int]:
    """What was still waiting when the pool stopped: queued rows (parked ones apart) and
    jobs on the Redis queue and its delay queue."""
    with psycopg.connect(database_url) as connection:
        queued, parked = connection.execute(
            "SELECT count(*) FILTER (WHERE status = 'queued'),"
            " count(*) FILTER (WHERE status = 'queued' AND hold_reason = 'rate_limited')"
            " FROM messages"
        ).fetchone() or (0, 0)
    client = redis.Redis.from_url(redis_url)
    try:
        on_queue = client.llen(f"dramatiq:{queue}")
        delayed = client.hlen(f"dramatiq:{queue}.DQ.msgs")
    finally:
        client.close()
    return {
        "queued_messages": int(queued),
        "parked_rate_limited": int(parked),
        "jobs_on_redis_queue": int(on_queue),
        "jobs_on_delay_queue": int(delayed),
    }


def admission_state(
    database_url: str, redis_url: str, stream_id: str, scope: str
) -> dict[str, Any]:
    """How far ahead of now the limiting bucket's GCRA state (the stream's, or the sandbox
    carrier's with ``--scope provider``) and the stream's waiting schedule are
    (``workers/admission.py`` keys, microseconds on Redis' clock), and when the parked
    messages are due back (``not_before`` relative to now)."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"streams:limits:stream:{stream_id}"
    bucket = f"{prefix}:tat" if scope == "stream" else "streams:limits:provider:sandbox:tat"
    try:
        seconds, micros = client.time()
        now_us = seconds * 1_000_000 + micros
        tat, waiting = client.mget(bucket, f"{prefix}:waiting")
    finally:
        client.close()
    with psycopg.connect(database_url) as connection:
        due = [
            row[0]
            for row in connection.execute(
                "SELECT extract(epoch FROM not_before - now())::float8 FROM messages"
                " WHERE status = 'queued' AND hold_reason = 'rate_limited' ORDER BY 1"
            )
        ]
    return {
        "tat_ahead_s": round((int(tat) - now_us) / 1e6, 3) if tat else None,
        "waiting_schedule_ahead_s": round((int(waiting) - now_us) / 1e6, 3) if waiting else None,
        "parked_due_in_s": {
            "count": len(due),
            "min": round(due[0], 1) if due else None,
            "median": round(statistics.median(due), 1) if due else None,
            "max": round(due[-1], 1) if due else None,
        },
    }


def windows(claims: list[Claim], start: float, size: float, count: int) -> list[int]:
    """Segments claimed in each of ``count`` windows of ``size`` seconds from ``start``."""
    sums = [0] * count
    for claim in claims:
        index = math.floor((claim.at - start) / size)
        if 0 <= index < count:
            sums[index] += claim.segments
    return sums


def busiest_second(claims: list[Claim], start: float, end: float) -> int:
    """The most segments claimed in any sliding 1 s interval within [start, end)."""
    inside = [c for c in claims if start <= c.at < end]
    best, total, left = 0, 0, 0
    for claim in inside:
        total += claim.segments
        while claim.at - inside[left].at >= 1.0:
            total -= inside[left].segments
            left += 1
        best = max(best, total)
    return best


def window_stats(sums: list[int], expected: float) -> dict[str, Any]:
    deviations = [(s - expected) / expected for s in sums]
    worst = max(deviations, key=abs) if deviations else 0.0
    return {
        "expected": expected,
        "segments": sums,
        "deviation": [round(d, 4) for d in deviations],
        "max_abs_deviation": round(abs(worst), 4),
        "worst_deviation": round(worst, 4),
        "min": min(sums) if sums else 0,
        "max": max(sums) if sums else 0,
        "mean": round(statistics.fmean(sums), 2) if sums else 0.0,
        "stdev": round(statistics.pstdev(sums), 2) if sums else 0.0,
    }


def analyse(
    claims: list[Claim], options: Options, first_claim: float, stopped_at: float
) -> dict[str, Any]:
    """Windows, throughput and how the claimed messages waited."""
    start = math.ceil(first_claim)  # the first, partial second is left out
    end = start + options.duration
    ten = windows(claims, start, WINDOW_SECONDS, options.duration // WINDOW_SECONDS)
    one = windows(claims, start, 1.0, options.duration)
    measured = [c for c in claims if start <= c.at < end]
    segments = sum(c.segments for c in measured)
    # Time lost per claim: the gap to the next claim beyond what the limit requires.
    interval = 1.0 / options.rate
    lateness = [
        (after.at - before.at) - before.segments * interval
        for before, after in zip(measured, measured[1:], strict=False)
    ]
    ten_stats = window_stats(ten, WINDOW_SECONDS * options.rate)
    return {
        "first_claim_epoch": first_claim,
        "measured_from_epoch": start,
        "measured_to_epoch": end,
        "pool_stopped_epoch": stopped_at,
        "skipped_before": {
            "seconds": round(start - first_claim, 3),
            "segments": sum(c.segments for c in claims if c.at < start),
        },
        "skipped_after": {
            "seconds": round(stopped_at - end, 3),
            "segments": sum(c.segments for c in claims if c.at >= end),
        },
        "windows_10s": ten_stats,
        "windows_1s": window_stats(one, float(options.rate)),
        "busiest_sliding_second": busiest_second(claims, start, end),
        "target_deviation": TARGET_DEVIATION,
        "target_met": ten_stats["max_abs_deviation"] <= TARGET_DEVIATION,
        "segments_per_second": round(segments / options.duration, 2),
        "messages_per_second": round(len(measured) / options.duration, 2),
        "gap_beyond_spacing_ms": {
            "mean": round(statistics.fmean(lateness) * 1000, 3) if lateness else None,
            "median": round(statistics.median(lateness) * 1000, 3) if lateness else None,
        },
        "claimed_messages": len(claims),
        "claimed_after_being_parked": sum(1 for c in claims if c.came_back),
        "claimed_on_first_delivery": sum(1 for c in claims if not c.came_back),
    }


def run(options: Options, run_id: str, stack: ExitStack) -> dict[str, Any]:
    """Set up, drain for the duration, stop, read the claims back; returns the report."""
    check_job_encoding()
    database_url = stack.enter_context(scratch_database(options.postgres_url))
    redis_url = stack.enter_context(scratch_redis(options.redis_url))
    account_id, _ = new_account(database_url, "limits benchmark")
    stream = create_stream_row(
        database_url,
        account_id,
        name="limits benchmark",
        stream_type=StreamType.transactional,
        settings={"max_per_second": options.rate} if options.scope == "stream" else {},
    )
    backlog = copy_messages(
        database_url, stream, options.messages, two_segment_share=options.two_segment_share
    )
    progress(
        f"backlog: {len(backlog.ids)} messages, {backlog.total_segments} segments "
        f"({backlog.total_segments / options.rate:.0f} s at the limit), "
        f"written in {backlog.copy_seconds:.1f} s"
    )
    metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="streams-bench-metrics-"))
    metrics_port = free_port()
    # The pool's metrics (several processes) are aggregated from files in this folder.
    env = {**process_environment(database_url, redis_url), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if options.scope == "provider":
        env["STREAMS_SANDBOX_MAX_PER_SECOND"] = str(options.rate)
    pool_stack = stack.enter_context(ExitStack())
    pool = pool_stack.enter_context(
        running_pool(
            "transactional pool",
            streams_worker_argv(
                stream.queue, options.processes, options.threads, metrics_port=metrics_port
            ),
            processes=options.processes,
            redis_url=redis_url,
            env=env,
            log_path=RESULTS / f"{run_id}-workers.log",
        )
    )
    relay = pool_stack.enter_context(running_relay(env, RESULTS / f"{run_id}-relay.log"))
    progress(f"{options.processes} worker processes and the relay are up; enqueueing")
    pushed, push_seconds = push_deliveries(redis_url, stream.queue, backlog.ids)
    progress(f"{pushed} jobs on dramatiq:{stream.queue} in {push_seconds:.1f} s")

    first: list[float] = []

    def claimed() -> bool:
        with psycopg.connect(database_url) as connection:
            row = connection.execute(
                "SELECT extract(epoch FROM min(at))::float8 FROM message_events"
                " WHERE status = 'sending'"
            ).fetchone()
        if row and row[0] is not None:
            first.append(row[0])
        return bool(first)

    wait_for(claimed, 60, "first claim")
    start = math.ceil(first[0])
    end = start + options.duration
    progress(f"first claim; measuring {options.duration} s from the next whole second")
    cpu = CpuWatch({"workers": pool.pid, "relay": relay.pid})
    cpu.start()
    while time.time() < end + 0.5:
        time.sleep(min(1.0, max(0.05, end + 0.5 - time.time())))
        if pool.process.poll() is not None or relay.poll() is not None:
            raise RuntimeError("the pool or the relay exited during the run (see their logs)")
    cpu_cores = cpu.stop()
    pool_metrics = scrape_metrics(metrics_port, POOL_METRICS)
    left = backlog_left(database_url, redis_url, stream.queue)
    admission = admission_state(database_url, redis_url, str(stream.id), options.scope)
    pool_stack.close()  # stop the pool and the relay before reading the claims back
    stopped_at = time.time()
    progress("pool stopped; reading claims")
    claims = read_claims(database_url, backlog.enqueued_at)
    return {
        "benchmark": "limits",
        "parameters": {
            **asdict(options),
            "backlog_messages": len(backlog.ids),
            "backlog_segments": backlog.total_segments,
        },  # fmt: skip
        "settings_seen_by_workers": {
            k: v
            for k, v in env.items()
            if k.startswith("STREAMS_")
            and "SECRET" not in k
            and k not in ("STREAMS_DATABASE_URL", "STREAMS_REDIS_URL")
        },  # fmt: skip
        "timings": {"copy_s": round(backlog.copy_seconds, 2), "push_s": round(push_seconds, 2)},
        "result": analyse(claims, options, first[0], stopped_at),
        "pool_metrics": pool_metrics,
        "left_at_stop": left,
        "admission_at_stop": admission,
        "cpu_cores": cpu_cores,
    }


def format_report(report: dict[str, Any]) -> str:
    """The result for people."""
    params, result = report["parameters"], report["result"]
    ten, one = result["windows_10s"], result["windows_1s"]
    lines = [
        f"Streams limit accuracy: max_per_second = {params['rate']} segments "
        f"({'the carrier' if params.get('scope') == 'provider' else 'the stream'}), "
        f"{params['processes']} worker processes × {params['threads']} threads + 1 relay, "
        f"{params['duration']} s measured",
        f"backlog: {params['backlog_messages']} messages, {params['backlog_segments']} segments "
        f"({params['two_segment_share'] * 100:.0f}% two-segment)",
        "",
        f"10 s windows (expected {ten['expected']:.0f} segments each)",
        "  window   from   segments  deviation",
    ]
    for index, (sums, deviation) in enumerate(zip(ten["segments"], ten["deviation"], strict=True)):
        lines.append(
            f"  {index + 1:6d}  {index * WINDOW_SECONDS:4d} s  {sums:9d}  {deviation * 100:+8.1f}%"
        )
    lines += [
        f"  max deviation {ten['max_abs_deviation'] * 100:.1f}%   (target ±"
        f"{result['target_deviation'] * 100:.0f}%: {'met' if result['target_met'] else 'MISSED'})",
        "",
        f"1 s windows (expected {one['expected']:.0f} each; informative): min {one['min']}, "
        f"max {one['max']}, mean {one['mean']}, stdev {one['stdev']}, "
        f"max deviation {one['max_abs_deviation'] * 100:.0f}%",
        f"  per second: {' '.join(str(s) for s in one['segments'])}",
        f"  busiest sliding 1 s: {result['busiest_sliding_second']} segments",
        "",
        f"throughput over the measured span: {result['segments_per_second']:.1f} segments/s, "
        f"{result['messages_per_second']:.1f} messages/s",
        f"gap between claims beyond the limit's spacing (segments × {1000 / params['rate']:g} "
        f"ms): mean {result['gap_beyond_spacing_ms']['mean']} ms, median "
        f"{result['gap_beyond_spacing_ms']['median']} ms",
        f"skipped: the first {result['skipped_before']['seconds']:.2f} s after the first claim "
        f"({result['skipped_before']['segments']} segments) and the "
        f"{result['skipped_after']['seconds']:.2f} s after the span until the pool stopped "
        f"({result['skipped_after']['segments']} segments)",
        "",
        f"how the {result['claimed_messages']} claimed messages waited:",
        f"  {result['claimed_on_first_delivery']} went on their first delivery (no wait, or an "
        "inline wait in the worker thread)",
        f"  {result['claimed_after_being_parked']} had been parked in PostgreSQL (hold_reason "
        "rate_limited) and were put back on the queue by the relay",
    ]
    metrics = report["pool_metrics"]
    if metrics:
        # The delay histogram holds a message once, when it is sent after an inline wait
        # or parked: what it holds beyond the parkings went after an inline wait.
        parkings = metrics.get("streams_messages_held_total", 0)
        inline = metrics.get("streams_rate_limit_delay_seconds_count", 0) - parkings
        lines += [
            f"  pool metrics: {parkings:.0f} parkings, "
            f"{metrics.get('streams_rate_limit_delays_total', 0):.0f} 'wait' answers from "
            f"admission, {inline:.0f} sends after an inline wait",
        ]
    left, admission = report["left_at_stop"], report["admission_at_stop"]
    lines += [
        f"  at stop: {left['queued_messages']} messages still queued "
        f"({left['parked_rate_limited']} parked), {left['jobs_on_redis_queue']} jobs on the "
        f"queue, {left['jobs_on_delay_queue']} on its delay queue"
        + ("" if left["queued_messages"] else "  ← the backlog ran out: not saturated!"),
    ]
    low = [i + 1 for i, d in enumerate(ten["deviation"]) if d < -result["target_deviation"]]
    if low and left["queued_messages"]:
        lines.append(
            f"  NOTE: window(s) {', '.join(map(str, low))} fell short while "
            f"{left['queued_messages']} messages were still queued: the stream was starved by "
            "its own parked messages, not by an empty backlog"
        )
    lines += [
        f"  admission at stop: TAT {admission['tat_ahead_s']} s ahead of now, waiting "
        f"schedule {admission['waiting_schedule_ahead_s']} s ahead; parked messages due back "
        f"in {admission['parked_due_in_s']['min']} .. {admission['parked_due_in_s']['max']} s "
        f"(median {admission['parked_due_in_s']['median']} s)",
        "",
        "CPU in cores during the span (bench = this process; machine busy as a share): "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["cpu_cores"].items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    run_id, started = new_run_id("limits")
    stop_on_signals()
    with ExitStack() as stack, bounded_run(options.max_seconds):
        report = run(options, run_id, stack)
    report["started_at"] = started.isoformat(timespec="seconds")
    report["machine"] = machine_info()
    print(format_report(report))
    path = write_report(report, RESULTS / f"{run_id}.json")
    print(f"\nwritten: {path.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    main_guard(main)
