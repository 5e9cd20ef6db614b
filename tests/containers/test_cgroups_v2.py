"""cgroup v2: what this host can show for real, and the parsers on a fake tree.

Real: this hybrid host mounts a cgroup2 hierarchy at /sys/fs/cgroup/unified with no
controller bound to it (memory, cpu, pids... are all v1 here, and one controller can only
be in one hierarchy). The core v2 files still work there: cgroup.procs, cgroup.freeze,
cgroup.events and cpu.stat's usage counters. So freezing, membership and CPU usage are
tested for real; memory/pids/io/hugetlb statistics, resource writes and the OOM watch's
parser are tested on a fake tree of regular files written in the kernel's formats (the
inotify fd itself is real, on a tmpfs file).
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cgroups
from agent.cgroups import UNLIMITED, CgroupV2, OomEvent
from agent.cgroups.stats import parse_blkio_v1
from agent.errors import FailedPrecondition, InvalidArgument, NotFound

from .cgtree import V2Tree, add_process, assert_freezes

BUSY = "import sys, select\nwhile not select.select([sys.stdin], [], [], 0)[0]:\n    pass\n"


@pytest.fixture
def busy() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()


def test_real_membership_cpu_and_freezer(v2_tree: V2Tree, busy: subprocess.Popen) -> None:
    cg = v2_tree.child("c1")
    add_process(cg, busy.pid)
    found = cgroups.cgroup_of_pid(busy.pid, root=v2_tree.mount)
    assert found == cg
    deadline = time.monotonic() + 20
    while cgroups.read_stats(cg).cpu_stats.cpu_usage.total_usage == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    usage = cgroups.read_stats(cg).cpu_stats.cpu_usage
    assert usage.total_usage > 0 and usage.total_usage % 1000 == 0  # usec scaled to ns
    assert usage.percpu_usage == []  # v2 has no per-CPU breakdown

    assert cgroups.freezer_state(cg) == cgroups.THAWED

    def freeze() -> None:
        cgroups.freeze(cg)
        assert cgroups.freezer_state(cg) == cgroups.FROZEN
        assert "frozen 1" in (cg.path / "cgroup.events").read_text()

    def thaw() -> None:
        cgroups.thaw(cg)
        assert cgroups.freezer_state(cg) == cgroups.THAWED

    assert_freezes(busy.pid, freeze, thaw)


def test_real_memory_watch_needs_the_controller(v2_tree: V2Tree) -> None:
    """Without a memory controller there is no memory.events to watch: a clear error."""
    cg = v2_tree.child("nomem")
    with pytest.raises(NotFound, match="memory.events"):
        cgroups.watch_oom(cg)


# ------------------------------------------------------------------ fake tree


def fake_v2(tmp_path: Path) -> CgroupV2:
    root = tmp_path / "cgroup2"
    d = root / "kata" / "c1"
    d.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    files = {
        "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
        "nr_periods 10\nnr_throttled 3\nthrottled_usec 250\n",
        "memory.current": "1048576\n",
        "memory.peak": "2097152\n",
        "memory.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        "memory.stat": "anon 524288\nfile 262144\nkernel 131072\nsock 0\n",
        "memory.swap.current": "4096\n",
        "memory.swap.max": "8388608\n",
        "memory.swap.events": "high 0\nmax 2\nfail 0\n",
        "pids.current": "3\n",
        "pids.max": "max\n",
        "io.stat": "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n"
        "253:1 rbytes=5 wbytes=6 rios=7 wios=8 dbytes=9 dios=10\n",
        "hugetlb.2MB.current": "2097152\n",
        "hugetlb.2MB.max": "max\n",
        "hugetlb.2MB.events": "max 1\n",
        "hugetlb.1GB.current": "0\n",
        "hugetlb.1GB.events": "max 0\n",
        "cpu.weight": "100\n",
        "cpu.max": "max 100000\n",
        "cpuset.cpus": "\n",
        "cpuset.mems": "\n",
        "memory.low": "0\n",
        "io.max": "\n",
        "io.weight": "default 100\n",
        "cgroup.freeze": "0\n",
        "cgroup.events": "populated 1\nfrozen 0\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    cg = cgroups.open_cgroup("/kata/c1", root)
    assert isinstance(cg, CgroupV2) and cg.path == d
    return cg


def test_fake_v2_stats(tmp_path: Path) -> None:
    stats = cgroups.read_stats(fake_v2(tmp_path))
    cpu = stats.cpu_stats
    assert (
        cpu.cpu_usage.total_usage,
        cpu.cpu_usage.usage_in_usermode,
        cpu.cpu_usage.usage_in_kernelmode,
    ) == (
        1_500_000,
        1_000_000,
        500_000,
    )
    assert (cpu.throttling_data.periods, cpu.throttling_data.throttled_periods) == (10, 3)
    assert cpu.throttling_data.throttled_time == 250_000
    mem = stats.memory_stats
    assert (mem.usage.usage, mem.usage.max_usage, mem.usage.failcnt, mem.usage.limit) == (
        1048576,
        2097152,
        4,
        UNLIMITED,
    )
    assert (mem.swap_usage.usage, mem.swap_usage.limit, mem.swap_usage.failcnt) == (4096, 8388608, 2)
    assert mem.kernel_usage.usage == 131072 and mem.cache == 262144 and mem.use_hierarchy
    assert mem.stats == {"anon": 524288, "file": 262144, "kernel": 131072, "sock": 0}
    assert (stats.pids_stats.current, stats.pids_stats.limit) == (3, 0)
    io = stats.blkio_stats
    assert [(e.major, e.minor, e.op, e.value) for e in io.io_service_bytes_recursive] == [
        (8, 0, "Read", 1024),
        (8, 0, "Write", 2048),
        (8, 0, "Discard", 0),
        (253, 1, "Read", 5),
        (253, 1, "Write", 6),
        (253, 1, "Discard", 9),
    ]
    assert [(e.op, e.value) for e in io.io_serviced_recursive][:2] == [("Read", 1), ("Write", 2)]
    assert set(stats.hugetlb_stats) == {"2MB", "1GB"}
    assert (stats.hugetlb_stats["2MB"].usage, stats.hugetlb_stats["2MB"].failcnt) == (2097152, 1)


def test_blkio_v1_parser() -> None:
    text = "8:0 Read 4096\n8:0 Write 0\n8:0 Sync 1\n8:0 Async 3\n8:0 Discard 0\n8:0 Total 4096\nTotal 4096\n"
    entries = parse_blkio_v1(text)
    assert [(e.major, e.minor, e.op, e.value) for e in entries][:2] == [
        (8, 0, "Read", 4096),
        (8, 0, "Write", 0),
    ]
    assert len(entries) == 6
    assert [(e.op, e.value) for e in parse_blkio_v1("8:16 12345\n")] == [("", 12345)]


def test_fake_v2_apply_resources(tmp_path: Path) -> None:
    cg = fake_v2(tmp_path)
    d = cg.path

    def read(name: str) -> str:
        return (d / name).read_text().strip()

    cgroups.apply_resources(
        cg, {"memory": {"limit": 1 << 30, "swap": (1 << 30) + (1 << 20), "reservation": 1 << 29}}
    )
    assert (read("memory.max"), read("memory.swap.max"), read("memory.low")) == (
        str(1 << 30),
        str(1 << 20),
        str(1 << 29),
    )
    cgroups.apply_resources(cg, {"memory": {"limit": -1, "swap": -1}})
    assert (read("memory.max"), read("memory.swap.max")) == ("max", "max")
    cgroups.apply_resources(cg, {"cpu": {"shares": 1024}})
    assert read("cpu.weight") == "39"
    cgroups.apply_resources(cg, {"cpu": {"quota": 50000}})
    assert read("cpu.max") == "50000 100000"
    cgroups.apply_resources(cg, {"cpu": {"period": 200000}})
    assert read("cpu.max") == "50000 200000"
    cgroups.apply_resources(cg, {"cpu": {"quota": -1, "cpus": "0-1", "mems": "0"}})
    assert (read("cpu.max"), read("cpuset.cpus"), read("cpuset.mems")) == ("max 200000", "0-1", "0")
    cgroups.apply_resources(cg, {"pids": {"limit": 42}})
    assert read("pids.max") == "42"
    cgroups.apply_resources(cg, {"pids": {"limit": -1}})
    assert read("pids.max") == "max"
    cgroups.apply_resources(cg, {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
    assert read("hugetlb.2MB.max") == str(4 << 20)
    cgroups.apply_resources(
        cg, {"blockIO": {"weight": 1000, "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 50}]}}
    )
    assert (read("io.weight"), read("io.max")) == ("default 10000", "8:0 wiops=50")

    with pytest.raises(InvalidArgument, match=r"memory\.swap .* below"):
        cgroups.apply_resources(cg, {"memory": {"limit": 100, "swap": 50}})
    with pytest.raises(InvalidArgument, match=r"memory\.swap needs a positive"):
        cgroups.apply_resources(cg, {"memory": {"swap": 50}})
    with pytest.raises(InvalidArgument, match="disableOOMKiller"):
        cgroups.apply_resources(cg, {"memory": {"disableOOMKiller": True}})
    (d / "pids.max").unlink()
    with pytest.raises(FailedPrecondition, match=r"linux\.resources\.pids\.limit"):
        cgroups.apply_resources(cg, {"pids": {"limit": 1}})


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 39), (262144, 10000), (0, 1), (10**9, 10000)])
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert cgroups.shares_to_weight(shares) == weight


def test_fake_v2_freezer_state(tmp_path: Path) -> None:
    cg = fake_v2(tmp_path)
    assert cgroups.freezer_state(cg) == cgroups.THAWED
    (cg.path / "cgroup.freeze").write_text("1\n")
    assert cgroups.freezer_state(cg) == cgroups.FREEZING
    (cg.path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert cgroups.freezer_state(cg) == cgroups.FROZEN


def test_memory_events_parser() -> None:
    events = cgroups.parse_memory_events("low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert events == {"low": 0, "high": 12, "max": 3, "oom": 2, "oom_kill": 1, "oom_group_kill": 0}
    assert cgroups.oom_kill_increased({"oom_kill": 1}, {"oom_kill": 2})
    assert not cgroups.oom_kill_increased({"oom_kill": 2}, {"oom_kill": 2, "high": 99})
    assert not cgroups.oom_kill_increased({}, {"oom": 1})  # an OOM without a kill
    assert cgroups.oom_kill_increased({}, {"oom_kill": 1})


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_v2_oom_watch_with_inotify(tmp_path: Path) -> None:
    cg = fake_v2(tmp_path)
    events = cg.path / "memory.events"
    watch = cgroups.watch_oom(cg)
    try:
        assert isinstance(watch, cgroups.V2OomWatch)
        assert not _readable(watch.fd, 0)
        events.write_text("low 0\nhigh 5\nmax 4\noom 1\noom_kill 1\n")  # only 'high' moved
        assert _readable(watch.fd, 5)
        assert watch.check() is OomEvent.NONE
        assert not _readable(watch.fd, 0)
        events.write_text("low 0\nhigh 5\nmax 5\noom 2\noom_kill 2\n")
        assert _readable(watch.fd, 5)
        assert watch.check() is OomEvent.OOM
        assert watch.check() is OomEvent.NONE
        events.unlink()
        assert _readable(watch.fd, 5)
        assert watch.check() is OomEvent.GONE
    finally:
        watch.close()
    assert watch.fd == -1
    watch.close()  # idempotent
