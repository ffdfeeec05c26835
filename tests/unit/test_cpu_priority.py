"""``workers.cpu_priority``: a pool's lower CPU priority holds against other sessions.

Each case runs in a child process of its own, since a nice value cannot be raised back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.cpu_priority import autogroup_nice, lower_cpu_priority

CHILD = """
import json, os, sys
from workers.cpu_priority import autogroup_nice, lower_cpu_priority
done = lower_cpu_priority(int(sys.argv[1]))
print(json.dumps({"nice": done.nice, "session_nice": done.session_nice,
                  "niceness": os.getpriority(os.PRIO_PROCESS, 0),
                  "autogroup": autogroup_nice()}))
"""
REPO = Path(__file__).resolve().parents[2]
#: Where a +7 lands from the test run's own nice value (CI may run niced).
LOWERED = min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19)
autogrouping = pytest.mark.skipif(
    autogroup_nice() is None, reason="this kernel has no autogrouping (/proc/self/autogroup)"
)


def lowered_in_child(increment: int, *, own_session: bool) -> dict[str, int | None]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(increment)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        start_new_session=own_session,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])  # after the child's own log lines


@pytest.mark.parametrize(
    "own_session",
    [
        pytest.param(True, marks=autogrouping, id="a session leader lowers its session too"),
        pytest.param(False, id="a process sharing its session leaves the session alone"),
    ],
)
def test_the_session_is_lowered_only_by_its_leader(own_session: bool) -> None:
    ours = autogroup_nice()
    done = lowered_in_child(7, own_session=own_session)
    assert done == {
        "nice": LOWERED,
        "session_nice": LOWERED if own_session else None,
        "niceness": LOWERED,
        "autogroup": LOWERED if own_session else ours,
    }
    assert autogroup_nice() == ours


def test_zero_changes_nothing():
    done = lowered_in_child(0, own_session=True)
    assert done["session_nice"] is None
    assert done["niceness"] == done["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize("increment", [-1, 20])
def test_out_of_range_increments_are_refused(increment):
    with pytest.raises(ValueError, match="0 to 19"):
        lower_cpu_priority(increment)


def test_a_refused_session_weight_still_lowers_the_process(tmp_path):
    unwritable = tmp_path / "autogroup"
    unwritable.mkdir()  # writing a directory fails like a refused /proc write (OSError)
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from workers.cpu_priority import "
         "lower_cpu_priority as low; d = low(3, Path(sys.argv[1])); print(d.nice, d.session_nice)",
         str(unwritable)],
        capture_output=True, text=True, timeout=30, cwd=REPO, start_new_session=True, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == f"{min(os.getpriority(os.PRIO_PROCESS, 0) + 3, 19)} None"
    assert "session_cpu_priority_refused" in done.stdout
