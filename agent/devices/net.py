"""Waiting for a hot-plugged NIC named by its PCI path (Interface.devicePath).

UpdateInterface may arrive before the guest kernel has created the network
device; the service layer waits here first. A NIC that was cold-plugged (or
arrived before the uevent socket was open) is found in /sys/class/net.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.devices.pci import PciPath, pcipath_to_sysfs, root_bus_path
from agent.devices.uevent import Uevent
from agent.devices.watcher import DeviceWatcher, WatchHandle


class NetPciMatcher:
    """A net device ``add`` event under the PCI device's sysfs directory."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/") + "/"

    def __call__(self, ev: Uevent) -> bool:
        return ev.subsystem == "net" and bool(ev.interface) and ev.devpath.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"NetPciMatcher({self.prefix!r})"


def _interface_name(ev: Uevent) -> str:
    return ev.interface


def _existing(sysfs_root: str, prefix: str) -> Uevent | None:
    """The net device already present under ``prefix``, as a synthetic add event."""
    class_net = Path(sysfs_root, "class/net")
    try:
        names = sorted(os.listdir(class_net))
    except FileNotFoundError:
        return None
    for name in names:
        try:
            target = os.readlink(class_net / name)
        except OSError:
            continue
        # "../../devices/pci0000:00/0000:00:02.0/virtio1/net/eth0" -> "/devices/..."
        devpath = "/" + os.path.normpath(os.path.join("class/net", target))
        if devpath.startswith(prefix) and "/net/" in devpath[len(prefix) :]:
            return Uevent("add", devpath, {"ACTION": "add", "SUBSYSTEM": "net", "INTERFACE": name})
    return None


def watch_pci_net_interface(
    watcher: DeviceWatcher,
    pci_path: str | PciPath,
    *,
    sysfs_root: str = "/sys",
    timeout: float | None = None,
) -> WatchHandle:
    """Wait until the NIC at ``pci_path`` exists; ``result()`` is its interface name."""
    path = PciPath.parse(pci_path) if isinstance(pci_path, str) else pci_path
    root_bus = root_bus_path(sysfs_root)
    relpath = pcipath_to_sysfs(Path(sysfs_root, root_bus.lstrip("/")), path)
    matcher = NetPciMatcher(f"{root_bus}{relpath}")
    handle = watcher.watch(matcher, timeout, f"network interface at PCI path {path}", _interface_name)
    if not handle.done:
        existing = _existing(sysfs_root, matcher.prefix)
        if existing is not None:
            watcher.feed(existing)
    return handle
