"""A worker pool's CPU priority on a shared host (``streams worker --nice N``).

On one host, a bulk pool (marketing) should take the CPU only when the latency-bound pools
(OTP, the ingress) leave it free. ``nice`` says so, but on Linux it is not enough by itself:
with autogrouping (``CONFIG_SCHED_AUTOGROUP``, on by default on most distributions, see
sched(7)) the scheduler first shares the CPU equally between *sessions*, and a process's
nice value only weighs against processes of its own session. A pool started in a session
of its own (by a process manager, systemd without a CPU controller, ``setsid``) would keep
an equal share however nice it is. Such a pool therefore also lowers its session's
autogroup weight, through ``/proc/self/autogroup``; a pool that shares its session with
others (started from one shell, one Procfile runner) leaves the session alone, since there
the process's nice value is what counts. In a container (its own cgroup) autogrouping does
not apply; CPU weights belong to the orchestrator there (``deploy/k8s``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: sched(7): the autogroup of the calling process's session, and its nice value.
AUTOGROUP_FILE = Path("/proc/self/autogroup")


@dataclass(frozen=True)
class CpuPriority:
    """What ``lower_cpu_priority`` did: the process's nice value after it, and the session's
    autogroup nice value if it set one (``None``: left alone, see the module docstring)."""

    nice: int
    session_nice: int | None


def lower_cpu_priority(increment: int, autogroup_file: Path = AUTOGROUP_FILE) -> CpuPriority:
    """Lower this process's CPU priority by ``increment`` nice steps (0 to 19), and, if it
    leads its session, its session's too, so the lower priority holds against processes in
    other sessions. Children started afterwards inherit it. Raising a priority needs
    privileges, so negative increments raise ``ValueError``; a session weight the kernel
    refuses is logged and the process's own nice value still applies."""
    if not 0 <= increment <= 19:
        raise ValueError(f"nice increment must be 0 to 19, got {increment}")
    if increment == 0:
        return CpuPriority(os.nice(0), None)
    nice = os.nice(increment)
    session_nice = None
    if os.getsid(0) == os.getpid() and autogroup_file.exists():
        try:
            autogroup_file.write_text(f"{nice}\n")
            session_nice = nice
        except OSError as exc:
            log.warning("session_cpu_priority_refused", nice=nice, error=str(exc))
    log.info("cpu_priority_lowered", nice=nice, session_nice=session_nice, pid=os.getpid())
    return CpuPriority(nice, session_nice)


def autogroup_nice(autogroup_file: Path = AUTOGROUP_FILE) -> int | None:
    """The nice value of this process's session autogroup (``/autogroup-N nice K``), or
    ``None`` where the kernel has no autogrouping."""
    try:
        return int(autogroup_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None
