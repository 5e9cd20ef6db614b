"""PCI path resolution and block lookups against a fake sysfs tree with injected uevents."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.devices.block import (
    scan_scsi_bus,
    watch_nvdimm,
    watch_scsi,
    watch_virtio_blk_mmio,
    watch_virtio_blk_pci,
)
from agent.devices.pci import PciPath, SlotFn, pcipath_to_sysfs, rescan_pci_bus, root_bus_path
from agent.devices.uevent import Uevent, format_uevent, parse_uevent
from agent.devices.watcher import DeviceWatcher
from agent.errors import DeadlineExceeded, InvalidArgument, NotFound

ROOT = "devices/pci0000:00"


def make_sysfs(tmp_path: Path) -> Path:
    """Root bus with a bridge at 02.0 (secondary bus 01) and a scsi host."""
    sysfs = tmp_path / "sys"
    (sysfs / ROOT / "0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (sysfs / ROOT / "0000:00:02.0/0000:01:01.0").mkdir(parents=True)
    (sysfs / ROOT / "0000:00:05.0").mkdir(parents=True)
    for host in ("host0", "host1"):
        (sysfs / "class/scsi_host" / host).mkdir(parents=True)
        (sysfs / "class/scsi_host" / host / "scan").write_text("")
    (sysfs / "bus/pci").mkdir(parents=True)
    (sysfs / "bus/pci/rescan").write_text("")
    return sysfs


def blk_event(devpath: str, name: str, action: str = "add") -> Uevent:
    ev = parse_uevent(format_uevent(action, devpath, SUBSYSTEM="block", DEVNAME=name, DEVTYPE="disk"))
    assert ev is not None
    return ev


def test_pci_path_parsing() -> None:
    assert str(PciPath.parse("02/01")) == "02.0/01.0"
    assert PciPath.parse("0a.5/1f.7").slots == (SlotFn(0x0A, 5), SlotFn(0x1F, 7))
    assert PciPath.from_slots([2, 1]) == PciPath.parse("02/01")
    for bad in ("", "20", "00.8", "//", "xyz", "00.0.0", "02/", "1ff"):
        with pytest.raises(InvalidArgument):
            PciPath.parse(bad)


def test_pcipath_to_sysfs_walks_bridges(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path)
    root = sysfs / ROOT
    assert pcipath_to_sysfs(root, PciPath.parse("05")) == "/0000:00:05.0"
    assert pcipath_to_sysfs(root, PciPath.parse("02/01")) == "/0000:00:02.0/0000:01:01.0"
    with pytest.raises(NotFound, match="PCI bridge /0000:00:07.0"):
        pcipath_to_sysfs(root, PciPath.parse("07/01"))
    (root / "0000:00:02.0/pci_bus/0000:02").mkdir()
    with pytest.raises(NotFound, match="exactly one PCI bus"):
        pcipath_to_sysfs(root, PciPath.parse("02/01"))


def test_root_bus_path_x86_and_arm64(tmp_path: Path) -> None:
    assert root_bus_path(make_sysfs(tmp_path)) == "/devices/pci0000:00"
    arm = tmp_path / "arm"
    (arm / "devices/platform/4010000000.pcie/pci0000:00").mkdir(parents=True)
    assert root_bus_path(arm) == "/devices/platform/4010000000.pcie/pci0000:00"


@pytest.mark.parametrize("order", ["event-first", "waiter-first"])
def test_virtio_blk_by_pci_path(tmp_path: Path, order: str) -> None:
    sysfs = make_sysfs(tmp_path)
    w = DeviceWatcher()
    ev = blk_event("/devices/pci0000:00/0000:00:02.0/0000:01:01.0/virtio3/block/vdb", "vdb")
    decoy = blk_event("/devices/pci0000:00/0000:00:05.0/virtio4/block/vdc", "vdc")
    if order == "event-first":
        w.feed(decoy)
        w.feed(ev)
        h = watch_virtio_blk_pci(w, "02/01", sysfs_root=str(sysfs))
    else:
        h = watch_virtio_blk_pci(w, "02/01", sysfs_root=str(sysfs))
        w.feed(decoy)
        assert not h.done
        w.feed(ev)
    assert h.result() == "/dev/vdb"


def test_virtio_blk_partition_or_other_slot_does_not_match(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path)
    w = DeviceWatcher()
    h = watch_virtio_blk_pci(w, "05", sysfs_root=str(sysfs))
    # 0000:00:05.0 must not match a device at 0000:00:05.1 or under a bridge at 05.
    w.feed(blk_event("/devices/pci0000:00/0000:00:05.1/virtio1/block/vdd", "vdd"))
    w.feed(blk_event("/devices/pci0000:00/0000:00:05.0/virtio/block/vde", "vde"))
    w.feed(Uevent("add", "/devices/pci0000:00/0000:00:05.0/virtio1/block/vdf", {"SUBSYSTEM": "block"}))
    assert not h.done
    w.feed(blk_event("/devices/pci0000:00/0000:00:05.0/virtio1/block/vdf", "vdf"))
    assert h.result() == "/dev/vdf"


def test_missing_device_times_out_with_a_clear_error(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path)
    w = DeviceWatcher(default_timeout=0.3)
    t0 = time.monotonic()
    h = watch_virtio_blk_pci(w, "02/01", sysfs_root=str(sysfs))
    with pytest.raises(DeadlineExceeded) as info:
        h.wait()
    assert 0.25 <= time.monotonic() - t0 < 5
    assert "timeout after 0.3s" in str(info.value) and "PCI path 02.0/01.0" in str(info.value)


def test_scsi_rescans_every_host_and_matches_target_lun(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path)
    w = DeviceWatcher()
    h = watch_scsi(w, "1:2", sysfs_root=str(sysfs))
    for host in ("host0", "host1"):
        assert (sysfs / "class/scsi_host" / host / "scan").read_text() == "0 1 2"
    base = "/devices/pci0000:00/0000:00:03.0/virtio0/host0/target0:0:1"
    w.feed(blk_event(f"{base}/0:0:1:20/block/sdb", "sdb"))  # lun 20, not 2
    assert not h.done
    w.feed(blk_event(f"{base}/0:0:1:2/block/sdc", "sdc"))
    assert h.result() == "/dev/sdc"
    with pytest.raises(InvalidArgument):
        watch_scsi(w, "1-2", sysfs_root=str(sysfs))
    with pytest.raises(NotFound, match="no SCSI host"):
        scan_scsi_bus("0:0", str(tmp_path / "empty"))


def test_mmio_and_nvdimm(tmp_path: Path) -> None:
    w = DeviceWatcher()
    h = watch_virtio_blk_mmio(w, "/dev/vdb", dev_root="/guest/dev")
    w.feed(blk_event("/devices/virtio-mmio-cmdline/virtio-mmio.1/virtio1/block/vdbb", "vdbb"))
    assert not h.done
    w.feed(blk_event("/devices/virtio-mmio-cmdline/virtio-mmio.1/virtio1/block/vdb", "vdb"))
    assert h.result() == "/guest/dev/vdb"

    p = watch_nvdimm(w, "/dev/pmem0")
    w.feed(blk_event("/devices/platform/e820_pmem/ndbus0/region0/namespace0.0/block/pmem0", "pmem0"))
    assert not p.done  # not ACPI-enumerated
    w.feed(
        blk_event(
            "/devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/namespace0.0/block/pmem0", "pmem0"
        )
    )
    assert p.result() == "/dev/pmem0"
    for bad in ("vdb", "/dev/", "/dev/a/b", "/tmp/x"):
        with pytest.raises(InvalidArgument):
            watch_virtio_blk_mmio(w, bad)


def test_rescan_pci_bus_writes_the_rescan_file(tmp_path: Path) -> None:
    sysfs = make_sysfs(tmp_path)
    rescan_pci_bus(sysfs)
    assert (sysfs / "bus/pci/rescan").read_text() == "1"
