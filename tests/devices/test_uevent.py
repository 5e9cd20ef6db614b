"""Uevent parsing (sans-IO) and the real NETLINK_KOBJECT_UEVENT socket."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

from agent.devices.uevent import format_uevent, open_uevent_socket, parse_uevent, read_uevents

KERNEL_MSG = (
    b"add@/devices/pci0000:00/0000:00:02.0/virtio1/block/vda\0ACTION=add\0"
    b"DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio1/block/vda\0SUBSYSTEM=block\0"
    b"MAJOR=254\0MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=1234\0"
)


def test_parse_kernel_message() -> None:
    ev = parse_uevent(KERNEL_MSG)
    assert ev is not None
    assert ev.action == "add" and ev.devpath.endswith("/virtio1/block/vda")
    assert ev.subsystem == "block" and ev.devname == "vda" and ev.devtype == "disk"
    assert ev.seqnum == 1234 and ev.env["MAJOR"] == "254"


def test_parse_rejects_udev_and_garbage() -> None:
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 32) is None
    assert parse_uevent(b"") is None
    assert parse_uevent(b"no-at-sign\0A=B\0") is None
    assert parse_uevent(b"@/devices/x\0") is None


def test_parse_tolerates_odd_fields() -> None:
    ev = parse_uevent(b"change@/devices/x\0NOEQUALS\0=novalue\0EMPTY=\0K=a=b\0\0\0")
    assert ev is not None and ev.action == "change" and ev.devpath == "/devices/x"
    assert ev.env == {"EMPTY": "", "K": "a=b"}
    assert ev.subsystem == "" and ev.seqnum == 0


def test_format_round_trip() -> None:
    data = format_uevent("remove", "/devices/virtual/block/loop3", SUBSYSTEM="block", DEVNAME="loop3")
    ev = parse_uevent(data)
    assert ev is not None and (ev.action, ev.devname, ev.subsystem) == ("remove", "loop3", "block")


def test_real_socket_sees_a_loop_device_event(tmp_path) -> None:
    losetup = shutil.which("losetup")
    assert losetup, "losetup (util-linux) is required"
    sock = open_uevent_socket()
    try:
        assert os.get_blocking(sock.fileno()) is False
        read_uevents(sock)  # drain whatever was queued
        img = tmp_path / "disk.img"
        img.write_bytes(b"\0" * (1 << 20))
        dev = subprocess.run([losetup, "-f", "--show", str(img)], capture_output=True, text=True, check=True)
        node = dev.stdout.strip()
        try:
            name = os.path.basename(node)
            seen = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(e.devname == name for e in seen):
                select.select([sock], [], [], 0.5)
                seen += read_uevents(sock)[0]
            match = [e for e in seen if e.devname == name]
            assert match, f"no uevent for {name}; got {seen}"
            assert match[0].subsystem == "block" and match[0].devpath.endswith(f"/block/{name}")
        finally:
            subprocess.run([losetup, "-d", node], check=False)
    finally:
        sock.close()
