"""GetGuestDetails: memory block size, probe support, and the agent's details."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from agent.errors import Internal

BLOCK_SIZE_FILE = "devices/system/memory/block_size_bytes"
PROBE_FILE = "devices/system/memory/probe"
#: The storage drivers this agent registers (agent/storage.py, agent/devices/blockstorage.py):
#: the runtime must not be told of one we cannot mount.
DEFAULT_STORAGE_HANDLERS = (
    "blk",
    "mmioblk",
    "scsi",
    "nvdimm",
    "virtio-fs",
    "bind",
    "overlayfs",
    "ephemeral",
    "local",
)


class AgentDetails(NamedTuple):
    version: str
    init_daemon: bool
    device_handlers: list[str]
    storage_handlers: list[str]
    supports_seccomp: bool
    extra_features: list[str]


class GuestDetails(NamedTuple):
    mem_block_size_bytes: int
    support_mem_hotplug_probe: bool
    agent_details: AgentDetails


def agent_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "unknown"
    try:
        return version("kata-agent-py")
    except PackageNotFoundError:
        return "unknown"


def memory_block_size(sysfs_root: str = "/sys") -> int:
    """Bytes per memory block (sysfs gives hex without 0x); 0 when the kernel has none."""
    path = Path(sysfs_root, BLOCK_SIZE_FILE)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        raise Internal(f"invalid memory block size {text!r} in {path}") from None


def supports_seccomp(proc_root: str = "/proc") -> bool:
    """The kernel has seccomp when /proc/self/status carries a Seccomp field."""
    try:
        with open(Path(proc_root, "self/status")) as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False


def guest_details(
    mem_block_size: bool,
    mem_hotplug_probe: bool,
    *,
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    storage_handlers: list[str] | tuple[str, ...] = DEFAULT_STORAGE_HANDLERS,
    device_handlers: list[str] | tuple[str, ...] = (),
    extra_features: list[str] | tuple[str, ...] = (),
    version: str | None = None,
    init_daemon: bool | None = None,
) -> GuestDetails:
    """GetGuestDetails; the two flags say which memory facts the runtime asked for."""
    return GuestDetails(
        mem_block_size_bytes=memory_block_size(sysfs_root) if mem_block_size else 0,
        support_mem_hotplug_probe=Path(sysfs_root, PROBE_FILE).exists() if mem_hotplug_probe else False,
        agent_details=AgentDetails(
            version=version if version is not None else agent_version(),
            init_daemon=os.getpid() == 1 if init_daemon is None else init_daemon,
            device_handlers=list(device_handlers),
            storage_handlers=list(storage_handlers),
            supports_seccomp=supports_seccomp(proc_root),
            extra_features=list(extra_features),
        ),
    )
