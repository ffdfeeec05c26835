"""Sampling profiles of a running server with py-spy, summarised as text.

py-spy attaches to the process from outside (no code change, all threads) and writes
collapsed stacks (``frame;frame;frame count``). By default only the thread holding the GIL is
sampled (``--gil``): a one-process Python server can run one thread of Python at a time, so
the interpreter is the resource that bounds its throughput, and the shares below are shares
of the time it was held. py-spy's other mode (every thread it does not judge idle) counts
threads parked on locks and sockets as busy often enough to blur the picture when dozens of
pool threads are waiting, so it is only an option (``gil=False``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINE_NUMBER = re.compile(r":\d+\)$")
_OWN_PACKAGES = ("cli", "core", "dispatcher", "schemas", "workers", "bench")


class ProfilerFailed(RuntimeError):
    """py-spy could not attach or wrote no profile; the message says why."""


def py_spy_path() -> str | None:
    """The py-spy next to this interpreter (``pip install py-spy``), else on ``PATH``."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def sampling(pid: int, output: Path, *, rate: int = 250, gil: bool = True) -> Iterator[Path]:
    """Sample process ``pid`` with py-spy while the block runs; the collapsed stacks are in
    ``output`` afterwards. ``gil`` samples only the thread holding the GIL (see the module
    docstring).

    ``--nonblocking``: py-spy reads the stacks without stopping the server. Stopping it (the
    default) costs a server with forty pool threads about 40% of its throughput and skews
    the shares towards the event loop; the price of not stopping it is that some samples
    catch a stack while it changes and lose their outer frames (so cumulative shares are lower
    bounds; own shares are unaffected).

    Raises ``ProfilerFailed`` if py-spy is missing, cannot attach, or writes nothing.
    """
    path = py_spy_path()
    if path is None:
        raise ProfilerFailed("py-spy is not installed (.venv/bin/pip install py-spy)")
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [path, "record", "--pid", str(pid), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
    argv += ["--gil"] if gil else []
    log_path = output.with_suffix(".log")
    with log_path.open("wb") as log:
        profiler = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.0)  # let it attach before the load starts
        if profiler.poll() is not None:
            raise ProfilerFailed(f"py-spy exited at start:\n{log_path.read_text(errors='replace')}")
        yield output
    finally:
        if profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
    if not output.exists() or output.stat().st_size == 0:
        raise ProfilerFailed(f"py-spy wrote no profile:\n{log_path.read_text(errors='replace')}")


@dataclass(frozen=True)
class Hotspot:
    """A function (``name (file)``) or a package, and its share of all samples."""

    name: str
    samples: int
    share: float


@dataclass(frozen=True)
class ProfileSummary:
    """Where the samples fell. ``cumulative``: the function is anywhere on the stack;
    ``ours``: the same for this project's own functions only; ``own``: the function is the
    innermost Python frame; ``by_package``: own time grouped by the package the innermost
    frame belongs to."""

    samples: int
    cumulative: list[Hotspot]
    ours: list[Hotspot]
    own: list[Hotspot]
    by_package: list[Hotspot]

    def as_dict(self) -> dict[str, Any]:
        def rows(spots: list[Hotspot]) -> list[dict[str, Any]]:
            return [{"name": s.name, "samples": s.samples, "share": s.share} for s in spots]

        return {
            "samples": self.samples,
            "cumulative": rows(self.cumulative),
            "ours": rows(self.ours),
            "own": rows(self.own),
            "by_package": rows(self.by_package),
        }


def summarize_collapsed(text: str, *, top: int = 25) -> ProfileSummary:
    """Summarise py-spy's raw (collapsed) output: the ``top`` functions by cumulative samples
    (all, and this project's), by own samples, and own samples by package. Malformed lines are
    skipped."""
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function_of(frame) for frame in stack.split(";")]
        total += count
        for name in set(frames):
            cumulative[name] += count
        own[frames[-1]] += count
        packages[package_of(frames[-1])] += count
    ours = Counter(
        {name: n for name, n in cumulative.items() if package_of(name).startswith("streams:")}
    )
    return ProfileSummary(
        samples=total,
        cumulative=_ranked(cumulative, total, top),
        ours=_ranked(ours, total, top),
        own=_ranked(own, total, top),
        by_package=_ranked(packages, total, top),
    )


def _function_of(frame: str) -> str:
    """``name (file.py:12)`` → ``name (file.py)``: lines of one function count together."""
    return _LINE_NUMBER.sub(")", frame)


def package_of(function: str) -> str:
    """The package a ``name (path)`` function lives in: the top folder of its path (our own
    packages are marked ``streams:``), or the module for a single-file module."""
    _, _, location = function.rpartition(" (")
    path = location.rstrip(")")
    head = path.split("/", 1)[0]
    if head in _OWN_PACKAGES:
        return f"streams:{head}"
    return head.removesuffix(".py") or function


def _ranked(counts: Counter[str], total: int, top: int) -> list[Hotspot]:
    return [
        Hotspot(name, samples, round(samples / total, 4) if total else 0.0)
        for name, samples in counts.most_common(top)
    ]


def format_summary(title: str, summary: ProfileSummary, *, top: int = 25) -> str:
    """A plain-text report of ``summary``: cumulative top, this project's functions, own-time
    top, and packages."""
    lines = [f"== profile: {title} ({summary.samples} samples) =="]
    sections = (
        ("top functions by cumulative share (on the stack)", summary.cumulative[:top]),
        ("this project's functions by cumulative share", summary.ours[:15]),
        ("top functions by own share (innermost Python frame)", summary.own[:15]),
        ("own share by package", summary.by_package[:15]),
    )
    for heading, spots in sections:
        lines.append(f"-- {heading}")
        lines.extend(f"{spot.share * 100:6.1f}%  {spot.name}" for spot in spots)
    return "\n".join(lines)
