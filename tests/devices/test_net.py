"""Waiting for a NIC by PCI path: uevent before/after, cold-plugged, missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.devices.net import watch_pci_net_interface
from agent.devices.uevent import Uevent
from agent.devices.watcher import DeviceWatcher
from agent.errors import DeadlineExceeded

BASE = "/devices/pci0000:00/0000:00:02.0/0000:01:01.0"


def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    (root / "devices/pci0000:00/0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (root / "class/net").mkdir(parents=True)
    return root


def net_add(devpath: str, name: str) -> Uevent:
    return Uevent("add", devpath, {"SUBSYSTEM": "net", "INTERFACE": name, "IFINDEX": "3"})


@pytest.mark.parametrize("early", [True, False])
def test_uevent_before_or_after(tmp_path: Path, early: bool) -> None:
    root = sysfs(tmp_path)
    w = DeviceWatcher()
    decoy = net_add("/devices/pci0000:00/0000:00:02.0/0000:01:01.1/virtio2/net/eth1", "eth1")
    ev = net_add(f"{BASE}/virtio1/net/eth0", "eth0")
    if early:
        w.feed(decoy)
        w.feed(ev)
    h = watch_pci_net_interface(w, "02/01", sysfs_root=str(root))
    if not early:
        w.feed(decoy)
        assert not h.done
        w.feed(ev)
    assert h.result() == "eth0"


def test_cold_plugged_nic_found_in_class_net(tmp_path: Path) -> None:
    root = sysfs(tmp_path)
    os.symlink("../../devices/virtual/net/lo", root / "class/net/lo")
    os.symlink(f"../..{BASE}/virtio1/net/ens3", root / "class/net/ens3")
    w = DeviceWatcher()
    h = watch_pci_net_interface(w, "02/01", sysfs_root=str(root))
    assert h.done and h.result() == "ens3"
    assert f"{BASE}/virtio1/net/ens3" in w.seen


def test_missing_nic_times_out(tmp_path: Path) -> None:
    root = sysfs(tmp_path)
    w = DeviceWatcher(default_timeout=0.2)
    h = watch_pci_net_interface(w, "02/01", sysfs_root=str(root))
    with pytest.raises(DeadlineExceeded, match="network interface at PCI path 02.0/01.0"):
        h.wait()
