"""Build a minimal Kata guest: a Debian root filesystem with python3, crun and kata-agent,
an initrd whose /init is the agent, and optionally a bootable disk image.

Steps (each printed; ``--dry-run`` prints and does nothing):

1. ``debootstrap --variant=minbase --include=python3,crun[,systemd,...]`` into
   OUT/rootfs (or reuse a tree with ``--from-rootfs``);
2. this package and its dependencies with pip ``--target`` into
   /usr/lib/kata-agent, as binary wheels for the *guest's* Python, then
   byte-compiled by that Python (in a chroot) so the first start reads .pyc;
3. ``/usr/bin/kata-agent``: ``#!/usr/bin/python3 -S`` (no site hooks, a fixed
   import path: what benchmarks/startup.py measures), ``/init`` and
   ``/sbin/init`` pointing at it (agent-as-init), or the systemd units with
   ``kata-containers.target`` as the default target (``--init systemd``);
4. trimming: docs, man pages, locales, apt's caches and lists;
5. OUT/kata-agent-initrd.img (newc cpio, gzip by default; guest/mkinitrd.py)
   and, with ``--image``, OUT/kata-agent-rootfs.img (one ext4 partition at
   1 MiB, made with ``mkfs.ext4 -d``: no loop device, no mount);
6. the sizes.

Needs root (debootstrap, chroot), debootstrap, pip (network to PyPI and the
Debian mirror) and, for --image, mkfs.ext4. See guest/README.md for Kata's
configuration.toml.

Usage: sudo python3 guest/build.py [--out DIR] [--suite bookworm] [--init agent|systemd]
                                   [--image] [--from-rootfs DIR] [--with-tracing] [--with-debug] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from guest import mkinitrd
except ImportError:  # run as a script: guest/ itself is on sys.path
    import mkinitrd  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AGENT_LIB = "/usr/lib/kata-agent"
BASE_PACKAGES = ["python3", "crun"]
SYSTEMD_PACKAGES = ["systemd", "systemd-sysv", "udev"]
UNITS = ("kata-agent.service", "kata-containers.target")
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)
LAUNCHER = f'''#!/usr/bin/python3 -S
"""kata-agent, the Kata Containers guest agent (python3 -S: no site hooks, a fixed import path)."""
import sys

sys.path[:0] = ["{AGENT_LIB}"]
from agent.cli import main

sys.exit(main())
'''
_WHEEL_PLATFORMS = {
    "x86_64": ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"],
    "aarch64": ["manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"],
}
SECTOR = 512
PART_START = 2048  # sectors: the first partition at 1 MiB, as partitioning tools align it


class Runner:
    """Runs (or, dry, only prints) each step's commands."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry

    def say(self, text: str) -> None:
        print(f"== {text}", flush=True)

    def run(self, argv: list[str], **kw: object) -> None:
        print("$ " + shlex.join(argv), flush=True)
        if not self.dry:
            subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def guest_python(rootfs: Path) -> str:
    """The guest's Python version ("3.11"), from its /usr/bin/python3 link."""
    target = os.readlink(rootfs / "usr/bin/python3")
    return target.removeprefix("python")


def debootstrap(r: Runner, rootfs: Path, suite: str, mirror: str, init: str) -> None:
    packages = BASE_PACKAGES + (SYSTEMD_PACKAGES if init == "systemd" else [])
    r.say(f"debootstrap {suite} (minbase + {', '.join(packages)})")
    r.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror])


def install_agent(r: Runner, rootfs: Path, extras: list[str], python: str | None) -> None:
    """The agent and its dependencies as the guest's Python needs them, byte-compiled in the guest."""
    r.say(f"kata-agent into {AGENT_LIB}")
    target = rootfs / AGENT_LIB.lstrip("/")
    with tempfile.TemporaryDirectory(prefix="kata-wheel-") as wheels:
        r.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, str(REPO)])
        built = [str(p) for p in Path(wheels).glob("*.whl")] or [f"{wheels}/kata_agent_py-*.whl"]
        version = python or (guest_python(rootfs) if not r.dry else "3.11")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--target", str(target)]
        cmd += ["--only-binary=:all:", "--implementation", "cp", "--python-version", version]
        for plat in _WHEEL_PLATFORMS.get(platform.machine(), []):
            cmd += ["--platform", plat]
        r.run(cmd + built + extras)
    # pip --target leaves console scripts meant for the build host's Python: not wanted.
    if not r.dry:
        shutil.rmtree(target / "bin", ignore_errors=True)
    r.run(["chroot", str(rootfs), "python3", "-m", "compileall", "-q", "-j", "0", AGENT_LIB])


