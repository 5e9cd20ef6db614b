"""GetVolumeStats and ResizeVolume for volumes mounted in the guest."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from agent.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied

#: Runs a resolved argv to completion, raising an agent error if it fails.
Runner = Callable[[list[str]], None]


class VolumeUsage(NamedTuple):
    available: int
    total: int
    used: int
    unit: str  # "BYTES" or "INODES", the names of grpc.VolumeUsage.Unit


class VolumeStats(NamedTuple):
    usage: list[VolumeUsage]
    abnormal: bool = False
    message: str = "OK"


def get_volume_stats(path: str) -> VolumeStats:
    """Bytes and inodes of the filesystem holding ``path`` (kubelet's arithmetic:
    available is what unprivileged users may still use, used excludes free blocks)."""
    check_volume_path(path)
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        raise NotFound(f"volume {path} does not exist") from None
    return VolumeStats(
        usage=[
            VolumeUsage(
                available=st.f_bavail * st.f_frsize,
                total=st.f_blocks * st.f_frsize,
                used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                unit="BYTES",
            ),
            VolumeUsage(
                available=st.f_favail,
                total=st.f_files,
                used=st.f_files - st.f_ffree,
                unit="INODES",
            ),
        ]
    )


def check_volume_path(path: str) -> None:
    """A volume path is absolute, names no '..' and holds no NUL (InvalidArgument)."""
    if not path:
        raise InvalidArgument("volume_guest_path is empty")
    if "\0" in path:
        raise InvalidArgument("volume_guest_path contains a NUL byte")
    if not path.startswith("/") or ".." in path.split("/"):
        raise InvalidArgument(f"volume_guest_path {path!r} must be absolute, without '..'")


class MountInfo(NamedTuple):
    mount_point: str
    fstype: str
    source: str
    dev: int


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def find_mount(path: str, proc_root: str = "/proc") -> MountInfo:
    """The mount that holds ``path`` (same device, longest mount point prefix)."""
    real = os.path.realpath(path)
    try:
        dev = os.stat(real).st_dev
    except FileNotFoundError:
        raise NotFound(f"volume {path} does not exist") from None
    best: MountInfo | None = None
    with open(Path(proc_root, "self/mountinfo")) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            major, minor = (int(x) for x in fields[2].split(":"))
            mnt = _unescape(fields[4])
            if os.makedev(major, minor) != dev:
                continue
            if real != mnt and not real.startswith(mnt.rstrip("/") + "/"):
                continue
            if best is None or len(mnt) >= len(best.mount_point):
                best = MountInfo(mnt, tail[0], _unescape(tail[1]), dev)
    if best is None:
        raise NotFound(f"no mount found for {path}")
    return best


def _run(argv: list[str], runner: Runner | None = None) -> None:
    tool = shutil.which(argv[0], path="/usr/sbin:/sbin:/usr/bin:/bin")
    if tool is None:
        raise FailedPrecondition(f"{argv[0]} is not installed in the guest")
    if runner is not None:  # the agent's way of running children (its reaper collects exits)
        runner([tool, *argv[1:]])
        return
    proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise Internal(
            f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )


def resize_volume(
    path: str, size: int = 0, proc_root: str = "/proc", *, runner: Runner | None = None
) -> MountInfo:
    """Grow the filesystem of a mounted volume to fill its (already grown) device.

    ``size`` is the size the runtime gave the device; a device still smaller
    than that is reported rather than half-resized.
    """
    check_volume_path(path)
    mount = find_mount(path, proc_root)
    if mount.dev == os.stat("/").st_dev:
        # Only volumes the runtime plugged may grow: never the guest's own root filesystem.
        raise PermissionDenied(f"{path} is on the guest's root filesystem: refusing to resize it")
    if size:
        try:
            fd = os.open(mount.source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot open the device {mount.source} of {path}: {exc.strerror}"
            ) from None
        try:
            dev_size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        if dev_size < size:
            raise FailedPrecondition(
                f"device {mount.source} is {dev_size} bytes, smaller than the requested {size}"
            )
    if mount.fstype in ("ext2", "ext3", "ext4"):
        _run(["resize2fs", mount.source], runner)
    elif mount.fstype == "xfs":
        _run(["xfs_growfs", mount.mount_point], runner)
    else:
        raise FailedPrecondition(f"cannot resize a {mount.fstype} filesystem ({path})")
    return mount
