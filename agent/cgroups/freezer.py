"""Freeze and thaw every process of a cgroup (v1 ``freezer.state``, v2 ``cgroup.freeze``).

Why poll: freezing is asynchronous in both layouts. v1 reports FREEZING until every task
has stopped (a task in uninterruptible sleep can hold that up), and re-writing FROZEN
nudges the kernel to retry those tasks; v2 reports completion as ``frozen 1`` in
``cgroup.events``. These calls block for at most ``timeout`` seconds, so the agent runs
them in its worker threads, never on the event loop.
"""

from __future__ import annotations

import time

from agent.cgroups.files import read_kv, read_text, write_value
from agent.cgroups.layout import Cgroup, CgroupV1, CgroupV2
from agent.errors import DeadlineExceeded, FailedPrecondition

FROZEN, THAWED, FREEZING = "FROZEN", "THAWED", "FREEZING"


def freezer_state(cgroup: Cgroup) -> str:
    """FROZEN, THAWED or FREEZING."""
    if isinstance(cgroup, CgroupV2):
        if read_kv(cgroup.path / "cgroup.events").get("frozen") == 1:
            return FROZEN
        wanted = (read_text(cgroup.path / "cgroup.freeze") or "0").strip()
        return FREEZING if wanted == "1" else THAWED
    text = read_text(_v1_dir(cgroup) / "freezer.state")
    if text is None:
        raise FailedPrecondition(f"cgroup {cgroup} has no freezer.state")
    return text.strip()


def freeze(cgroup: Cgroup, timeout: float = 10.0) -> None:
    """Freeze the cgroup and wait until every task is frozen."""
    _set(cgroup, True, timeout)


def thaw(cgroup: Cgroup, timeout: float = 10.0) -> None:
    """Thaw the cgroup and wait until it reports THAWED."""
    _set(cgroup, False, timeout)


def _v1_dir(cgroup: CgroupV1):
    d = cgroup.dir("freezer")
    if d is None:
        raise FailedPrecondition("the freezer cgroup controller is not mounted")
    return d


def _set(cgroup: Cgroup, frozen: bool, timeout: float) -> None:
    goal = FROZEN if frozen else THAWED
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if isinstance(cgroup, CgroupV2):
            write_value(cgroup.path / "cgroup.freeze", "1" if frozen else "0", field="freezer")
        else:
            write_value(_v1_dir(cgroup) / "freezer.state", goal, field="freezer")
        if freezer_state(cgroup) == goal:
            return
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"cgroup {cgroup} did not become {goal} within {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
