"""agent.devices.hotplug without a VM: spec rewriting, type checks, the root-disk refusal, waits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.devices import hotplug
from agent.devices.hotplug import DeviceSpec, GuestNode, update_spec_devices
from agent.devices.uevent import Uevent
from agent.devices.watcher import DeviceWatcher
from agent.errors import DeadlineExceeded, InvalidArgument, PermissionDenied, Unimplemented
from ttrpc.loop import Future


def _spec(devices: list[dict[str, Any]], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"linux": {"devices": devices, "resources": {"devices": rules, "pids": {"limit": 5}}}}


DENY_ALL = {"allow": False, "access": "rwm"}


def test_rewrites_device_and_matching_rule() -> None:
    spec = _spec(
        [{"path": "/dev/xvda", "type": "b", "major": 250, "minor": 99, "fileMode": 0o660}],
        [DENY_ALL, {"allow": True, "type": "b", "major": 250, "minor": 99, "access": "rw"}],
    )
    out = update_spec_devices(
        spec, [(DeviceSpec("d", "blk", "/dev/vdb", "/dev/xvda"), GuestNode("/dev/vdb", "b", 254, 16))]
    )
    assert out["linux"]["devices"] == [
        {"path": "/dev/xvda", "type": "b", "major": 254, "minor": 16, "fileMode": 0o660}
    ]
    assert out["linux"]["resources"]["devices"] == [
        DENY_ALL,
        {"allow": True, "type": "b", "major": 254, "minor": 16, "access": "rw"},
    ]
    assert out["linux"]["resources"]["pids"] == {"limit": 5}
    assert spec["linux"]["devices"][0]["major"] == 250  # the input is not modified


def test_adds_allow_rule_when_none_named_the_device() -> None:
    spec = _spec([{"path": "/dev/xvda", "type": "b", "major": 8, "minor": 0}], [DENY_ALL])
    out = update_spec_devices(
        spec, [(DeviceSpec("d", "blk", "/dev/vdb", "/dev/xvda"), GuestNode("/dev/vdb", "b", 254, 16))]
    )
    assert out["linux"]["resources"]["devices"] == [
        DENY_ALL,
        {"allow": True, "type": "b", "major": 254, "minor": 16, "access": "rwm"},
    ]


def test_swapped_numbers_do_not_chain() -> None:
    # Host numbers of two devices are each other's guest numbers: each rule moves once.
    spec = _spec(
        [
            {"path": "/dev/a", "type": "b", "major": 8, "minor": 0},
            {"path": "/dev/b", "type": "b", "major": 8, "minor": 16},
        ],
        [
            {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"},
            {"allow": True, "type": "b", "major": 8, "minor": 16, "access": "w"},
        ],
    )
    out = update_spec_devices(
        spec,
        [
            (DeviceSpec("a", "blk", "/dev/sdb", "/dev/a"), GuestNode("/dev/sdb", "b", 8, 16)),
            (DeviceSpec("b", "blk", "/dev/sda", "/dev/b"), GuestNode("/dev/sda", "b", 8, 0)),
        ],
    )
    assert [(d["path"], d["minor"]) for d in out["linux"]["devices"]] == [("/dev/a", 16), ("/dev/b", 0)]
    rules = out["linux"]["resources"]["devices"]
    assert [(r["minor"], r["access"]) for r in rules] == [(16, "r"), (0, "w")]


def test_char_rule_with_same_numbers_is_untouched() -> None:
    spec = _spec(
        [{"path": "/dev/xvda", "type": "b", "major": 1, "minor": 3}],
        [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
    )
    out = update_spec_devices(
        spec, [(DeviceSpec("d", "blk", "/dev/vdb", "/dev/xvda"), GuestNode("/dev/vdb", "b", 254, 0))]
    )
    rules = out["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    assert rules[1]["major"] == 254 and rules[1]["type"] == "b"


def test_spec_errors() -> None:
    node = GuestNode("/dev/vdb", "b", 254, 16)
    dev = DeviceSpec("d", "blk", "/dev/vdb", "/dev/xvda")
    with pytest.raises(InvalidArgument, match="no entry for container_path '/dev/xvda'"):
        update_spec_devices(_spec([], []), [(dev, node)])
    with pytest.raises(InvalidArgument, match="type 'c'"):
        update_spec_devices(
            _spec([{"path": "/dev/xvda", "type": "c", "major": 1, "minor": 1}], []), [(dev, node)]
        )
    with pytest.raises(InvalidArgument, match="given twice"):
        update_spec_devices(_spec([{"path": "/dev/xvda", "type": "b"}], []), [(dev, node), (dev, node)])


def test_device_checks() -> None:
    for kind in ("vfio-pci", "vfio-ap", "blk-ccw", "vfio-pci-gk"):
        with pytest.raises(Unimplemented, match=kind):
            DeviceSpec("x", kind, "", "/dev/x").check()
    with pytest.raises(InvalidArgument, match="unknown device type 'floppy'"):
        DeviceSpec("x", "floppy", "", "/dev/x").check()
    with pytest.raises(InvalidArgument, match="container_path"):
        DeviceSpec("x", "blk", "/dev/vdb", "dev/x").check()
    with pytest.raises(InvalidArgument, match="id and vm_path"):
        DeviceSpec("", "blk", "", "/dev/x").check()
    DeviceSpec("02/01", "blk", "", "/dev/x").check()
    assert DeviceSpec("02/01", "blk", "", "/dev/x").reference() == "02/01"
    assert DeviceSpec("02/01", "blk", "/dev/vdc", "/dev/x").reference() == "/dev/vdc"
    assert DeviceSpec("0:1", "scsi", "/dev/sdb", "/dev/x").reference() == "0:1"
    assert DeviceSpec("pmem", "nvdimm", "/dev/pmem1", "/dev/x").reference() == "/dev/pmem1"


def _fake_sysfs(root: Path, disk: tuple[int, int], parts: list[tuple[int, int]]) -> None:
    """sysfs/dev/block links for a disk and its partitions."""
    base = root / "devices/pci0000:00/0000:00:01.0/virtio0/block/vda"
    base.mkdir(parents=True)
    (base / "dev").write_text(f"{disk[0]}:{disk[1]}\n")
    (root / "dev/block").mkdir(parents=True)
    (root / "dev/block" / f"{disk[0]}:{disk[1]}").symlink_to(base)
    for i, part in enumerate(parts, 1):
        p = base / f"vda{i}"
        p.mkdir()
        (p / "partition").write_text(f"{i}\n")
        (p / "dev").write_text(f"{part[0]}:{part[1]}\n")
        (root / "dev/block" / f"{part[0]}:{part[1]}").symlink_to(p)


def test_root_disk_and_its_partitions_are_refused(tmp_path: Path) -> None:
    rootdir = tmp_path / "root"
    rootdir.mkdir()
    st = os.stat(rootdir)
    root_dev = (os.major(st.st_dev), os.minor(st.st_dev))
    disk = (root_dev[0], root_dev[1] + 5000)
    sibling = (root_dev[0], root_dev[1] + 5001)
    sysfs = tmp_path / "sys"
    _fake_sysfs(sysfs, disk, [root_dev, sibling])
    for dev in (root_dev, disk, sibling):
        node = GuestNode("/dev/vdX", "b", *dev)
        with pytest.raises(PermissionDenied, match="root disk"):
            hotplug.refuse_root_disk(node, "device", sysfs_root=str(sysfs), root=str(rootdir))
    hotplug.refuse_root_disk(
        GuestNode("/dev/vdz", "b", 254, 4242), "d", sysfs_root=str(sysfs), root=str(rootdir)
    )
    hotplug.refuse_root_disk(
        GuestNode("/dev/null", "c", *root_dev), "d", sysfs_root=str(sysfs), root=str(rootdir)
    )


def test_guest_node() -> None:
    with pytest.raises(InvalidArgument, match="not a block device"):
        hotplug.guest_node("/dev/null", "d")
    assert hotplug.guest_node("/dev/null", "d", block=False) == GuestNode("/dev/null", "c", 1, 3)
    with pytest.raises(InvalidArgument, match="does not exist"):
        hotplug.guest_node("/dev/does-not-exist-here", "d")


class FakeUevents:
    """The parts of agent.uevents.Uevents the resolver uses, without a loop."""

    def __init__(self) -> None:
        self.watcher = DeviceWatcher(default_timeout=0.05)
        self.loop = None

    def wait(self, start: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        handle = start(self.watcher)

        def done(h: Any) -> None:
            try:
                fut.set_result(h.result())
            except Exception as exc:  # noqa: BLE001
                fut.set_exception(exc)

        handle.add_done_callback(done)
        return fut


def _outcome(fut: Future[Any]) -> Any:
    assert fut.done()
    exc = fut.exception()
    if exc is not None:
        raise exc
    return fut.result()


def _add(devpath: str, devname: str) -> Uevent:
    return Uevent("add", devpath, {"SUBSYSTEM": "block", "DEVNAME": devname})


def _pci_sysfs(root: Path) -> None:
    (root / "devices/pci0000:00").mkdir(parents=True)


def test_resolve_virtio_blk_by_pci_path(tmp_path: Path) -> None:
    _pci_sysfs(tmp_path)
    ev = FakeUevents()
    early = _add("/devices/pci0000:00/0000:00:03.0/virtio2/block/vdc", "vdc")
    ev.watcher.feed(early)  # arrived before anyone waited: still found
    fut = hotplug.resolve(ev, "blk", "03", "storage", sysfs_root=str(tmp_path))  # type: ignore[arg-type]
    assert _outcome(fut) == "/dev/vdc"
    fut = hotplug.resolve(ev, "blk", "04", "storage x", sysfs_root=str(tmp_path))  # type: ignore[arg-type]
    assert not fut.done()
    ev.watcher.feed(_add("/devices/pci0000:00/0000:00:04.0/virtio3/block/vdd", "vdd"))
    assert _outcome(fut) == "/dev/vdd"
    # A /dev path is used as is.
    assert _outcome(hotplug.resolve(ev, "blk", "/dev/vde", "s")) == "/dev/vde"  # type: ignore[arg-type]


def test_resolve_missing_device_times_out(tmp_path: Path) -> None:
    _pci_sysfs(tmp_path)
    ev = FakeUevents()
    fut = hotplug.resolve(ev, "blk", "05", "storage blk '05' for '/m'", sysfs_root=str(tmp_path))  # type: ignore[arg-type]
    assert not fut.done()
    ev.watcher.poll_expired(ev.watcher.clock() + 1)
    with pytest.raises(
        DeadlineExceeded, match=r"storage blk '05' for '/m': timeout after 0.05s .*PCI path 05"
    ):
        _outcome(fut)


def test_resolve_mmio_and_errors(tmp_path: Path) -> None:
    ev = FakeUevents()
    fut = hotplug.resolve(ev, "mmioblk", "/dev/vdq-not-here", "s")  # type: ignore[arg-type]
    assert not fut.done()
    ev.watcher.feed(_add("/devices/platform/a000.virtio_mmio/virtio5/block/vdq-not-here", "vdq-not-here"))
    assert _outcome(fut) == "/dev/vdq-not-here"
    with pytest.raises(InvalidArgument, match="SCSIID:LUN"):
        _outcome(hotplug.resolve(ev, "scsi", "nope", "s"))  # type: ignore[arg-type]
    with pytest.raises(Unimplemented, match="uevent"):
        _outcome(hotplug.resolve(None, "blk", "02/01", "s"))
    with pytest.raises(InvalidArgument, match="no device given"):
        _outcome(hotplug.resolve(ev, "blk", "", "s"))  # type: ignore[arg-type]


def test_advertised_storage_handlers_are_registered() -> None:
    """GetGuestDetails must advertise exactly the drivers CreateContainer can mount."""
    import agent.devices.blockstorage  # noqa: F401 - registers the block drivers
    from agent import storage
    from agent.guest.details import DEFAULT_STORAGE_HANDLERS

    assert set(DEFAULT_STORAGE_HANDLERS) == set(storage.DRIVERS)
