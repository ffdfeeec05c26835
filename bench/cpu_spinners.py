"""Busy loops that keep every core busy at the lowest CPU priority there is: the control
scenario of ``bench/otp_latency.py``.

    .venv/bin/python bench/cpu_spinners.py [COUNT]

A spinner does no I/O and touches no database, queue or shared memory. Whatever it does to
a measured latency is what a busy machine costs by itself (cores that share a physical core
or its caches, clock speeds, a vCPU's scheduling on its host), not priorities or locks,
which it leaves free; but only if the kernel really gives way to everything else, which
takes two things on Linux:

* ``SCHED_IDLE`` (sched(7)) for each spinner: the kernel runs it only when nothing else in
  its scheduling group wants the core, and takes the core back the moment another task of
  the group wakes;
* a scheduling group that is idle too. The kernel first shares a core between groups
  (cgroups, and without them the *autogroup* of each session), and a ``SCHED_IDLE`` task's
  group competes as an equal with the others: spinners in a session of their own would
  take half the machine from a server in another. So each spinner joins a CPU cgroup with
  ``cpu.idle = 1`` (cgroup v2, or v1's ``cpu`` controller; Linux 5.15 and later, as root),
  which makes the whole group give way. Where that is refused, the spinners lower their
  autogroup to nice 19 instead, the most a process may do there: no longer an idle group,
  and the report says so.

The leader forks ``COUNT - 1`` children (``COUNT`` defaults to the number of cores) and spins
with them; stopping its process group stops them all (``bench.servers.running_process``).
Its first line of output says where the spinners run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runs import wait_for
from bench.servers import running_process

#: The idle CPU cgroup the spinners join, under each hierarchy that has ``cpu.idle``: this
#: prefix and the leader's pid, so that runs side by side never share (or remove) one.
CGROUP_PREFIX = "streams-bench-idle"
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu"))
AUTOGROUP_FILE = Path("/proc/self/autogroup")


def idle_cgroups(leader: int) -> list[Path]:
    """The directory of ``leader``'s idle cgroup under each CPU hierarchy of this machine:
    cgroup v2 with the ``cpu`` controller, or v1's ``cpu``."""
    groups = []
    for root in CGROUP_ROOTS:
        controllers = root / "cgroup.controllers"
        v2 = controllers.exists() and "cpu" in controllers.read_text().split()
        if v2 or (root / "cpu.shares").exists():
            groups.append(root / f"{CGROUP_PREFIX}-{leader}")
    return groups


def join_idle_cgroup() -> Path | None:
    """Move this process into an idle CPU cgroup; the cgroup's directory, or ``None`` where
    the kernel or the permissions refuse."""
    for group in idle_cgroups(os.getpid()):
        try:
            subtree = group.parent / "cgroup.subtree_control"
            if subtree.exists():  # v2: the parent hands the cpu controller down
                subtree.write_text("+cpu\n")
            group.mkdir(exist_ok=True)
            (group / "cpu.idle").write_text("1\n")
            (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
        except OSError:
            continue
        return group
    return None


def lowest_priority() -> str:
    """Put this process under ``SCHED_IDLE`` in an idle group (see the module docstring);
    returns what it got, in words."""
    policy = "nice 19"
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        policy = "SCHED_IDLE"
    else:
        os.nice(19 - os.nice(0))
    group = join_idle_cgroup()
    if group is not None:
        return f"{policy} in the idle cgroup {group}"
    try:
        AUTOGROUP_FILE.write_text("19\n")
    except OSError:
        return f"{policy}; NOT in an idle group (no cgroup, autogroup refused)"
    return f"{policy}, autogroup nice 19; NOT in an idle group (the cgroup was refused)"


#: The first word of the leader's first line, which says where the spinners run.
READY = "spinners:"


def spin(count: int) -> None:
    """Spin in ``count`` processes (this one and ``count - 1`` forks) until killed, or until
    the process that started each one is gone: spinners left behind by a benchmark killed
    with SIGKILL would turn every later run into a "busy" one."""
    print(f"{READY} {count}, {lowest_priority()}", flush=True)  # the children inherit it
    for _ in range(count - 1):
        if os.fork() == 0:
            break
    parent = os.getppid()
    while os.getppid() == parent:
        for _ in range(1_000_000):  # about 20 ms of CPython between checks
            pass


@dataclass(frozen=True)
class Spinners:
    pid: int  # the leader's: its process tree holds them all
    priority: str  # the leader's first line: where they run


@contextmanager
def running_spinners(count: int, log_path: Path) -> Iterator[Spinners]:
    """Run ``count`` spinners for the duration of the block, then remove their cgroup."""
    argv = [sys.executable, str(Path(__file__).resolve()), str(count)]
    leader = None
    try:
        with running_process("cpu spinners", argv, log_path=log_path, grace=2.0) as process:
            leader = process.pid
            wait_for(lambda: bool(log_path.read_text().strip()), 10, "the spinners' first line")
            first = log_path.read_text().splitlines()[0]
            if process.poll() is not None or not first.startswith(READY):
                raise RuntimeError(f"the spinners did not start:\n{log_path.read_text()}")
            yield Spinners(leader, first)
    finally:
        if leader is not None:
            remove_idle_cgroups(leader)


def remove_idle_cgroups(leader: int, patience: float = 2.0) -> None:
    """Remove ``leader``'s idle cgroups once the spinners killed with them have left (best
    effort: an empty cgroup left behind costs nothing)."""
    deadline = time.monotonic() + patience
    for group in idle_cgroups(leader):
        while group.exists():
            try:
                group.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else os.cpu_count() or 1
    if count <= 0:
        raise SystemExit("COUNT must be positive")
    spin(count)


if __name__ == "__main__":
    main(sys.argv[1:])
