"""Block-device lookups by driver: wait for the uevent that names the device node.

Each ``watch_*`` function builds a matcher from what the runtime gave us
(PCI path, SCSI address, device path), starts a ``DeviceWatcher`` wait and
returns its handle; ``handle.result()`` is then the node path, e.g.
``/dev/vda``. Matching follows the Kata agent: the block uevent whose DEVPATH
lies under the device and that carries a DEVNAME.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.devices.pci import PciPath, pcipath_to_sysfs, root_bus_path
from agent.devices.uevent import Uevent
from agent.devices.watcher import DeviceWatcher, WatchHandle
from agent.errors import InvalidArgument, NotFound

ACPI_DEV_PATH = "/devices/LNXSYSTM"
_SCSI_ADDR = re.compile(r"^(\d+):(\d+)$")


class VirtioBlkPciMatcher:
    """A block device under ``<root bus><relpath>/virtioN/block/``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"VirtioBlkPciMatcher({self.prefix!r})"

    def __call__(self, ev: Uevent) -> bool:
        if ev.subsystem != "block" or not ev.devname or not ev.devpath.startswith(self.prefix):
            return False
        return re.match(r"^virtio[0-9]+/block/", ev.devpath[len(self.prefix) :]) is not None


class BlockSuffixMatcher:
    """A block device whose DEVPATH ends with ``/block/<devname>`` (mmio), optionally
    also starting with a prefix (ACPI for nvdimm)."""

    def __init__(self, devname: str, prefix: str = "") -> None:
        self.devname = devname
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"BlockSuffixMatcher({self.devname!r}, {self.prefix!r})"

    def __call__(self, ev: Uevent) -> bool:
        return (
            ev.subsystem == "block"
            and bool(ev.devname)
            and ev.devpath.startswith(self.prefix)
            and ev.devpath.endswith(f"/block/{self.devname}")
        )


class ScsiBlockMatcher:
    """A SCSI disk at channel 0 of host 0's target:lun (one virtio-scsi controller)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr

    def __repr__(self) -> str:
        return f"ScsiBlockMatcher({self.addr!r})"

    def __call__(self, ev: Uevent) -> bool:
        return ev.subsystem == "block" and bool(ev.devname) and f"/0:0:{self.addr}/block/" in ev.devpath


class DeviceNode:
    """Transform: the node path for a matched event under a /dev root."""

    def __init__(self, dev_root: str = "/dev") -> None:
        self.dev_root = dev_root

    def __call__(self, ev: Uevent) -> str:
        return os.path.join(self.dev_root, ev.devname)


def watch_virtio_blk_pci(
    watcher: DeviceWatcher,
    pci_path: str | PciPath,
    *,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    timeout: float | None = None,
) -> WatchHandle:
    """``blk`` driver: the virtio-blk disk at a PCI path."""
    path = PciPath.parse(pci_path) if isinstance(pci_path, str) else pci_path
    root_bus = root_bus_path(sysfs_root)
    relpath = pcipath_to_sysfs(Path(sysfs_root, root_bus.lstrip("/")), path)
    matcher = VirtioBlkPciMatcher(f"{root_bus}{relpath}/")
    return watcher.watch(matcher, timeout, f"virtio-blk disk at PCI path {path}", DeviceNode(dev_root))


def _devname(devpath: str, what: str) -> str:
    if not devpath.startswith("/dev/") or len(devpath) <= 5 or "/" in devpath[5:]:
        raise InvalidArgument(f"{what} source {devpath!r} must be /dev/<name>")
    return devpath[5:]


def watch_virtio_blk_mmio(
    watcher: DeviceWatcher, devpath: str, *, dev_root: str = "/dev", timeout: float | None = None
) -> WatchHandle:
    """``mmioblk`` driver: the runtime already names the node; wait until it exists."""
    name = _devname(devpath, "virtio-mmio block")
    return watcher.watch(
        BlockSuffixMatcher(name), timeout, f"virtio-mmio disk {devpath}", DeviceNode(dev_root)
    )


def watch_nvdimm(
    watcher: DeviceWatcher, devpath: str, *, dev_root: str = "/dev", timeout: float | None = None
) -> WatchHandle:
    """``nvdimm`` driver: a pmem block device enumerated through ACPI."""
    name = _devname(devpath, "nvdimm")
    matcher = BlockSuffixMatcher(name, ACPI_DEV_PATH)
    return watcher.watch(matcher, timeout, f"nvdimm (pmem) device {devpath}", DeviceNode(dev_root))


def parse_scsi_addr(addr: str) -> tuple[int, int]:
    m = _SCSI_ADDR.match(addr)
    if m is None:
        raise InvalidArgument(f"unexpected SCSI address {addr!r}, expected SCSIID:LUN")
    return int(m.group(1)), int(m.group(2))


def scan_scsi_bus(addr: str, sysfs_root: str = "/sys") -> int:
    """Ask every SCSI host to scan channel 0, target:lun; returns how many hosts."""
    target, lun = parse_scsi_addr(addr)
    hosts_dir = Path(sysfs_root, "class/scsi_host")
    try:
        hosts = sorted(os.listdir(hosts_dir))
    except FileNotFoundError:
        raise NotFound(f"no SCSI host in the guest ({hosts_dir} does not exist)") from None
    for host in hosts:
        Path(hosts_dir, host, "scan").write_text(f"0 {target} {lun}")
    return len(hosts)


def watch_scsi(
    watcher: DeviceWatcher,
    addr: str,
    *,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    timeout: float | None = None,
) -> WatchHandle:
    """``scsi`` driver: rescan for target:lun, then wait for its disk."""
    parse_scsi_addr(addr)
    handle = watcher.watch(ScsiBlockMatcher(addr), timeout, f"SCSI disk {addr}", DeviceNode(dev_root))
    if not handle.done:
        try:
            scan_scsi_bus(addr, sysfs_root)
        except Exception:
            handle.cancel()
            raise
    return handle
