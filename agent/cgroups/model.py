"""Plain dataclasses for cgroup statistics, mirroring ``grpc.CgroupStats`` field by field.

Field names are those of the protobuf messages (agent.proto), so the service layer can
copy them over without a table. Units follow what the runtime expects from upstream Kata:
CPU times in nanoseconds, memory in bytes, a v2 "max" limit reported as ``UNLIMITED``
(memory) or 0 (pids, containerd's convention for "no limit").
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNLIMITED = 2**64 - 1


@dataclass
class CpuUsage:
    total_usage: int = 0
    percpu_usage: list[int] = field(default_factory=list)
    usage_in_kernelmode: int = 0
    usage_in_usermode: int = 0


@dataclass
class ThrottlingData:
    periods: int = 0
    throttled_periods: int = 0
    throttled_time: int = 0


@dataclass
class CpuStats:
    cpu_usage: CpuUsage = field(default_factory=CpuUsage)
    throttling_data: ThrottlingData = field(default_factory=ThrottlingData)


@dataclass
class MemoryData:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0
    limit: int = 0


@dataclass
class MemoryStats:
    cache: int = 0
    usage: MemoryData = field(default_factory=MemoryData)
    swap_usage: MemoryData = field(default_factory=MemoryData)
    kernel_usage: MemoryData = field(default_factory=MemoryData)
    use_hierarchy: bool = False
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class PidsStats:
    current: int = 0
    limit: int = 0


@dataclass
class BlkioStatsEntry:
    major: int = 0
    minor: int = 0
    op: str = ""
    value: int = 0


@dataclass
class BlkioStats:
    io_service_bytes_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_serviced_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_queued_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_service_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_wait_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_merged_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    sectors_recursive: list[BlkioStatsEntry] = field(default_factory=list)


@dataclass
class HugetlbStats:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0


@dataclass
class CgroupStats:
    cpu_stats: CpuStats = field(default_factory=CpuStats)
    memory_stats: MemoryStats = field(default_factory=MemoryStats)
    pids_stats: PidsStats = field(default_factory=PidsStats)
    blkio_stats: BlkioStats = field(default_factory=BlkioStats)
    hugetlb_stats: dict[str, HugetlbStats] = field(default_factory=dict)
