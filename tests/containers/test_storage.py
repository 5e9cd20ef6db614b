"""Storage drivers and reference counting, with real mounts beneath a temporary directory."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from agent import storage
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from agent.storage import StorageManager, StorageSpec, is_mounted, parse_mount_options


@pytest.fixture
def mgr(unmount_after: Path) -> StorageManager:
    run = unmount_after / "run"
    run.mkdir()
    manager = StorageManager(run)
    yield manager
    manager.release_all()


def mountinfo_line(path: Path) -> str:
    target = os.path.realpath(path)
    lines = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if ln.split()[4] == target]
    assert lines, f"{target} is not mounted"
    return lines[-1]


def test_parse_mount_options() -> None:
    opts = parse_mount_options(
        [
            "ro",
            "nosuid",
            "nodev",
            "rbind",
            "rslave",
            "size=64m",
            "mode=1777",
            "x-systemd.foo",
            "io.katacontainers.a",
        ]
    )
    assert (
        opts.flags
        == storage.MS_RDONLY | storage.MS_NOSUID | storage.MS_NODEV | storage.MS_BIND | storage.MS_REC
    )
    assert opts.propagation == storage.MS_SLAVE | storage.MS_REC
    assert opts.data == "size=64m,mode=1777"
    assert opts.extra == {"size": "64m", "mode": "1777"}
    assert parse_mount_options(["ro", "rw", "defaults"]).flags == 0


def test_ephemeral_is_a_tmpfs_with_its_options(mgr: StorageManager) -> None:
    spec = StorageSpec(
        driver="ephemeral",
        source="tmpfs",
        fstype="tmpfs",
        options=("size=4m", "mode=0750"),
        mount_point="sandbox/eph",
    )
    path = mgr.acquire(spec)
    assert path == mgr.mount_root / "sandbox" / "eph"
    assert " - tmpfs " in mountinfo_line(path)
    assert os.statvfs(path).f_blocks * os.statvfs(path).f_frsize == 4 * 1024 * 1024
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert mgr.release(path)
    assert not is_mounted(path) and not path.exists()


def test_reference_counting(mgr: StorageManager) -> None:
    # Absolute guest paths are fine as long as they lie beneath the mount root.
    spec = StorageSpec(driver="ephemeral", source="tmpfs", mount_point=f"{mgr.mount_root}/shared-eph")
    first = mgr.acquire(spec)
    assert first == mgr.mount_root / "shared-eph"
    (first / "data").write_text("kept")
    assert mgr.acquire(spec) == first
    assert mgr.refcount(first) == 2
    assert not mgr.release(first)
    assert is_mounted(first) and (first / "data").read_text() == "kept"
    assert mgr.release(first)
    assert not is_mounted(first)
    with pytest.raises(NotFound):
        mgr.release(first)


def test_same_mount_point_different_storage_is_refused(mgr: StorageManager, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    mgr.acquire(StorageSpec(driver="ephemeral", source="tmpfs", mount_point="x"))
    with pytest.raises(InvalidArgument, match="already used"):
        mgr.acquire(StorageSpec(driver="bind", source=str(tmp_path / "src"), mount_point="x"))


def test_bind_directory_and_readonly(mgr: StorageManager, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("from source")
    rw = mgr.acquire(StorageSpec(driver="bind", source=str(src), mount_point="vol/rw"))
    assert (rw / "f").read_text() == "from source"
    (rw / "g").write_text("written through")
    assert (src / "g").read_text() == "written through"
    ro = mgr.acquire(StorageSpec(driver="bind", source=str(src), options=("ro",), mount_point="vol/ro"))
    assert (ro / "f").read_text() == "from source"
    with pytest.raises(OSError) as err:
        (ro / "h").write_text("nope")
    assert err.value.errno == errno.EROFS
    assert "ro" in mountinfo_line(ro).split()[5].split(",")
    mgr.release(ro)
    mgr.release(rw)
    assert src.is_dir() and (src / "g").exists()  # the source is never touched


def test_bind_single_file(mgr: StorageManager, tmp_path: Path) -> None:
    src = tmp_path / "resolv.conf"
    src.write_text("nameserver 10.0.0.1\n")
    path = mgr.acquire(StorageSpec(driver="bind", source=str(src), mount_point="etc/resolv.conf"))
    assert path.is_file() and path.read_text() == "nameserver 10.0.0.1\n"
    mgr.release(path)
    assert not path.exists()


def test_virtio_fs_with_bind_option_and_without_device(mgr: StorageManager, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c1").mkdir()
    path = mgr.acquire(
        StorageSpec(
            driver="virtio-fs", source=str(shared), fstype="bind", options=("rbind",), mount_point="shared"
        )
    )
    assert (path / "c1").is_dir()
    mgr.release(path)
    # A real virtiofs tag needs the device, which a test host does not have: a clear error.
    with pytest.raises((FailedPrecondition, NotFound), match="virtiofs|kataShared"):
        mgr.acquire(
            StorageSpec(driver="virtio-fs", source="kataShared", fstype="virtiofs", mount_point="vfs")
        )
    assert not (mgr.mount_root / "vfs").exists()  # the mount point we made is gone again


def test_overlayfs(mgr: StorageManager, tmp_path: Path) -> None:
    lower1, lower2 = tmp_path / "l1", tmp_path / "l2"
    for d, name in ((lower1, "one"), (lower2, "two")):
        d.mkdir()
        (d / name).write_text(name)
    upper, work = tmp_path / "rw" / "upper", tmp_path / "rw" / "work"
    spec = StorageSpec(
        driver="overlayfs",
        source="overlay",
        fstype="overlay",
        options=(f"lowerdir={lower1}:{lower2}", f"upperdir={upper}", f"workdir={work}"),
        mount_point="overlay/c1",
    )
    path = mgr.acquire(spec)
    assert " - overlay " in mountinfo_line(path)
    assert {p.name for p in path.iterdir()} == {"one", "two"}
    (path / "three").write_text("3")
    assert (upper / "three").read_text() == "3" and not (lower1 / "three").exists()
    mgr.release(path)
    bad = StorageSpec(
        driver="overlayfs", options=(f"lowerdir={tmp_path}/missing",), mount_point="overlay/bad"
    )
    with pytest.raises(NotFound, match="lowerdir"):
        mgr.acquire(bad)
    with pytest.raises(InvalidArgument, match="lowerdir="):
        mgr.acquire(StorageSpec(driver="overlayfs", mount_point="overlay/none"))


def test_local_directory_with_mode_and_fs_group(mgr: StorageManager) -> None:
    spec = StorageSpec(
        driver="local", options=("mode=0770",), mount_point="sandbox/local/vol1", fs_group=4321
    )
    path = mgr.acquire(spec)
    st = os.stat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_gid == 4321
    assert stat.S_IMODE(st.st_mode) == 0o770 | stat.S_ISGID
    (path / "sub").mkdir()
    (path / "sub" / "file").write_text("x")
    assert mgr.acquire(spec) == path  # a second container of the pod
    mgr.release(path)
    assert (path / "sub" / "file").exists()
    mgr.release(path)
    assert not path.exists()  # the last user takes the emptyDir with it


def test_fs_group_on_a_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "exe").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "d" / "exe", 0o700)
    (tmp_path / "d" / "plain").write_text("x")
    os.chmod(tmp_path / "d" / "plain", 0o600)
    os.symlink("/etc/passwd", tmp_path / "d" / "link")
    storage.apply_fs_group(tmp_path / "d", 777)
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "exe").st_mode) == 0o770
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "plain").st_mode) == 0o660
    assert os.stat(tmp_path / "d" / "plain").st_gid == 777
    assert os.stat("/etc/passwd").st_gid == 0  # links are not followed
    os.chown(tmp_path / "d" / "plain", -1, 0)
    storage.apply_fs_group(tmp_path / "d", 777, "OnRootMismatch")  # root already right: no walk
    assert os.stat(tmp_path / "d" / "plain").st_gid == 0


@pytest.mark.parametrize(
    ("mount_point", "error"),
    [
        ("/etc/elsewhere", PermissionDenied),
        ("../outside", PermissionDenied),
        ("", InvalidArgument),
        ("/", PermissionDenied),
    ],
)
def test_mount_points_stay_beneath_the_root(mgr: StorageManager, mount_point: str, error: type) -> None:
    with pytest.raises(error):
        mgr.acquire(StorageSpec(driver="ephemeral", mount_point=mount_point))


def test_symlink_planted_in_the_mount_root_is_not_followed_out(mgr: StorageManager, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, mgr.mount_root / "evil")
    os.symlink("../outside", mgr.mount_root / "evil2")
    for mp in ("evil/x", "evil2/x"):
        with pytest.raises(PermissionDenied):
            mgr.acquire(StorageSpec(driver="ephemeral", mount_point=mp))
    assert list(outside.iterdir()) == []


def test_unknown_driver_and_missing_source(mgr: StorageManager, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="storage.driver 'nvme-magic'"):
        mgr.acquire(StorageSpec(driver="nvme-magic", mount_point="x"))
    with pytest.raises(NotFound, match="storage.source"):
        mgr.acquire(StorageSpec(driver="bind", source=str(tmp_path / "nope"), mount_point="x"))
    with pytest.raises(InvalidArgument, match="ephemeral driver mounts tmpfs"):
        mgr.acquire(StorageSpec(driver="ephemeral", fstype="ext4", mount_point="x"))
    assert not (mgr.mount_root / "x").exists()


def test_busy_mount_is_detached_on_last_release(mgr: StorageManager) -> None:
    path = mgr.acquire(StorageSpec(driver="ephemeral", mount_point="busy"))
    fd = os.open(path, os.O_RDONLY)
    cwd = os.getcwd()
    try:
        os.chdir(path)  # makes a plain umount fail with EBUSY
        assert mgr.release(path)
        assert not is_mounted(path)
    finally:
        os.chdir(cwd)
        os.close(fd)


def test_concurrent_acquire_mounts_once(mgr: StorageManager) -> None:
    spec = StorageSpec(driver="ephemeral", mount_point="concurrent")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(mgr.acquire(spec))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and mgr.refcount(results[0]) == 8
    target = os.path.realpath(results[0])
    assert sum(1 for p in storage.mount_points() if p == target) == 1
    for _ in range(8):
        mgr.release(results[0])
    assert not is_mounted(results[0])


def test_from_dict() -> None:
    spec = StorageSpec.from_dict(
        {
            "driver": "local",
            "source": "local",
            "options": ["mode=0777"],
            "mount_point": "/run/kata-containers/sandbox/local/v",
            "fs_group": {"group_id": 2000, "group_change_policy": "OnRootMismatch"},
        }
    )
    assert (spec.driver, spec.options, spec.fs_group, spec.fs_group_policy) == (
        "local",
        ("mode=0777",),
        2000,
        "OnRootMismatch",
    )
    assert StorageSpec.from_dict({"driver": "ephemeral", "mount_point": "m"}).fs_group is None
