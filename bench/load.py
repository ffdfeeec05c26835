"""Load generators: ``wrk`` (C, preferred: it leaves the CPU to the server) and an asyncio
``httpx`` fallback. Both run a fixed body against one URL for a fixed time, and both count a
request as accepted only when it is answered 202.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

Generator = Literal["wrk", "httpx"]

RESULT_MARK = "BENCH_RESULT "

# Counts answers per wrk thread and reports once, as one JSON line, from the main Lua state.
# The accepted item count is read from the head of the 202 body ({"accepted": N, ...}); the
# trivial baseline has no such field, so only its 202s count there.
_WRK_SCRIPT = """
local body_file = assert(io.open(%(body_path)s, "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered_202 = 0
  items_accepted = 0
  other_status = 0
end

function response(status, headers, body)
  if status == 202 then
    answered_202 = answered_202 + 1
    local n = string.match(body, '^%%s*{%%s*"accepted"%%s*:%%s*(%%d+)')
    if n then items_accepted = items_accepted + tonumber(n) end
  else
    other_status = other_status + 1
  end
end

function done(summary, latency, requests)
  local a, i, o = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("answered_202")
    i = i + t:get("items_accepted")
    o = o + t:get("other_status")
  end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"duration_us": %%d, "responses": %%d, "answered_202": %%d, "items_accepted": %%d, '
    .. '"other_status": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, '
    .. '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.duration, summary.requests, a, i, o, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


@dataclass(frozen=True)
class LoadSpec:
    """One load run: POST ``body`` to ``url`` over ``connections`` kept-alive connections for
    ``duration`` seconds; a request not answered within ``timeout`` seconds is an error."""

    url: str
    body: bytes
    headers: dict[str, str]
    connections: int
    duration: float
    timeout: float = 30.0


@dataclass(frozen=True)
class LoadResult:
    """What one load run saw. Latencies are per request (a whole batch for batch sends)."""

    generator: Generator
    duration_s: float
    responses: int
    answered_202: int
    #: Sum of ``accepted`` in the 202 bodies (0 for a server that does not report it).
    items_accepted: int
    #: Non-202 answers and transport errors, by kind.
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def accepted_per_second(self) -> float:
        return self.answered_202 / self.duration_s if self.duration_s else 0.0

    @property
    def items_per_second(self) -> float:
        return self.items_accepted / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived rates included."""
        return {
            **asdict(self),
            "accepted_per_second": round(self.accepted_per_second, 1),
            "items_per_second": round(self.items_per_second, 1),
            "error_count": self.error_count,
        }


def wrk_path() -> str | None:
    """Where ``wrk`` is installed, if it is (``apt-get install wrk``)."""
    return shutil.which("wrk")


def wrk_version() -> str | None:
    """The first line ``wrk`` prints about itself, or ``None`` without wrk."""
    path = wrk_path()
    if path is None:
        return None
    completed = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0] if lines else "wrk"


def choose_generator(requested: str) -> Generator:
    """``auto`` picks wrk when installed and httpx otherwise. Raises ``RuntimeError`` when
    wrk is asked for and missing."""
    if requested == "httpx":
        return "httpx"
    if wrk_path() is not None:
        return "wrk"
    if requested == "wrk":
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    return "httpx"


def run_load(spec: LoadSpec, generator: Generator, *, wrk_threads: int = 1) -> LoadResult:
    """Run ``spec`` with the chosen generator; blocks for about ``spec.duration`` seconds."""
    if generator == "wrk":
        return run_wrk(spec, threads=wrk_threads)
    return asyncio.run(run_httpx(spec))


def run_wrk(spec: LoadSpec, *, threads: int = 1) -> LoadResult:
    """Run wrk with a Lua script that posts ``spec.body`` and counts 202 answers.

    Raises ``RuntimeError`` if wrk fails or prints no result line.
    """
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="streams-bench-") as scratch:
        body_path = Path(scratch) / "body.json"
        body_path.write_bytes(spec.body)
        script_path = Path(scratch) / "post.lua"
        script_path.write_text(
            _WRK_SCRIPT % {"body_path": json.dumps(str(body_path)), "mark": RESULT_MARK}
        )
        argv = [
            path,
            f"--threads={max(1, min(threads, spec.connections))}",
            f"--connections={spec.connections}",
            f"--duration={max(1, round(spec.duration))}s",
            f"--timeout={max(1, round(spec.timeout))}s",
            f"--script={script_path}",
        ]
        for name, value in spec.headers.items():
            argv.append(f"--header={name}: {value}")
        argv.append(spec.url)
        completed = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=spec.duration + 120
        )
    return _parse_wrk_output(completed)


def _parse_wrk_output(completed: subprocess.CompletedProcess[str]) -> LoadResult:
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            raw = json.loads(line[len(RESULT_MARK) :])
            break
    else:
        raise RuntimeError(
            f"wrk exited with {completed.returncode} and no result:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    errors = {
        "non_202": raw["other_status"],
        "connect": raw["connect"],
        "read": raw["read"],
        "write": raw["write"],
        "timeout": raw["timeout"],
    }
    return LoadResult(
        generator="wrk",
        duration_s=raw["duration_us"] / 1e6,
        responses=raw["responses"],
        answered_202=raw["answered_202"],
        items_accepted=raw["items_accepted"],
        errors={kind: count for kind, count in errors.items() if count},
        latency_ms={
            "p50": raw["p50_us"] / 1e3,
            "p90": raw["p90_us"] / 1e3,
            "p99": raw["p99_us"] / 1e3,
            "max": raw["max_us"] / 1e3,
            "mean": round(raw["mean_us"] / 1e3, 3),
        },
    )


async def run_httpx(spec: LoadSpec) -> LoadResult:
    """The fallback generator: ``spec.connections`` asyncio tasks, each posting in a loop
    until the deadline. It runs in this process and competes with the server for CPU, so its
    figures are lower bounds."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    answered_202 = 0
    items_accepted = 0
    limits = httpx.Limits(
        max_connections=spec.connections, max_keepalive_connections=spec.connections
    )
    headers = {"Content-Type": "application/json", **spec.headers}
    async with httpx.AsyncClient(limits=limits, timeout=spec.timeout, headers=headers) as client:
        started = time.perf_counter()
        deadline = started + spec.duration

        async def post_until_deadline() -> None:
            nonlocal answered_202, items_accepted
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.post(spec.url, content=spec.body)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.TransportError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                if response.status_code == 202:
                    answered_202 += 1
                    accepted = response.json().get("accepted")
                    items_accepted += accepted if isinstance(accepted, int) else 0
                else:
                    errors["non_202"] += 1

        await asyncio.gather(*(post_until_deadline() for _ in range(spec.connections)))
        elapsed = time.perf_counter() - started
    return LoadResult(
        generator="httpx",
        duration_s=elapsed,
        responses=len(latencies),
        answered_202=answered_202,
        items_accepted=items_accepted,
        errors=dict(errors),
        latency_ms=latency_summary_ms(latencies),
    )


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50, p90, p99 (nearest rank), max and mean of latencies given in seconds, in ms."""
    if not latencies_s:
        return {}
    ordered = sorted(latencies_s)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {
        "p50": round(rank(50) * 1e3, 3),
        "p90": round(rank(90) * 1e3, 3),
        "p99": round(rank(99) * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
        "mean": round(sum(ordered) / len(ordered) * 1e3, 3),
    }
