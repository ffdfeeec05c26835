"""Who used the CPU during a run, read from ``/proc`` (Linux; elsewhere the figures are 0).

On a 2-core machine the server, PostgreSQL, Redis and the load generator share two cores, so
a throughput figure means little without knowing which of them was saturated. PostgreSQL and
Redis are counted whole, by process name: other users of the same services count too.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Command names (``/proc/<pid>/comm``) of the services the ingress talks to.
SERVICES = ("postgres", "redis-server")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far, by party, and the wall clock when read."""

    wall: float
    server: float
    server_system: float
    services: dict[str, float]
    children: float
    machine_busy: float
    machine_total: float


def take_snapshot(server_pid: int) -> CpuSnapshot:
    """Read the CPU time of the server (all its threads), of the services by command name, of
    this process' finished children (wrk) plus itself (the httpx generator), and of the
    machine."""
    busy, total = _machine_seconds()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = process_cpu_split(server_pid)
    return CpuSnapshot(
        wall=time.monotonic(),
        server=user + system,
        server_system=system,
        services={name: _command_cpu_seconds(name) for name in SERVICES},
        children=own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
        machine_busy=busy,
        machine_total=total,
    )


def usage_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Average use between two snapshots, in cores (1.0 = one core fully busy); the
    ``machine`` entry is the share of all cores that was busy (0..1), ``server_system`` the
    part of the server's use spent in the kernel (system calls, scheduling)."""
    wall = max(after.wall - before.wall, 1e-9)
    usage = {
        "server": (after.server - before.server) / wall,
        "server_system": (after.server_system - before.server_system) / wall,
        "load_generator": (after.children - before.children) / wall,
    }
    for name in SERVICES:
        usage[name] = (after.services[name] - before.services[name]) / wall
    spent = after.machine_total - before.machine_total
    usage["machine"] = (after.machine_busy - before.machine_busy) / spent if spent else 0.0
    return {name: round(value, 3) for name, value in usage.items()}


def process_cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """User plus system CPU seconds of ``pid`` (0.0 if it is gone or /proc is missing), and
    of its children that exited and were waited for, if asked."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # After the command name: utime, stime, cutime, cstime are fields 14 to 17 (man proc).
    used = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def process_cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``, all threads (zeros if it is gone)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0, 0.0
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or []."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _command_cpu_seconds(command: str) -> float:
    """CPU seconds of every process named ``command``, plus what their exited children used
    (PostgreSQL's postmaster reaps backends that close, and their time moves to it)."""
    total = 0.0
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != command:
                continue
        except OSError:
            continue
        total += process_cpu_seconds(int(entry.name), with_reaped_children=True)
    return total


def _machine_seconds() -> tuple[float, float]:
    """Busy and total CPU seconds of all cores since boot, from the ``cpu`` line of
    ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0, 0.0
    ticks = [int(value) for value in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / _TICKS, sum(ticks) / _TICKS
