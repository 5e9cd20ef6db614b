"""AddSwap / AddSwapPath with real swap areas on files and a loop device.

swapon works in this sandbox, so these tests enable real (4 MiB) swap areas
and always swapoff them afterwards; the fixture checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agent.devices.uevent import format_uevent, parse_uevent
from agent.devices.watcher import DeviceWatcher
from agent.errors import DeadlineExceeded, InvalidArgument, NotFound
from agent.guest.swap import (
    active_swaps,
    add_swap,
    add_swap_path,
    has_swap_signature,
    page_size,
    swapoff,
    write_swap_header,
)

SIZE = 4 * 1024 * 1024


@pytest.fixture
def swaps(tmp_path: Path):
    before = set(active_swaps())
    yield
    for path in set(active_swaps()) - before:
        subprocess.run(["swapoff", path], check=False)
    assert set(active_swaps()) == before


def allocated_file(path: Path, size: int = SIZE) -> Path:
    with open(path, "wb") as f:
        f.write(b"\0" * size)  # written, not sparse: swap refuses files with holes
    path.chmod(0o600)
    return path


def test_header_layout(tmp_path: Path) -> None:
    f = allocated_file(tmp_path / "swapfile")
    pages = write_swap_header(str(f))
    page = page_size()
    data = f.read_bytes()[:page]
    assert data[page - 10 :] == b"SWAPSPACE2"
    version, last_page, bad = struct.unpack_from("=III", data, 1024)
    assert (version, last_page, bad) == (1, SIZE // page - 1, 0) and pages == last_page
    assert data[1036:1052] != b"\0" * 16  # a UUID
    assert has_swap_signature(str(f))
    blkid = shutil.which("blkid")
    if blkid:  # util-linux agrees it is swap
        out = subprocess.run([blkid, "-o", "value", "-s", "TYPE", str(f)], capture_output=True, text=True)
        assert out.stdout.strip() == "swap"


def test_add_swap_path_formats_and_enables(tmp_path: Path, swaps) -> None:
    f = allocated_file(tmp_path / "swapfile")
    assert not has_swap_signature(str(f))
    add_swap_path(str(f))
    try:
        assert str(f) in active_swaps()
    finally:
        swapoff(str(f))
    assert str(f) not in active_swaps()


def test_add_swap_path_errors(tmp_path: Path, swaps) -> None:
    with pytest.raises(InvalidArgument):
        add_swap_path("relative/swap")
    with pytest.raises(NotFound):
        add_swap_path(str(tmp_path / "missing"))
    small = allocated_file(tmp_path / "small", page_size() * 4)
    with pytest.raises(InvalidArgument, match="at least 10 pages"):
        add_swap_path(str(small))
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(SIZE)  # all holes
    write_swap_header(str(sparse))
    with pytest.raises(InvalidArgument, match="swapon"):
        add_swap_path(str(sparse))


def test_add_swap_by_pci_path_on_a_loop_device(tmp_path: Path, swaps) -> None:
    losetup = shutil.which("losetup")
    assert losetup, "losetup (util-linux) is required"
    sysfs = tmp_path / "sys"
    (sysfs / "devices/pci0000:00/0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    img = allocated_file(tmp_path / "disk.img")
    write_swap_header(str(img))
    node = subprocess.run([losetup, "-f", "--show", str(img)], capture_output=True, text=True, check=True)
    dev = node.stdout.strip()
    name = os.path.basename(dev)
    try:
        watcher = DeviceWatcher()
        # The "hotplug" uevent of a virtio-blk disk behind the bridge at 02, slot 03.
        watcher.feed(
            parse_uevent(
                format_uevent(
                    "add",
                    f"/devices/pci0000:00/0000:00:02.0/0000:01:03.0/virtio5/block/{name}",
                    SUBSYSTEM="block",
                    DEVNAME=name,
                )
            )
        )
        assert add_swap(watcher, [2, 3], sysfs_root=str(sysfs)) == dev
        assert dev in active_swaps()
        swapoff(dev)
        with pytest.raises(DeadlineExceeded, match="PCI path 02.0/04.0"):
            add_swap(watcher, [2, 4], sysfs_root=str(sysfs), timeout=0.2)
    finally:
        subprocess.run(["swapoff", dev], check=False, capture_output=True)
        subprocess.run([losetup, "-d", dev], check=False)


def test_add_swap_path_refuses_devices_and_links(tmp_path: Path) -> None:
    """Never write a swap header through a device node or a symlink (the guest's root disk)."""
    from agent.errors import PermissionDenied

    target = tmp_path / "real"
    target.write_bytes(b"\0" * (4 << 20))
    link = tmp_path / "link"
    link.symlink_to(target)
    for path in ("/dev/null", str(link)):
        with pytest.raises(PermissionDenied, match="not a regular file"):
            add_swap_path(path)
    assert target.read_bytes() == b"\0" * (4 << 20)  # nothing written through the link
