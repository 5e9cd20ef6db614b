"""Read a container's cgroup statistics into ``CgroupStats`` (v1 and v2 layouts).

Best effort by design: a controller that is not mounted, or a file this kernel does not
have, leaves its fields at zero instead of failing StatsContainer. Only a cgroup that is
entirely gone is an error (NotFound), because then every number would be a lie.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.cgroups.files import read_int, read_ints, read_kv, read_limit, read_text
from agent.cgroups.layout import Cgroup, CgroupV1, CgroupV2
from agent.cgroups.model import (
    UNLIMITED,
    BlkioStats,
    BlkioStatsEntry,
    CgroupStats,
    CpuStats,
    CpuUsage,
    HugetlbStats,
    MemoryData,
    MemoryStats,
    PidsStats,
    ThrottlingData,
)
from agent.errors import NotFound

NS_PER_USEC = 1000


def read_stats(cgroup: Cgroup) -> CgroupStats:
    """All statistics of ``cgroup``; NotFound if it no longer exists."""
    if not cgroup.exists():
        raise NotFound(f"cgroup {cgroup} not found")
    if isinstance(cgroup, CgroupV2):
        return _v2_stats(cgroup.path)
    return _v1_stats(cgroup)


# ------------------------------------------------------------------------- v1


def _v1_stats(cg: CgroupV1) -> CgroupStats:
    stats = CgroupStats()
    if (d := cg.dir("cpuacct")) is not None:
        stats.cpu_stats.cpu_usage = _v1_cpu_usage(d)
    if (d := cg.dir("cpu")) is not None:
        kv = read_kv(d / "cpu.stat")
        stats.cpu_stats.throttling_data = ThrottlingData(
            periods=kv.get("nr_periods", 0),
            throttled_periods=kv.get("nr_throttled", 0),
            throttled_time=kv.get("throttled_time", 0),
        )
    if (d := cg.dir("memory")) is not None:
        stats.memory_stats = _v1_memory(d)
    if (d := cg.dir("pids")) is not None:
        stats.pids_stats = PidsStats(
            current=read_int(d / "pids.current") or 0, limit=read_int(d / "pids.max") or 0
        )
    if (d := cg.dir("blkio")) is not None:
        stats.blkio_stats = _v1_blkio(d)
    if (d := cg.dir("hugetlb")) is not None:
        for size in _page_sizes(d, ".limit_in_bytes"):
            prefix = f"hugetlb.{size}."
            stats.hugetlb_stats[size] = HugetlbStats(
                usage=read_int(d / f"{prefix}usage_in_bytes") or 0,
                max_usage=read_int(d / f"{prefix}max_usage_in_bytes") or 0,
                failcnt=read_int(d / f"{prefix}failcnt") or 0,
            )
    return stats


def _v1_cpu_usage(d: Path) -> CpuUsage:
    usage = CpuUsage(
        total_usage=read_int(d / "cpuacct.usage") or 0, percpu_usage=read_ints(d / "cpuacct.usage_percpu")
    )
    user, system = read_int(d / "cpuacct.usage_user"), read_int(d / "cpuacct.usage_sys")
    if user is None or system is None:
        # Older kernels only have cpuacct.stat, in clock ticks.
        ticks = read_kv(d / "cpuacct.stat")
        ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        user, system = ticks.get("user", 0) * ns_per_tick, ticks.get("system", 0) * ns_per_tick
    usage.usage_in_usermode, usage.usage_in_kernelmode = user, system
    return usage


def _v1_memory_data(d: Path, prefix: str) -> MemoryData:
    return MemoryData(
        usage=read_int(d / f"{prefix}usage_in_bytes") or 0,
        max_usage=read_int(d / f"{prefix}max_usage_in_bytes") or 0,
        failcnt=read_int(d / f"{prefix}failcnt") or 0,
        limit=read_int(d / f"{prefix}limit_in_bytes") or 0,
    )


def _v1_memory(d: Path) -> MemoryStats:
    kv = read_kv(d / "memory.stat")
    return MemoryStats(
        cache=kv.get("cache", 0),
        usage=_v1_memory_data(d, "memory."),
        swap_usage=_v1_memory_data(d, "memory.memsw."),
        kernel_usage=_v1_memory_data(d, "memory.kmem."),
        use_hierarchy=(read_int(d / "memory.use_hierarchy") or 0) == 1,
        stats=kv,
    )


# v1 blkio: the CFQ/BFQ files when the I/O scheduler provides them, else the throttle
# layer's (which only counts bytes and operations).
_V1_BLKIO = {
    "io_service_bytes_recursive": (
        "blkio.io_service_bytes_recursive",
        "blkio.bfq.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes_recursive",
    ),
    "io_serviced_recursive": (
        "blkio.io_serviced_recursive",
        "blkio.bfq.io_serviced_recursive",
        "blkio.throttle.io_serviced_recursive",
    ),
    "io_queued_recursive": ("blkio.io_queued_recursive", "blkio.bfq.io_queued_recursive"),
    "io_service_time_recursive": ("blkio.io_service_time_recursive", "blkio.bfq.io_service_time_recursive"),
    "io_wait_time_recursive": ("blkio.io_wait_time_recursive", "blkio.bfq.io_wait_time_recursive"),
    "io_merged_recursive": ("blkio.io_merged_recursive", "blkio.bfq.io_merged_recursive"),
    "io_time_recursive": ("blkio.time_recursive", "blkio.bfq.time_recursive"),
    "sectors_recursive": ("blkio.sectors_recursive", "blkio.bfq.sectors_recursive"),
}


def _v1_blkio(d: Path) -> BlkioStats:
    stats = BlkioStats()
    for attr, candidates in _V1_BLKIO.items():
        for name in candidates:
            text = read_text(d / name)
            if text is not None:
                setattr(stats, attr, parse_blkio_v1(text))
                break
    return stats


def parse_blkio_v1(text: str) -> list[BlkioStatsEntry]:
    """``MAJ:MIN [Op] value`` lines; the trailing ``Total N`` line is dropped."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        try:
            if len(parts) == 3:
                entries.append(BlkioStatsEntry(int(major), int(minor), parts[1], int(parts[2])))
            elif len(parts) == 2:
                entries.append(BlkioStatsEntry(int(major), int(minor), "", int(parts[1])))
        except ValueError:
            continue
    return entries


