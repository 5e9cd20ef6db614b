"""Block devices in CreateContainer, with a real loop device (crun).

* a ``blk`` storage given by /dev path: an ext4 image on a loop device is
  mounted by the agent and bind-mounted into the container, which reads a
  file made by ``mkfs.ext4 -d``; RemoveContainer unmounts it;
* a ``grpc.Device`` maps the same loop device at ``/dev/xvdz``: the spec
  names made-up host numbers (250:99) in ``linux.devices`` and in an allow
  rule after a deny-all rule; inside the container the node has the guest
  node's major:minor and can be read (the cgroup rule was rewritten too);
* a ``blk`` storage by PCI path that never appears fails after the short
  ``hotplug_timeout`` with DEADLINE_EXCEEDED and nothing is left behind;
  an unsupported device type is UNIMPLEMENTED.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.protocols import agent_pb2, oci_pb2
from ttrpc.status import Code, RPCError

from .conftest import start_guest
from .pod import SHARED, Pod, add_rootfs, container_spec, create_request, share_storage

MOUNT_POINT = "/run/kata-containers/sandbox/storage/blkvol"
HOTPLUG_TIMEOUT = 0.5
FAKE_MAJOR, FAKE_MINOR = 250, 99


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices)")
    missing = [t for t in ("losetup", "mkfs.ext4") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing tools: {', '.join(missing)}")
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello from a block device\n")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _error(fn, *args) -> RPCError:  # type: ignore[no-untyped-def]
    with pytest.raises(RPCError) as err:
        fn(*args)
    return err.value


def test_block_storage_and_device(tmp_path: Path, share: Path, loop_device: str) -> None:
    guest = start_guest(tmp_path, "crun", "--hotplug-timeout", str(HOTPLUG_TIMEOUT))
    try:
        _scenario(guest, Pod(guest), share, loop_device)
    finally:
        guest.stop()


def _scenario(guest, pod: Pod, share: Path, dev: str) -> None:  # type: ignore[no-untyped-def]
    rdev = os.stat(dev).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    assert (major, minor) != (FAKE_MAJOR, FAKE_MINOR)
    add_rootfs(share, "blk")
    pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="hp", storages=[share_storage(share)]))

    # An unsupported device type, and a PCI-path disk that never appears: refused, nothing left.
    vfio = agent_pb2.Device(id="gpu", type="vfio-pci", vm_path="02/01", container_path="/dev/vfio/1")
    req = create_request("bad", container_spec("bad", ["true"], root=f"{SHARED}/blk/rootfs"))
    req.devices.append(vfio)
    err = _error(pod.call, "CreateContainer", req)
    assert err.code == Code.UNIMPLEMENTED and "vfio-pci" in err.message, err

    req = create_request("bad", container_spec("bad", ["true"], root=f"{SHARED}/blk/rootfs"))
    req.storages.append(
        agent_pb2.Storage(driver="blk", source="1f", fstype="ext4", mount_point=MOUNT_POINT + "-missing")
    )
    started = time.monotonic()
    err = _error(pod.call, "CreateContainer", req)
    elapsed = time.monotonic() - started
    print(f"missing PCI device failed after {elapsed:.2f}s: {err.message}")
    assert err.code == Code.DEADLINE_EXCEEDED, err
    assert "PCI path 1f" in err.message and "timeout" in err.message, err
    assert HOTPLUG_TIMEOUT * 0.8 <= elapsed < HOTPLUG_TIMEOUT + 5
    assert not guest.guest_path(MOUNT_POINT + "-missing").exists()
    assert _error(pod.start, "bad").code == Code.NOT_FOUND

    # The loop device: mounted as a storage, and mapped as a device with made-up host numbers.
    script = (
        "cat /data/hello.txt; stat -c '%t:%T %F' /dev/xvdz; "
        "dd if=/dev/xvdz bs=4096 count=1 2>/dev/null | wc -c"
    )
    spec = container_spec(
        "blk",
        ["sh", "-c", script],
        mounts=[oci_pb2.Mount(destination="/data", type="bind", source=MOUNT_POINT, options=["rbind", "rw"])],
    )
    spec.Linux.Devices.append(
        oci_pb2.LinuxDevice(Path="/dev/xvdz", Type="b", Major=FAKE_MAJOR, Minor=FAKE_MINOR, FileMode=0o660)
    )
    spec.Linux.Resources.Devices.append(
        oci_pb2.LinuxDeviceCgroup(Allow=True, Type="b", Major=FAKE_MAJOR, Minor=FAKE_MINOR, Access="rwm")
    )
    req = create_request("blk", spec)
    req.storages.append(agent_pb2.Storage(driver="blk", source=dev, fstype="ext4", mount_point=MOUNT_POINT))
    req.devices.append(agent_pb2.Device(id="disk0", type="blk", vm_path=dev, container_path="/dev/xvdz"))
    pod.call("CreateContainer", req)
    mountinfo = guest.guest_path("/proc/1/mountinfo")
    assert f" {MOUNT_POINT} " in mountinfo.read_text()
    linux = json.loads(guest.guest_path("/run/kata-agent/bundles/blk/config.json").read_text())["linux"]
    assert [(d["path"], d["major"], d["minor"]) for d in linux["devices"]] == [("/dev/xvdz", major, minor)]
    rule = {"allow": True, "type": "b", "major": major, "minor": minor, "access": "rwm"}
    assert linux["resources"]["devices"][-1] == rule, linux["resources"]
    pod.start("blk")
    out = pod.read_all("blk", "blk").decode()
    assert pod.wait("blk", "blk") == 0, out
    lines = out.splitlines()
    assert lines[0] == "hello from a block device", out
    assert lines[1] == f"{major:x}:{minor:x} block special file", out
    assert lines[2].strip() == "4096", out

    pod.remove("blk")
    assert f" {MOUNT_POINT} " not in mountinfo.read_text()
    pod.call("DestroySandbox", agent_pb2.DestroySandboxRequest())
