"""Apply an OCI ``linux.resources`` update to a live cgroup, in the v1 or v2 layout.

Input is the OCI JSON object (``agent.runtime.spec.resources_to_json`` output), so its
omission rules apply: an absent key means "leave as is". Covered: memory (limit,
reservation, swap, swappiness, OOM killer), CPU (shares/weight, quota, period, realtime,
cpuset cpus/mems), pids, huge page limits and block I/O throttling. Device rules and
network class ids are left to the OCI runtime (``update`` does them at create time and
Kata never changes them later).

Order matters in two places, and both are handled here: v1 refuses a memory limit above
the memory+swap limit (so the larger one is written first), and a CFS period is written
before its quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.cgroups.files import read_int, read_text, write_value
from agent.cgroups.layout import Cgroup, CgroupV1, CgroupV2
from agent.errors import FailedPrecondition, InvalidArgument

_V1_THROTTLE = {
    "throttleReadBpsDevice": "blkio.throttle.read_bps_device",
    "throttleWriteBpsDevice": "blkio.throttle.write_bps_device",
    "throttleReadIOPSDevice": "blkio.throttle.read_iops_device",
    "throttleWriteIOPSDevice": "blkio.throttle.write_iops_device",
}
_V2_THROTTLE = {
    "throttleReadBpsDevice": "rbps",
    "throttleWriteBpsDevice": "wbps",
    "throttleReadIOPSDevice": "riops",
    "throttleWriteIOPSDevice": "wiops",
}
F = "linux.resources"


def apply_resources(cgroup: Cgroup, resources: Mapping[str, Any]) -> None:
    """Write every setting present in ``resources`` to ``cgroup``."""
    if isinstance(cgroup, CgroupV2):
        _apply_v2(cgroup.path, resources)
    else:
        _apply_v1(cgroup, resources)


def _need(cg: CgroupV1, controller: str, field: str) -> Path:
    d = cg.dir(controller)
    if d is None:
        raise FailedPrecondition(f"{field}: the {controller} cgroup controller is not mounted")
    return d


# ------------------------------------------------------------------------- v1


def _apply_v1(cg: CgroupV1, res: Mapping[str, Any]) -> None:
    if mem := res.get("memory"):
        _v1_memory(_need(cg, "memory", f"{F}.memory"), mem)
    if cpu := res.get("cpu"):
        _v1_cpu(cg, cpu)
    if (pids := res.get("pids")) is not None and "limit" in pids:
        d = _need(cg, "pids", f"{F}.pids")
        write_value(d / "pids.max", _pids_value(pids["limit"]), field=f"{F}.pids.limit")
    for i, hp in enumerate(res.get("hugepageLimits") or []):
        d = _need(cg, "hugetlb", f"{F}.hugepageLimits")
        field = f"{F}.hugepageLimits[{i}]"
        write_value(d / f"hugetlb.{_page_size(hp, field)}.limit_in_bytes", hp["limit"], field=field)
    if blkio := res.get("blockIO"):
        _v1_blkio(_need(cg, "blkio", f"{F}.blockIO"), blkio)


def _v1_memory(d: Path, mem: Mapping[str, Any]) -> None:
    f = f"{F}.memory"
    limit, swap = mem.get("limit"), mem.get("swap")
    memsw = d / "memory.memsw.limit_in_bytes"
    if swap is not None and limit is not None and memsw.exists():
        current = read_int(memsw)
        raising = swap == -1 or current is None or (current >= 0 and swap > current)
        order = [("memsw", swap), ("limit", limit)] if raising else [("limit", limit), ("memsw", swap)]
    else:
        order = [("limit", limit), ("memsw", swap)]
    for kind, value in order:
        if value is None:
            continue
        if kind == "limit":
            write_value(d / "memory.limit_in_bytes", value, field=f"{f}.limit")
        else:
            write_value(memsw, value, field=f"{f}.swap")
    if (v := mem.get("reservation")) is not None:
        write_value(d / "memory.soft_limit_in_bytes", v, field=f"{f}.reservation")
    if (v := mem.get("kernel")) is not None:
        write_value(d / "memory.kmem.limit_in_bytes", v, field=f"{f}.kernel")
    if (v := mem.get("kernelTCP")) is not None:
        write_value(d / "memory.kmem.tcp.limit_in_bytes", v, field=f"{f}.kernelTCP")
    if (v := mem.get("swappiness")) is not None:
        write_value(d / "memory.swappiness", v, field=f"{f}.swappiness")
    if mem.get("disableOOMKiller"):
        write_value(d / "memory.oom_control", 1, field=f"{f}.disableOOMKiller")


def _v1_cpu(cg: CgroupV1, cpu: Mapping[str, Any]) -> None:
    f = f"{F}.cpu"
    plain = (
        ("shares", "cpu.shares"),
        ("period", "cpu.cfs_period_us"),
        ("quota", "cpu.cfs_quota_us"),
        ("realtimePeriod", "cpu.rt_period_us"),
        ("realtimeRuntime", "cpu.rt_runtime_us"),
    )
    for key, name in plain:
        if (v := cpu.get(key)) is not None:
            write_value(_need(cg, "cpu", f"{f}.{key}") / name, v, field=f"{f}.{key}")
    for key in ("cpus", "mems"):
        if v := cpu.get(key):
            write_value(_need(cg, "cpuset", f"{f}.{key}") / f"cpuset.{key}", v, field=f"{f}.{key}")


def _v1_blkio(d: Path, blkio: Mapping[str, Any]) -> None:
    f = f"{F}.blockIO"
    if (v := blkio.get("weight")) is not None:
        name = "blkio.weight" if (d / "blkio.weight").exists() else "blkio.bfq.weight"
        write_value(d / name, v, field=f"{f}.weight")
    for key, name in _V1_THROTTLE.items():
        for i, dev in enumerate(blkio.get(key) or []):
            field = f"{f}.{key}[{i}]"
            write_value(d / name, f"{_devno(dev, field)} {dev['rate']}", field=field)


# ------------------------------------------------------------------------- v2


def _apply_v2(d: Path, res: Mapping[str, Any]) -> None:
    if mem := res.get("memory"):
        _v2_memory(d, mem)
    if cpu := res.get("cpu"):
        _v2_cpu(d, cpu)
    if (pids := res.get("pids")) is not None and "limit" in pids:
        write_value(d / "pids.max", _pids_value(pids["limit"]), field=f"{F}.pids.limit")
    for i, hp in enumerate(res.get("hugepageLimits") or []):
        field = f"{F}.hugepageLimits[{i}]"
        write_value(d / f"hugetlb.{_page_size(hp, field)}.max", hp["limit"], field=field)
    if blkio := res.get("blockIO"):
        _v2_io(d, blkio)


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def _v2_memory(d: Path, mem: Mapping[str, Any]) -> None:
    f = f"{F}.memory"
    limit, swap = mem.get("limit"), mem.get("swap")
    if limit is not None:
        write_value(d / "memory.max", _max(limit), field=f"{f}.limit")
    if swap is not None:
        # OCI's swap is memory+swap (the v1 memsw meaning); v2 limits swap alone.
        if swap < 0:
            value = "max"
        else:
            if limit is None or limit <= 0:
                raise InvalidArgument(f"{f}.swap needs a positive {f}.limit on cgroup v2")
            if swap < limit:
                raise InvalidArgument(f"{f}.swap ({swap}) is below {f}.limit ({limit})")
            value = str(swap - limit)
        write_value(d / "memory.swap.max", value, field=f"{f}.swap")
    if (v := mem.get("reservation")) is not None:
        write_value(d / "memory.low", _max(v), field=f"{f}.reservation")
    if mem.get("disableOOMKiller"):
        raise InvalidArgument(f"{f}.disableOOMKiller is not supported on cgroup v2")


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000] (the runc/crun formula)."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def _v2_cpu(d: Path, cpu: Mapping[str, Any]) -> None:
    f = f"{F}.cpu"
    if (v := cpu.get("shares")) is not None:
        write_value(d / "cpu.weight", shares_to_weight(v), field=f"{f}.shares")
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota is not None or period is not None:
        current = (read_text(d / "cpu.max") or "max 100000").split()
        quota_text = _max(quota) if quota is not None else current[0]
        if quota is not None and quota == 0:
            quota_text = "max"
        period_text = str(period) if period is not None else current[1]
        write_value(d / "cpu.max", f"{quota_text} {period_text}", field=f"{f}.quota")
    if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
        raise InvalidArgument(f"{f}.realtimeRuntime/realtimePeriod are not supported on cgroup v2")
    for key in ("cpus", "mems"):
        if v := cpu.get(key):
            write_value(d / f"cpuset.{key}", v, field=f"{f}.{key}")


def _v2_io(d: Path, blkio: Mapping[str, Any]) -> None:
    f = f"{F}.blockIO"
    if (v := blkio.get("weight")) is not None:
        # OCI blkio weight is [10, 1000]; io.weight is [1, 10000].
        write_value(
            d / "io.weight", f"default {1 + (min(max(v, 10), 1000) - 10) * 9999 // 990}", field=f"{f}.weight"
        )
    for key, name in _V2_THROTTLE.items():
        for i, dev in enumerate(blkio.get(key) or []):
            field = f"{f}.{key}[{i}]"
            write_value(d / "io.max", f"{_devno(dev, field)} {name}={dev['rate']}", field=field)


# ------------------------------------------------------------------------- shared


def _pids_value(limit: int) -> str:
    """OCI pids.limit: 0 or negative means unlimited."""
    return "max" if limit <= 0 else str(limit)


def _devno(dev: Mapping[str, Any], field: str) -> str:
    try:
        return f"{int(dev['major'])}:{int(dev['minor'])}"
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"{field}: major and minor are required") from None


def _page_size(hp: Mapping[str, Any], field: str) -> str:
    size = hp.get("pageSize", "")
    if not size or "/" in size or not size[0].isdigit():
        raise InvalidArgument(f"{field}.pageSize {size!r} is not a page size like '2MB'")
    return size
