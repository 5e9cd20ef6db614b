"""GetVolumeStats on real filesystems; ResizeVolume on a loop-backed ext4
mounted in a private mount namespace (the host's mounts are never touched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.errors import FailedPrecondition, NotFound
from agent.guest.volume import find_mount, get_volume_stats, resize_volume


def test_stats_match_statvfs(tmp_path: Path) -> None:
    stats = get_volume_stats(str(tmp_path))
    st = os.statvfs(tmp_path)
    by_unit = {u.unit: u for u in stats.usage}
    b, i = by_unit["BYTES"], by_unit["INODES"]
    assert b.total == st.f_blocks * st.f_frsize
    assert abs(b.available - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024  # the disk is live
    assert b.used + b.available <= b.total
    assert i.total == st.f_files and i.used + i.available <= i.total
    assert not stats.abnormal and stats.message == "OK"


def test_stats_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        get_volume_stats(str(tmp_path / "nope"))


def test_find_mount_of_proc() -> None:
    m = find_mount("/proc/self")
    assert m.mount_point == "/proc" and m.fstype == "proc"


def test_resize_unsupported_fs() -> None:
    with pytest.raises(FailedPrecondition, match="cannot resize a proc filesystem"):
        resize_volume("/proc")


SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from agent.guest.volume import get_volume_stats, resize_volume
    img, mnt, dev, fstype, new_size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    subprocess.run(["mount", "-t", fstype, dev, mnt], check=True)
    try:
        before = get_volume_stats(mnt).usage[0].total
        with open(img, "r+b") as f:
            f.truncate(new_size)
        subprocess.run(["losetup", "-c", dev], check=True)
        errors = []
        for size in (2 * new_size, new_size):
            try:
                m = resize_volume(mnt, size=size)
                errors.append("")
            except Exception as exc:
                errors.append(type(exc).__name__ + ": " + str(exc))
        after = get_volume_stats(mnt).usage[0].total
        print(json.dumps({"before": before, "after": after, "errors": errors}))
    finally:
        subprocess.run(["umount", mnt], check=True)
    """
)


def has_cap(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def resize_in_private_mount_ns(tmp_path: Path, fstype: str, size: int, new_size: int) -> dict:
    mkfs = f"mkfs.{fstype}"
    for tool in (mkfs, "losetup", "unshare"):
        assert shutil.which(tool), f"{tool} is required (apt: e2fsprogs, xfsprogs, util-linux)"
    img = tmp_path / f"{fstype}.img"
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run([mkfs, "-q", "-f" if fstype == "xfs" else "-F", str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True)
    dev_path = dev.stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = [sys.executable, "-c", SCRIPT, str(img), str(mnt), dev_path, fstype, str(new_size)]
    try:
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", *argv], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run(["losetup", "-d", dev_path], check=False)
    assert not os.path.ismount(mnt)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_resize_xfs_grows_the_mounted_filesystem(tmp_path: Path) -> None:
    mib = 1024 * 1024
    res = resize_in_private_mount_ns(tmp_path, "xfs", 320 * mib, 512 * mib)
    too_big, ok = res["errors"]
    assert too_big.startswith("FailedPrecondition") and "smaller than the requested" in too_big
    assert ok == ""
    assert res["before"] < 320 * mib < 400 * mib < res["after"]


def test_resize_ext4_online(tmp_path: Path) -> None:
    """Online ext4 growth needs CAP_SYS_RESOURCE, which this sandbox withholds: then
    the error must say so clearly; with it, the filesystem must grow."""
    mib = 1024 * 1024
    res = resize_in_private_mount_ns(tmp_path, "ext4", 16 * mib, 64 * mib)
    too_big, second = res["errors"]
    assert too_big.startswith("FailedPrecondition")
    if has_cap(24):  # CAP_SYS_RESOURCE
        assert second == "" and res["after"] > 48 * mib
    else:
        assert (
            second.startswith("Internal") and "resize2fs failed" in second and "Permission denied" in second
        )


def test_resize_refuses_the_guest_root_filesystem() -> None:
    from agent.errors import PermissionDenied
    from agent.guest.volume import resize_volume

    with pytest.raises(PermissionDenied, match="root filesystem"):
        resize_volume("/")
