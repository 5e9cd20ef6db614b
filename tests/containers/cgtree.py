"""Per-test cgroups on the real host hierarchies, created under this process's own cgroups.

Why under our own cgroup and not at the hierarchy root: the machine that runs the tests
accounts our memory in a cgroup of its own; nesting keeps test containers inside it.
Everything created here is removed in ``cleanup`` (processes killed, dirs removed leaf
first), even after a failed test.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from agent.cgroups import CgroupV1, CgroupV2

ROOT = Path("/sys/fs/cgroup")


def _own_v1_hierarchies() -> dict[str, tuple[Path, str]]:
    """controller -> (its mount dir, our cgroup dir path relative to that mount).

    Only hierarchies mounted in this mount namespace count: /proc/self/cgroup also lists
    hierarchies that other namespaces mounted, whose names may exist here as plain
    directories on the /sys/fs/cgroup tmpfs.
    """
    mounts: dict[str, tuple[Path, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] != "cgroup":
            continue
        for opt in fields[sep + 3].split(","):
            if opt not in ("rw", "ro") and "=" not in opt or opt.startswith("name="):
                mounts[opt.removeprefix("name=")] = (Path(fields[4]), fields[3])
    out: dict[str, tuple[Path, str]] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for name in (c.removeprefix("name=") for c in controllers.split(",") if c):
            if name in mounts:
                mount_dir, mount_root = mounts[name]
                rel = path[len(mount_root) :] if mount_root != "/" and path.startswith(mount_root) else path
                out[name] = (mount_dir, rel)
    return out


def _init_cpuset(d: Path) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (d / name).exists() and not (d / name).read_text().strip():
            (d / name).write_text((d.parent / name).read_text())


class V1Tree:
    """A parent cgroup ``kata-test-<random>`` in every v1 hierarchy we are in."""

    def __init__(self, prefix: str = "kata-test") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        hierarchies = _own_v1_hierarchies()
        if "memory" not in hierarchies:
            raise RuntimeError(
                "no cgroup v1 memory hierarchy on this host: the container tests need cgroup v1"
            )
        self.parents: dict[str, Path] = {}
        self._made: list[Path] = []
        self._sources: dict[str, Path] = {}
        for controller, (mount_dir, path) in hierarchies.items():
            d = mount_dir / path.lstrip("/") / self.name
            if d not in self._made:
                d.mkdir()
                _init_cpuset(d)
                self._made.append(d)
                self._sources[mount_dir.name] = d
            self.parents[controller] = d

    def mount_sources(self) -> dict[str, Path]:
        """hierarchy mount directory name -> our parent cgroup in it."""
        return dict(self._sources)

    def child(self, rel: str) -> CgroupV1:
        """Create ``rel`` below the parent in every hierarchy; returns its handle."""
        dirs: dict[str, Path] = {}
        for controller, parent in self.parents.items():
            d = parent / rel
            d.mkdir(parents=True, exist_ok=True)
            _init_cpuset(d)
            dirs[controller] = d
        return CgroupV1({c: d for c, d in dirs.items() if c != "systemd"})

    def cleanup(self) -> None:
        for d in self._made:
            remove_tree(d)


class V2Tree:
    """A parent cgroup in the host's cgroup2 hierarchy (``/sys/fs/cgroup/unified`` here)."""

    def __init__(self, prefix: str = "kata-test") -> None:
        mount = ROOT / "unified" if (ROOT / "unified" / "cgroup.procs").exists() else ROOT
        if not (mount / "cgroup.controllers").exists():
            raise RuntimeError("no cgroup2 hierarchy mounted on this host")
        own = next(
            line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
        )
        self.mount = mount
        self.path = mount / own.lstrip("/") / f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def child(self, rel: str) -> CgroupV2:
        d = self.path / rel
        d.mkdir(parents=True, exist_ok=True)
        return CgroupV2(d)

    def cleanup(self) -> None:
        remove_tree(self.path)


def add_process(cgroup: CgroupV1 | CgroupV2, pid: int) -> None:
    """Move ``pid`` into the cgroup (every hierarchy for v1)."""
    dirs = [cgroup.path] if isinstance(cgroup, CgroupV2) else list(cgroup.dirs.values())
    for d in dirs:
        (d / "cgroup.procs").write_text(str(pid))


def remove_tree(top: Path, timeout: float = 10.0) -> None:
    """Kill every process below ``top`` and remove the cgroups, leaf first."""
    if not top.exists():
        return
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        d = Path(dirpath)
        _thaw(d)
        deadline = time.monotonic() + timeout
        while True:
            pids = (
                [int(p) for p in (d / "cgroup.procs").read_text().split()]
                if (d / "cgroup.procs").exists()
                else []
            )
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _thaw(d: Path) -> None:
    """A frozen cgroup cannot be emptied: thaw before killing."""
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        f = d / name
        if f.exists():
            try:
                f.write_text(value)
            except OSError:
                pass


def cpu_ticks(pid: int) -> int:
    """User+system clock ticks the process has used (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def assert_freezes(pid: int, freeze, thaw) -> None:
    """A CPU-burning ``pid`` makes no progress between ``freeze()`` and ``thaw()``, then does.

    Frozen means exactly zero ticks, so this holds on a loaded machine; progress after
    thawing is awaited for seconds, not assumed.
    """
    freeze()
    before = cpu_ticks(pid)
    time.sleep(0.3)
    assert cpu_ticks(pid) == before, "a frozen process kept running"
    thaw()
    deadline = time.monotonic() + 10
    while cpu_ticks(pid) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cpu_ticks(pid) > before, "the thawed process did not run again"
