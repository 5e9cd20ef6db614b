"""Widen containers' cpusets after CPUs were hot-added (OnlineCPUMem).

A cgroup v1 cpuset keeps the CPU list it was created with, so a container
started before a CPU hotplug would never run on the new CPUs.  As the
upstream agent does, containers whose spec did not pin CPUs get the cgroup
root's list again.  In v1 a child's list must be a subset of its parent's,
so every ancestor is widened first, from the top down.
"""

from __future__ import annotations

from pathlib import Path

from agent.cgroups.layout import Cgroup, CgroupV1


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def root_cpus(cgroup: Cgroup) -> str | None:
    """The CPU list the cgroup root holds now (the kernel keeps it up to date), or None."""
    if isinstance(cgroup, CgroupV1):
        leaf = cgroup.dir("cpuset")
        if leaf is None:
            return None
        top = leaf
        while (top.parent / "cpuset.cpus").exists() and top.parent != top:
            top = top.parent
        name = "cpuset.cpus"
    else:
        top, name = cgroup.path, "cpuset.cpus.effective"
        while (top.parent / "cgroup.controllers").exists() and top.parent != top:
            top = top.parent
    try:
        return (top / name).read_text().strip() or None
    except OSError:
        return None


def refresh_cpuset(cgroup: Cgroup, cpus: str) -> bool:
    """Give ``cgroup`` (and, in v1, its ancestors) the CPU list ``cpus``; False if no cpuset."""
    if isinstance(cgroup, CgroupV1):
        leaf = cgroup.dir("cpuset")
        if leaf is None or not (leaf / "cpuset.cpus").exists():
            return False
        chain = [leaf]
        while (chain[-1].parent / "cpuset.cpus").exists() and (
            chain[-1].parent.parent / "cpuset.cpus"
        ).exists():
            chain.append(chain[-1].parent)
        for directory in reversed(chain):  # ancestors first: a child may not exceed its parent
            _write(directory / "cpuset.cpus", cpus)
        return True
    target = cgroup.path / "cpuset.cpus"
    if not target.exists():
        return False
    _write(target, cpus)
    return True
