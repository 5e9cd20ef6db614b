"""Where a container's cgroup lives, in the v1 (one hierarchy per controller) or v2 layout.

Everything is found from a configurable cgroup root (``/sys/fs/cgroup`` in a guest), so
tests can point at a real hierarchy or a fake tree alike. A cgroup is found either from
the ``cgroupsPath`` given to the runtime or, more robustly, from ``/proc/<pid>/cgroup``
of one of its processes (which is right whatever the runtime did with the path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from agent.errors import InvalidArgument, NotFound

DEFAULT_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
)


@dataclass(frozen=True)
class CgroupV1:
    """A cgroup in the v1 layout: one directory per mounted controller."""

    dirs: dict[str, Path]
    version: ClassVar[int] = 1

    def dir(self, controller: str) -> Path | None:
        """This cgroup's directory in ``controller``'s hierarchy (None if not mounted)."""
        return self.dirs.get(controller)

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs.values())


@dataclass(frozen=True)
class CgroupV2:
    """A cgroup in the unified (v2) layout: one directory."""

    path: Path
    version: ClassVar[int] = 2

    def exists(self) -> bool:
        return self.path.is_dir()


Cgroup = CgroupV1 | CgroupV2


def is_v2(root: str | os.PathLike[str] = DEFAULT_ROOT) -> bool:
    """Whether ``root`` is a cgroup2 mount (it has ``cgroup.controllers`` at its top)."""
    return (Path(root) / "cgroup.controllers").exists()


def _relative(cgroup_path: str) -> str:
    parts = [p for p in cgroup_path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"cgroupsPath {cgroup_path!r} must not contain '..'")
    return "/".join(parts)


def _hierarchy_dir(root: Path, controller: str) -> Path | None:
    """The mount directory of ``controller`` under ``root`` (handles ``cpu,cpuacct``).

    A directory only counts if it has ``cgroup.procs``, i.e. a hierarchy is mounted there:
    /sys/fs/cgroup is a tmpfs, and names of unmounted controllers can exist on it as
    plain directories (another mount namespace created them).
    """
    direct = root / controller
    if (direct / "cgroup.procs").exists():
        return direct
    try:
        for entry in os.scandir(root):
            if controller in entry.name.split(",") and os.path.exists(
                os.path.join(entry.path, "cgroup.procs")
            ):
                return Path(entry.path)
    except FileNotFoundError:
        return None
    return None


def open_cgroup(cgroup_path: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> Cgroup:
    """The cgroup at ``cgroup_path`` (as in ``linux.cgroupsPath``, absolute) under ``root``."""
    base = Path(root)
    rel = _relative(cgroup_path)
    if is_v2(base):
        return CgroupV2(base / rel)
    dirs: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        hierarchy = _hierarchy_dir(base, controller)
        if hierarchy is not None:
            dirs[controller] = hierarchy / rel
    return CgroupV1(dirs)


def cgroup_of_pid(
    pid: int, root: str | os.PathLike[str] = DEFAULT_ROOT, proc: str | os.PathLike[str] = "/proc"
) -> Cgroup:
    """The cgroup(s) process ``pid`` is in, from ``/proc/<pid>/cgroup``."""
    base = Path(root)
    try:
        text = (Path(proc) / str(pid) / "cgroup").read_text()
    except FileNotFoundError:
        raise NotFound(f"process {pid} not found") from None
    if is_v2(base):
        for line in text.splitlines():
            if line.startswith("0::"):
                return CgroupV2(base / _relative(line[3:]))
        raise NotFound(f"process {pid} has no cgroup v2 membership")
    dirs: dict[str, Path] = {}
    for line in text.splitlines():
        _hid, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if not controller or controller.startswith("name="):
                continue
            hierarchy = _hierarchy_dir(base, controller)
            if hierarchy is not None:
                dirs[controller] = hierarchy / _relative(path)
    return CgroupV1(dirs)