def install_launcher(r: Runner, rootfs: Path, init: str) -> None:
    r.say(f"/usr/bin/kata-agent and the {init} init")
    if r.dry:
        return
    launcher = rootfs / "usr/bin/kata-agent"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    units = rootfs / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in UNITS:
        shutil.copyfile(HERE / unit, units / unit)
    _symlink("/usr/bin/kata-agent", rootfs / "init")  # an initrd's /init
    if init == "agent":
        _symlink("/usr/bin/kata-agent", rootfs / "sbin/init")  # a disk image booted without init=
    else:
        wants = rootfs / "etc/systemd/system"
        wants.mkdir(parents=True, exist_ok=True)
        _symlink("/usr/lib/systemd/system/kata-containers.target", wants / "default.target")


def _symlink(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def trim(r: Runner, rootfs: Path) -> None:
    r.say("trimming docs, man pages, locales, apt caches")
    if r.dry:
        return
    for rel in TRIM:
        path = rootfs / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def tree_size(root: Path) -> int:
    """Bytes of the files below ``root`` (what an initramfs holds in RAM), links once."""
    total, seen = 0, set()
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def mbr(total_sectors: int) -> bytes:
    """A DOS partition table with one Linux partition from 1 MiB to the end."""
    entry = struct.pack(
        "<B3sB3sII", 0, b"\xff\xff\xfe", 0x83, b"\xff\xff\xfe", PART_START, total_sectors - PART_START
    )
    signature = struct.pack("<I", 0x4154414B)  # "KATA": a fixed disk id keeps the image reproducible
    return bytes(440) + signature + bytes(2) + entry + bytes(48) + b"\x55\xaa"


def make_image(r: Runner, rootfs: Path, image: Path) -> None:
    """ext4 of the tree at 1 MiB into the file, and the partition table in front of it."""
    r.say(f"disk image {image.name} (root=/dev/vda1)")
    size = PART_START * SECTOR + (tree_size(rootfs) * 13 // 10 if not r.dry else 0) + (64 << 20)
    size -= size % (1 << 20)
    if not r.dry:
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(size)
    fs_bytes = size - PART_START * SECTOR
    r.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "kata-rootfs",
            "-d",
            str(rootfs),
            "-E",
            f"offset={PART_START * SECTOR}",
        ]
        + [str(image), f"{fs_bytes // 1024}k"]
    )
    if not r.dry:
        with open(image, "r+b") as f:
            f.write(mbr(size // SECTOR))


def human(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="guest-build", help="output directory (default: ./guest-build)")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument(
        "--init", choices=("agent", "systemd"), default="agent", help="what runs as PID 1 of a disk image"
    )
    ap.add_argument("--from-rootfs", metavar="DIR", help="use (and modify) this tree instead of debootstrap")
    ap.add_argument(
        "--python", metavar="X.Y", help="the guest's Python version (default: read from the tree)"
    )
    ap.add_argument("--with-tracing", action="store_true", help="add opentelemetry-sdk (agent.trace)")
    ap.add_argument("--with-debug", action="store_true", help="add python-ptrace (kata-agent trace PID)")
    ap.add_argument("--compress", choices=("gzip", "zstd", "none"), default="gzip", help="initrd compression")
    ap.add_argument("--image", action="store_true", help="also make a partitioned ext4 disk image")
    ap.add_argument("--no-initrd", action="store_true", help="skip the initrd")
    ap.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    args = ap.parse_args(argv)

    r = Runner(args.dry_run)
    out = Path(args.out).resolve()
    if not args.dry_run:
        if os.geteuid() != 0:
            print("build.py: needs root (debootstrap, chroot)", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
    rootfs = Path(args.from_rootfs).resolve() if args.from_rootfs else out / "rootfs"
    if not args.from_rootfs:
        debootstrap(r, rootfs, args.suite, args.mirror, args.init)
    extras = (["opentelemetry-sdk"] if args.with_tracing else []) + (
        ["python-ptrace"] if args.with_debug else []
    )
    install_agent(r, rootfs, extras, args.python)
    install_launcher(r, rootfs, args.init)
    trim(r, rootfs)
    sizes: list[tuple[str, str]] = []
    if not args.dry_run:
        sizes.append((f"root filesystem {rootfs}", human(tree_size(rootfs))))
        sizes.append(
            (
                "  of which kata-agent and its Python packages",
                human(tree_size(rootfs / AGENT_LIB.lstrip("/"))),
            )
        )
    if not args.no_initrd:
        initrd = out / "kata-agent-initrd.img"
        r.say(f"initrd {initrd.name} ({args.compress})")
        if not args.dry_run:
            stats = mkinitrd.pack(str(rootfs), str(initrd), args.compress)
            sizes.append(
                (f"initrd {initrd}", f"{human(stats['file_bytes'])} ({human(stats['cpio_bytes'])} unpacked)")
            )
    if args.image:
        image = out / "kata-agent-rootfs.img"
        make_image(r, rootfs, image)
        if not args.dry_run:
            sizes.append((f"disk image {image}", human(image.stat().st_size)))
    if sizes:
        r.say("sizes")
        width = max(len(k) for k, _ in sizes)
        for key, value in sizes:
            print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
