"""The ingress benchmark's report: the figures against the targets, the parameters and the
machine, as one JSON document and as a table for people.

Everything here works on JSON-ready dicts (a run is ``Measurement.as_dict()`` of
``bench.ingress``), so a saved report can be read back and printed again.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.load import wrk_version

#: From the issue: single sends at least half the trivial endpoint's rate ...
SINGLE_TARGET_RATIO = 0.5
#: ... and batch sends at least this many messages per second.
BATCH_TARGET_PER_SECOND = 50_000

#: A run with fewer accepted requests than this gives no stable rate or latency.
MIN_ANSWERS = 20

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "sqlalchemy",
    "psycopg", "dramatiq", "redis", "phonenumbers", "structlog",
)  # fmt: skip


def summarize(
    baseline: list[dict[str, Any]], single: list[dict[str, Any]], batch: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over rounds, the single-send ratio and the verdicts against the targets."""
    baseline_rps = _median(baseline, "accepted_per_second")
    single_rps = _median(single, "accepted_per_second")
    batch_mps = _median(batch, "items_per_second")
    ratio = single_rps / baseline_rps if baseline_rps else 0.0
    return {
        "baseline_rps": round(baseline_rps, 1),
        "single_rps": round(single_rps, 1),
        "single_ratio": round(ratio, 3),
        "single_target_ratio": SINGLE_TARGET_RATIO,
        "single_target_met": ratio >= SINGLE_TARGET_RATIO,
        "batch_messages_per_second": round(batch_mps, 1),
        "batch_target_per_second": BATCH_TARGET_PER_SECOND,
        "batch_target_met": batch_mps >= BATCH_TARGET_PER_SECOND,
        "per_round_single_ratio": [
            round(s["accepted_per_second"] / b["accepted_per_second"], 3)
            if b["accepted_per_second"]
            else None
            for b, s in zip(baseline, single, strict=True)
        ],
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs) if runs else 0.0


def machine_info() -> dict[str, Any]:
    """CPU count, model, load, Python and library versions, the commit under test."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version(),
        "packages": versions,
        "git": _git_revision(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_revision() -> str | None:
    """The short commit, with ``-dirty`` when tracked files have changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def format_table(report: dict[str, Any]) -> str:
    """The result for people: single sends against the baseline, batches against the target,
    and who used the CPU in each run."""
    params, summary, runs = report["parameters"], report["summary"], report["runs"]
    lines = [
        f"Streams ingress benchmark: {report['machine']['nproc']} CPUs, {params['generator']}, "
        f"{params['duration_s']:g} s per run, {params['rounds']} round(s), medians shown",
        "",
        f"single sends (1 message per request, {params['concurrency']} connections)",
        _header("req/s", "CPU µs/req"),
        _row(f"baseline (trivial, {params['baseline_route']})", runs["baseline"], items=False),
        _row("streams serve", runs["single"], items=False),
        f"  ratio streams / baseline: {summary['single_ratio']:.3f}"
        f"   (target ≥ {summary['single_target_ratio']}: {_verdict(summary['single_target_met'])})",
        "",
        f"batch sends ({params['batch_size']} messages per request, "
        f"{params['batch_connections']} connections)",
        _header("msg/s", "CPU µs/msg"),
        _row("streams serve", runs["batch"], items=True),
        f"  target ≥ {summary['batch_target_per_second']:,} msg/s: "
        f"{_verdict(summary['batch_target_met'])} "
        f"({summary['batch_messages_per_second'] / summary['batch_target_per_second']:.2f}×)",
        "",
        "each run: CPU in cores: server (its kernel part) / postgres / redis / load generator;",
        "share of the machine busy; PostgreSQL commits per request and sessions opened",
    ]
    for key in ("baseline", "single", "batch"):
        lines.extend(f"  {key:9s}{_resources(run)}" for run in runs[key])
    profiles = report["profiles"]
    for kind, entry in profiles.items():
        lines.append(f"  {kind + '*':9s}{_resources(entry['measurement'])}")
    if profiles:
        rates = ", ".join(
            f"{kind} {entry['measurement']['accepted_per_second']:.1f} req/s"
            for kind, entry in profiles.items()
        )
        lines.append(f"  * under py-spy (slower): {rates}")
    few = [
        f"{kind} ({min(run['answered_202'] for run in runs[kind])})"
        for kind in ("baseline", "single", "batch")
        if runs[kind] and min(run["answered_202"] for run in runs[kind]) < MIN_ANSWERS
    ]
    if few:
        lines += [
            "",
            f"note: fewer than {MIN_ANSWERS} accepted requests in a run of: {', '.join(few)};",
            "those figures are not stable (or zero): use a longer --duration.",
        ]
    if params["generator"] == "httpx":
        lines += [
            "",
            "note: the httpx generator needs more CPU per request than the baseline itself, so",
            "the baseline's rate (and the ratio) says more about the generator: install wrk.",
        ]
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _header(rate: str, cost: str) -> str:
    return (
        f"  {'':28s}{rate:>10s}{'p50 ms':>9s}{'p99 ms':>9s}{'errors':>8s}{'srv CPU':>9s}{cost:>12s}"
    )


def _row(label: str, runs: list[dict[str, Any]], *, items: bool) -> str:
    """The median rate over rounds, with latency and CPU from the round closest to it."""
    key = "items_per_second" if items else "accepted_per_second"
    rate = _median(runs, key)
    run = min(runs, key=lambda r: abs(r[key] - rate))
    latency = run["latency_ms"]
    server_cores = run["cpu_cores"]["server"]
    cost_us = server_cores / run[key] * 1e6 if run[key] else float("nan")
    errors = sum(r["error_count"] for r in runs)
    return (
        f"  {label:28s}{rate:10.1f}{latency.get('p50', float('nan')):9.2f}"
        f"{latency.get('p99', float('nan')):9.2f}{errors:8d}{server_cores:9.2f}{cost_us:12.1f}"
    )


def _resources(run: dict[str, Any]) -> str:
    """CPU use and PostgreSQL activity of one run, on one line."""
    cpu = run["cpu_cores"]
    text = (
        f"{cpu['server']:5.2f} ({cpu['server_system']:4.2f}) / {cpu['postgres']:5.2f} / "
        f"{cpu['redis-server']:5.2f} / {cpu['load_generator']:5.2f}"
        f"   busy {cpu['machine'] * 100:3.0f}%"
    )
    counters = run.get("postgres_counters")
    if counters and run["answered_202"]:
        text += (
            f"   PG {counters['xact_commit'] / run['answered_202']:5.1f} commits/req,"
            f" {counters['sessions']} sessions"
        )
    return text


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write ``report`` as indented JSON to ``path`` (its folder is created); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