def _page_sizes(d: Path, suffix: str) -> list[str]:
    """Huge page sizes ("2MB", "1GB") that have a ``hugetlb.<size><suffix>`` file."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return sorted(
        n[len("hugetlb.") : -len(suffix)] for n in names if n.startswith("hugetlb.") and n.endswith(suffix)
    )


# ------------------------------------------------------------------------- v2


def _v2_stats(d: Path) -> CgroupStats:
    cpu = read_kv(d / "cpu.stat")
    stats = CgroupStats(
        cpu_stats=CpuStats(
            cpu_usage=CpuUsage(
                total_usage=cpu.get("usage_usec", 0) * NS_PER_USEC,
                usage_in_usermode=cpu.get("user_usec", 0) * NS_PER_USEC,
                usage_in_kernelmode=cpu.get("system_usec", 0) * NS_PER_USEC,
            ),
            throttling_data=ThrottlingData(
                periods=cpu.get("nr_periods", 0),
                throttled_periods=cpu.get("nr_throttled", 0),
                throttled_time=cpu.get("throttled_usec", 0) * NS_PER_USEC,
            ),
        ),
        memory_stats=_v2_memory(d),
        pids_stats=PidsStats(current=read_int(d / "pids.current") or 0, limit=read_int(d / "pids.max") or 0),
        blkio_stats=_v2_io(d),
    )
    for size in _page_sizes(d, ".current"):
        prefix = f"hugetlb.{size}."
        stats.hugetlb_stats[size] = HugetlbStats(
            usage=read_int(d / f"{prefix}current") or 0,
            max_usage=read_int(d / f"{prefix}peak") or 0,
            failcnt=read_kv(d / f"{prefix}events").get("max", 0),
        )
    return stats


def _v2_memory(d: Path) -> MemoryStats:
    kv = read_kv(d / "memory.stat")
    events = read_kv(d / "memory.events")
    swap_events = read_kv(d / "memory.swap.events")
    kernel = kv.get("kernel", kv.get("kernel_stack", 0) + kv.get("slab", 0))
    return MemoryStats(
        cache=kv.get("file", 0),
        usage=MemoryData(
            usage=read_int(d / "memory.current") or 0,
            max_usage=read_int(d / "memory.peak") or 0,
            failcnt=events.get("max", 0),
            limit=read_limit(d / "memory.max", UNLIMITED) or 0,
        ),
        swap_usage=MemoryData(
            usage=read_int(d / "memory.swap.current") or 0,
            max_usage=read_int(d / "memory.swap.peak") or 0,
            failcnt=swap_events.get("max", 0),
            limit=read_limit(d / "memory.swap.max", UNLIMITED) or 0,
        ),
        kernel_usage=MemoryData(usage=kernel),
        use_hierarchy=True,
        stats=kv,
    )


_V2_IO_BYTES = {"rbytes": "Read", "wbytes": "Write", "dbytes": "Discard"}
_V2_IO_OPS = {"rios": "Read", "wios": "Write", "dios": "Discard"}


def _v2_io(d: Path) -> BlkioStats:
    stats = BlkioStats()
    for line in (read_text(d / "io.stat") or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        for item in parts[1:]:
            key, _, value = item.partition("=")
            try:
                number = int(value)
                entry_major, entry_minor = int(major), int(minor)
            except ValueError:
                continue
            if key in _V2_IO_BYTES:
                stats.io_service_bytes_recursive.append(
                    BlkioStatsEntry(entry_major, entry_minor, _V2_IO_BYTES[key], number)
                )
            elif key in _V2_IO_OPS:
                stats.io_serviced_recursive.append(
                    BlkioStatsEntry(entry_major, entry_minor, _V2_IO_OPS[key], number)
                )
    return stats
