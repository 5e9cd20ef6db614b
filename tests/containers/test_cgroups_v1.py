"""cgroup v1, for real: cgroups created under ours on the host hierarchies, real processes."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cgroups
from agent.cgroups import CgroupV1, OomEvent
from agent.errors import FailedPrecondition, InvalidArgument, NotFound

from .cgtree import V1Tree, add_process, assert_freezes

MiB = 1024 * 1024

# Waits for a line on stdin (so we can move it into a cgroup first), allocates and touches
# ALLOC bytes, says "ready", then burns CPU until stdin closes.
CHILD = """
import os, sys, selectors
sys.stdin.readline()
data = b"x" * int(os.environ["ALLOC"])
print("ready", flush=True)
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ)
while not sel.select(0):
    pass
"""


class Child:
    """A python child we can move into a cgroup before it allocates."""

    def __init__(self, alloc: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "ALLOC": str(alloc)},
        )
        self.pid = self.proc.pid

    def go(self) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def wait_ready(self) -> None:
        assert self.proc.stdout
        assert self.proc.stdout.readline() == b"ready\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for s in (self.proc.stdin, self.proc.stdout):
            if s:
                s.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for c in made:
        c.stop()


def spawn(children: list[Child], cg: CgroupV1, alloc: int = 0) -> Child:
    child = Child(alloc)
    children.append(child)
    add_process(cg, child.pid)
    child.go()
    return child


def test_cgroup_of_pid_finds_each_hierarchy(v1_tree: V1Tree, children: list[Child]) -> None:
    cg = v1_tree.child("c1")
    child = spawn(children, cg)
    found = cgroups.cgroup_of_pid(child.pid)
    assert isinstance(found, CgroupV1)
    for controller in ("memory", "cpu", "cpuacct", "pids", "freezer", "blkio", "cpuset"):
        assert found.dir(controller) == cg.dir(controller)
    with pytest.raises(NotFound):
        cgroups.cgroup_of_pid(2**22 + 12345)


def test_stats(v1_tree: V1Tree, children: list[Child]) -> None:
    cg = v1_tree.child("stats")
    child = spawn(children, cg, alloc=24 * MiB)
    child.wait_ready()
    deadline = time.monotonic() + 20
    while cgroups.read_stats(cg).cpu_stats.cpu_usage.usage_in_usermode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = cgroups.read_stats(cg)
    cpu = stats.cpu_stats.cpu_usage
    assert cpu.total_usage > 0 and cpu.usage_in_usermode > 0
    assert len(cpu.percpu_usage) == os.cpu_count()
    assert sum(cpu.percpu_usage) <= cpu.total_usage * 1.01 + 1000
    mem = stats.memory_stats
    assert mem.usage.usage >= 24 * MiB
    assert mem.usage.max_usage >= mem.usage.usage
    assert mem.usage.limit >= 2**62  # unlimited in v1 reads as a huge page-rounded number
    assert mem.stats["rss"] >= 20 * MiB and mem.cache == mem.stats["cache"]
    assert mem.use_hierarchy == ((cg.dir("memory") / "memory.use_hierarchy").read_text().strip() == "1")
    assert stats.pids_stats.current == 1 and stats.pids_stats.limit == 0
    assert isinstance(stats.blkio_stats.io_service_bytes_recursive, list)
    later = cgroups.read_stats(cg).cpu_stats.cpu_usage.total_usage
    assert later >= cpu.total_usage


def test_stats_of_a_removed_cgroup(v1_tree: V1Tree) -> None:
    cg = v1_tree.child("gone")
    for d in cg.dirs.values():
        d.rmdir()
    with pytest.raises(NotFound):
        cgroups.read_stats(cg)


def test_apply_resources(v1_tree: V1Tree, children: list[Child]) -> None:
    cg = v1_tree.child("apply")
    spawn(children, cg)
    mem = cg.dir("memory")

    def read(controller: str, name: str) -> str:
        return (cg.dir(controller) / name).read_text().strip()

    cgroups.apply_resources(cg, {"memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 32 * MiB}})
    assert read("memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert read("memory", "memory.memsw.limit_in_bytes") == str(96 * MiB)
    assert read("memory", "memory.soft_limit_in_bytes") == str(32 * MiB)
    # Raising both above the current memsw needs memsw first; lowering needs limit first.
    cgroups.apply_resources(cg, {"memory": {"limit": 200 * MiB, "swap": 300 * MiB}})
    assert (read("memory", "memory.limit_in_bytes"), read("memory", "memory.memsw.limit_in_bytes")) == (
        str(200 * MiB),
        str(300 * MiB),
    )
    cgroups.apply_resources(cg, {"memory": {"limit": 48 * MiB, "swap": 50 * MiB, "swappiness": 10}})
    assert (read("memory", "memory.limit_in_bytes"), read("memory", "memory.memsw.limit_in_bytes")) == (
        str(48 * MiB),
        str(50 * MiB),
    )
    assert read("memory", "memory.swappiness") == "10"
    cgroups.apply_resources(cg, {"memory": {"limit": -1, "swap": -1}})
    assert int(read("memory", "memory.limit_in_bytes")) >= 2**62

    cgroups.apply_resources(
        cg, {"cpu": {"shares": 256, "period": 50000, "quota": 25000, "cpus": "0", "mems": "0"}}
    )
    assert read("cpu", "cpu.shares") == "256"
    assert (read("cpu", "cpu.cfs_period_us"), read("cpu", "cpu.cfs_quota_us")) == ("50000", "25000")
    assert (read("cpuset", "cpuset.cpus"), read("cpuset", "cpuset.mems")) == ("0", "0")
    cgroups.apply_resources(cg, {"cpu": {"quota": -1}})
    assert read("cpu", "cpu.cfs_quota_us") == "-1"

    cgroups.apply_resources(cg, {"pids": {"limit": 10}})
    assert read("pids", "pids.max") == "10"
    assert cgroups.read_stats(cg).pids_stats.limit == 10
    cgroups.apply_resources(cg, {"pids": {"limit": 0}})
    assert read("pids", "pids.max") == "max"

    vda = Path("/sys/block/vda/dev").read_text().strip()
    major, minor = (int(x) for x in vda.split(":"))
    cgroups.apply_resources(
        cg, {"blockIO": {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": MiB}]}}
    )
    assert read("blkio", "blkio.throttle.read_bps_device") == f"{vda} {MiB}"
    assert mem is not None


def test_apply_errors_name_the_field(v1_tree: V1Tree) -> None:
    cg = v1_tree.child("errors")
    with pytest.raises(InvalidArgument, match=r"linux\.resources\.cpu\.cpus"):
        cgroups.apply_resources(cg, {"cpu": {"cpus": "99"}})
    with pytest.raises(InvalidArgument, match=r"linux\.resources\.memory\.limit"):
        cgroups.apply_resources(cg, {"memory": {"limit": "lots"}})
    without_pids = CgroupV1({k: v for k, v in cg.dirs.items() if k != "pids"})
    with pytest.raises(FailedPrecondition, match=r"linux\.resources\.pids.*not mounted"):
        cgroups.apply_resources(without_pids, {"pids": {"limit": 5}})
    with pytest.raises(FailedPrecondition, match=r"hugepageLimits"):
        cgroups.apply_resources(cg, {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
    with pytest.raises(InvalidArgument, match=r"hugepageLimits\[0\]\.pageSize"):
        cgroups.apply_resources(
            CgroupV1({**cg.dirs, "hugetlb": cg.dirs["memory"]}), {"hugepageLimits": [{"pageSize": "../x"}]}
        )


def test_freezer(v1_tree: V1Tree, children: list[Child]) -> None:
    cg = v1_tree.child("freeze")
    child = spawn(children, cg)
    child.wait_ready()
    assert cgroups.freezer_state(cg) == cgroups.THAWED

    def freeze() -> None:
        cgroups.freeze(cg)
        assert cgroups.freezer_state(cg) == cgroups.FROZEN

    def thaw() -> None:
        cgroups.thaw(cg)
        assert cgroups.freezer_state(cg) == cgroups.THAWED

    assert_freezes(child.pid, freeze, thaw)


def wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_oom_eventfd(v1_tree: V1Tree, children: list[Child]) -> None:
    cg = v1_tree.child("oom")
    cgroups.apply_resources(cg, {"memory": {"limit": 32 * MiB}})
    watch = cgroups.watch_oom(cg)
    try:
        assert isinstance(watch, cgroups.V1OomWatch)
        assert watch.check() is OomEvent.NONE
        child = spawn(children, cg, alloc=256 * MiB)
        assert child.proc.wait(timeout=60) == -9
        assert wait_readable(watch.fd, 30)
        assert watch.check() is OomEvent.OOM
        assert watch.check() is OomEvent.NONE
        assert cgroups.read_stats(cg).memory_stats.usage.failcnt > 0
        oom_control = (cg.dir("memory") / "memory.oom_control").read_text()
        assert "oom_kill 1" in oom_control
        # Removing the cgroup also wakes the eventfd: that is GONE, not another OOM.
        cg.dir("memory").rmdir()
        assert wait_readable(watch.fd, 30)
        assert watch.check() is OomEvent.GONE
    finally:
        watch.close()
    with pytest.raises(NotFound):
        cgroups.V1OomWatch(v1_tree.parents["memory"] / "no-such-cgroup")


def test_open_cgroup_on_a_fake_v1_root(tmp_path: Path) -> None:
    """Co-mounted controllers (cpu,cpuacct with symlinks) resolve to one hierarchy."""
    root = tmp_path / "cgroup"
    for hierarchy in ("cpu,cpuacct", "memory", "net_cls,net_prio"):
        (root / hierarchy).mkdir(parents=True)
        (root / hierarchy / "cgroup.procs").touch()
    (root / "pids").mkdir()  # a plain directory, no hierarchy mounted there
    os.symlink("cpu,cpuacct", root / "cpu")
    assert not cgroups.is_v2(root)
    cg = cgroups.open_cgroup("/kata/c1", root)
    assert isinstance(cg, CgroupV1)
    assert cg.dir("cpu") == root / "cpu" / "kata/c1"
    assert cg.dir("cpuacct") == root / "cpu,cpuacct" / "kata/c1"
    assert cg.dir("net_prio") == root / "net_cls,net_prio" / "kata/c1"
    assert cg.dir("pids") is None
    with pytest.raises(InvalidArgument, match="cgroupsPath"):
        cgroups.open_cgroup("/kata/../../etc", root)
