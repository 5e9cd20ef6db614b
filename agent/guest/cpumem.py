"""OnlineCPUMem, MemHotplugByProbe and onlining of hot-added memory blocks.

Semantics follow the current Kata agent and runtime: ``nb_cpus`` is the
number of CPUs that should be online in total (the runtime sends the new vCPU
count after a resize; older runtimes sent the number added, which the agent
also treats as a target and so never onlines more than asked). Hot-added
CPUs can show up in sysfs a little after the ACPI event, hence bounded retries
(100 x 50 ms, as upstream). All paths live under a configurable sysfs root.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import FailedPrecondition, InvalidArgument, NotFound

CPU_DIR = "devices/system/cpu"
MEMORY_DIR = "devices/system/memory"
PROBE_FILE = "devices/system/memory/probe"
MAX_RETRIES = 100
RETRY_INTERVAL = 0.05

_CPU_RE = re.compile(r"^cpu[0-9]+$")
_MEM_RE = re.compile(r"^memory[0-9]+$")


def _entries(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        raise NotFound(f"{directory} does not exist") from None
    # Numeric order, so "cpu10" comes after "cpu2" as the kernel numbers them.
    matching = [n for n in names if pattern.match(n)]
    return [directory / n for n in sorted(matching, key=_index)]


def _index(name: str) -> int:
    return int(re.sub(r"^[a-z]+", "", name))


def _is_online(entry: Path) -> bool:
    """An entry without an ``online`` file (e.g. cpu0 on x86) cannot be offline."""
    try:
        return (entry / "online").read_text().strip() != "0"
    except FileNotFoundError:
        return True
    except OSError:
        return False


def online_count(sysfs_root: str = "/sys") -> int:
    """How many CPUs are online now."""
    return sum(1 for e in _entries(Path(sysfs_root, CPU_DIR), _CPU_RE) if _is_online(e))


def _online_some(entries: list[Path], limit: int | None) -> int:
    """Write "1" to offline entries, at most ``limit``; per-entry failures are skipped."""
    done = 0
    for entry in entries:
        if limit is not None and done >= limit:
            break
        online = entry / "online"
        try:
            if online.read_text().strip() != "0":
                continue
            online.write_text("1")
        except OSError:
            continue  # e.g. a block the kernel cannot online: try the others
        done += 1
    return done


def online_cpus(
    target: int,
    sysfs_root: str = "/sys",
    *,
    retries: int = MAX_RETRIES,
    interval: float = RETRY_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Bring the number of online CPUs up to ``target``; returns the online count."""
    count = online_count(sysfs_root)
    if count >= target:
        return count  # some VMMs online hot-added CPUs themselves
    for _ in range(retries):
        count = online_cpus_step(target, sysfs_root)
        if count >= target:
            return count
        sleep(interval)
    raise FailedPrecondition(f"failed to online {target} CPU(s) after {retries} retries: {count} online")


def online_cpus_step(target: int, sysfs_root: str = "/sys") -> int:
    """One attempt of :func:`online_cpus`, for callers that wait between attempts on a
    timer instead of sleeping in a thread; returns the online count."""
    count = online_count(sysfs_root)
    if count < target:
        _online_some(_entries(Path(sysfs_root, CPU_DIR), _CPU_RE), target - count)
        count = online_count(sysfs_root)
    return count


def online_memory(sysfs_root: str = "/sys") -> int:
    """Online every offline memory block; returns how many were onlined."""
    return _online_some(_entries(Path(sysfs_root, MEMORY_DIR), _MEM_RE), None)


def online_cpu_mem(
    nb_cpus: int,
    cpu_only: bool,
    sysfs_root: str = "/sys",
    *,
    retries: int = MAX_RETRIES,
    interval: float = RETRY_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """OnlineCPUMem. The caller then refreshes container cpusets when ``nb_cpus > 0``."""
    if nb_cpus < 0:
        raise InvalidArgument(f"nb_cpus must not be negative, got {nb_cpus}")
    if nb_cpus > 0:
        online_cpus(nb_cpus, sysfs_root, retries=retries, interval=interval, sleep=sleep)
    if not cpu_only:
        online_memory(sysfs_root)


def mem_hotplug_by_probe(addrs: list[int], sysfs_root: str = "/sys") -> None:
    """MemHotplugByProbe: tell the kernel about hot-added memory at each address."""
    probe = Path(sysfs_root, PROBE_FILE)
    if not probe.exists():
        raise FailedPrecondition(f"memory probe interface {probe} is not available in this guest")
    for addr in addrs:
        if not 0 <= int(addr) < 2**64:
            raise InvalidArgument(f"memory probe address {addr} out of range")
        with open(probe, "w") as f:  # one write per address: the kernel parses each write
            f.write(f"0x{int(addr):X}")


def online_hotplugged_memory(devpath: str, sysfs_root: str = "/sys") -> bool:
    """For an ``add`` uevent under /devices/system/memory: online that block.

    Returns whether the event was a memory block (the caller then ignores it).
    """
    rel = devpath.lstrip("/")
    if not rel.startswith(MEMORY_DIR + "/") or not _MEM_RE.match(os.path.basename(rel)):
        return False
    online = Path(sysfs_root, rel, "online")
    try:
        if online.read_text().strip() == "0":
            online.write_text("1")
    except OSError:
        pass
    return True
