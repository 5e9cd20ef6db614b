"""guest/: the build's steps, the initrd packer (checked by an independent cpio), image and units."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest import build, mkinitrd

from .helpers import REPO


def test_dry_run_prints_every_step_and_touches_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "guest/build.py"), "--dry-run", "--image", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"$ debootstrap --variant=minbase --include=python3,crun bookworm {out}/rootfs" in text
    assert f"--target {out}/rootfs/usr/lib/kata-agent --only-binary=:all:" in text
    assert "--python-version 3.11" in text
    assert f"$ chroot {out}/rootfs python3 -m compileall" in text
    assert "== initrd kata-agent-initrd.img (gzip)" in text
    assert "$ mkfs.ext4" in text and "-E offset=1048576" in text
    assert not out.exists()


def _independent_cpio() -> list[str] | None:
    if shutil.which("cpio"):
        return ["cpio", "-idm", "--quiet"]
    if shutil.which("busybox"):
        return ["busybox", "cpio", "-idm"]
    return None


def _sample_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "empty").mkdir()
    (root / "etc/hostname").write_text("guest\n")
    big = bytes(range(256)) * 5000 + b"odd"  # not a multiple of 4: the padding is exercised
    (root / "usr/bin/tool").write_bytes(big)
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    (root / "init").symlink_to("/usr/bin/tool")
    os.mkfifo(root / "fifo")


def test_initrd_unpacks_with_an_independent_cpio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tool = _independent_cpio()
    if tool is None:
        pytest.skip("needs cpio or busybox to check the archive")
    tree, out = tmp_path / "tree", tmp_path / "unpacked"
    _sample_tree(tree)
    stats = mkinitrd.pack(str(tree), str(tmp_path / "initrd.img"), "gzip")
    assert stats["file_bytes"] < stats["cpio_bytes"]
    out.mkdir()
    data = gzip.decompress((tmp_path / "initrd.img").read_bytes())
    assert data.startswith(b"070701") and len(data) == stats["cpio_bytes"]
    subprocess.run(tool, input=data, cwd=out, check=True, timeout=60)
    assert (out / "etc/hostname").read_text() == "guest\n"
    assert (out / "usr/bin/tool").read_bytes() == (tree / "usr/bin/tool").read_bytes()
    assert (out / "usr/bin/tool-link").read_bytes() == (tree / "usr/bin/tool").read_bytes()
    assert stat.S_IMODE((out / "usr/bin/tool").stat().st_mode) == 0o755
    assert os.readlink(out / "init") == "/usr/bin/tool"
    assert (out / "empty").is_dir()
    assert stat.S_ISFIFO((out / "fifo").lstat().st_mode)
    if os.geteuid() == 0:  # creating device nodes needs root
        console = (out / "dev/console").lstat()
        assert (
            stat.S_ISCHR(console.st_mode)
            and os.major(console.st_rdev) == 5
            and os.minor(console.st_rdev) == 1
        )


def test_initrd_is_reproducible(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tree = tmp_path / "tree"
    _sample_tree(tree)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    mkinitrd.pack(str(tree), str(tmp_path / "a.img"), "gzip")
    time.sleep(1.1)
    os.utime(tree / "etc/hostname")  # a newer mtime is clamped to the epoch
    mkinitrd.pack(str(tree), str(tmp_path / "b.img"), "gzip")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()


def test_launcher_init_links_and_units(tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent_root, systemd_root = tmp_path / "a", tmp_path / "s"
    build.install_launcher(build.Runner(False), agent_root, "agent")
    build.install_launcher(build.Runner(False), systemd_root, "systemd")
    launcher = agent_root / "usr/bin/kata-agent"
    assert launcher.read_text().startswith("#!/usr/bin/python3 -S\n")
    assert os.access(launcher, os.X_OK)
    assert os.readlink(agent_root / "init") == os.readlink(agent_root / "sbin/init") == "/usr/bin/kata-agent"
    assert os.readlink(systemd_root / "etc/systemd/system/default.target").endswith("/kata-containers.target")
    assert not (systemd_root / "sbin/init").exists()
    service = (systemd_root / "usr/lib/systemd/system/kata-agent.service").read_text()
    assert "ExecStart=/usr/bin/kata-agent\n" in service and "FailureAction=poweroff" in service
    target = (systemd_root / "usr/lib/systemd/system/kata-containers.target").read_text()
    assert "Requires=basic.target kata-agent.service" in target


def test_launcher_starts_the_agent_from_its_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The launcher's only job: put AGENT_LIB first on the path and call agent.cli.main."""
    script = build.LAUNCHER.replace(build.AGENT_LIB, str(REPO)).split("\n", 1)[1]
    path = tmp_path / "kata-agent"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, "-S", str(path), "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kata-agent ")


def test_disk_image_has_one_ext4_partition_at_1mib(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not (shutil.which("mkfs.ext4") and shutil.which("debugfs")):
        pytest.skip("needs e2fsprogs")
    tree = tmp_path / "tree"
    _sample_tree(tree)
    image = tmp_path / "disk.img"
    build.make_image(build.Runner(False), tree, image)
    raw = image.read_bytes()[:512]
    assert raw[510:] == b"\x55\xaa"
    ptype, start, count = struct.unpack_from("<4xB3xII", raw, 446)
    assert (ptype, start, start + count) == (0x83, 2048, image.stat().st_size // 512)
    cat = subprocess.run(
        ["debugfs", "-R", "cat /etc/hostname", f"{image}?offset=1048576"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cat.stdout == "guest\n", cat.stderr


@pytest.mark.skipif(not os.environ.get("KATA_GUEST_INITRD"), reason="set KATA_GUEST_INITRD to a built initrd")
def test_built_initrd_boots_as_pid1(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Opt-in: unpack a built initrd and run its /init as PID 1 of fresh namespaces (chroot)."""
    from tests.agent.harness import wait_ready

    tool = _independent_cpio()
    assert tool is not None
    root = tmp_path / "root"
    root.mkdir()
    data = gzip.decompress(Path(os.environ["KATA_GUEST_INITRD"]).read_bytes())
    subprocess.run(tool, input=data, cwd=root, check=True, timeout=300)
    argv = ["unshare", "--kill-child=SIGKILL", "--pid", "--mount", "--net", "--uts", "--ipc", "--cgroup"]
    env = {"KATA_AGENT_SERVER_ADDR": "unix:///tmp/agent.sock", "PATH": "/usr/sbin:/usr/bin"}
    proc = subprocess.Popen([*argv, "chroot", str(root), "/init"], env=env, stderr=subprocess.PIPE)
    try:
        wait_ready(f"unix://{root}/tmp/agent.sock", proc, timeout=60)
    finally:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for kid in kids:
            os.kill(int(kid), 15)
        proc.wait(30)
