"""Pack a directory tree into an initramfs: a "newc" cpio archive, gzip- or zstd-compressed.

Written here rather than calling cpio(1) so the guest build needs no extra
tool and the archive is reproducible: names sorted, inode numbers assigned in
order, mtimes clamped to SOURCE_DATE_EPOCH when it is set, the gzip header
without a timestamp or file name. Hard links are stored as separate files (the kernel's
unpacker accepts both; the few in a Debian root cost a few kB). A tree
without them still gets ``dev/console`` (and ``dev/null``): the kernel opens
the console for /init's stdio before anything is mounted.

Usage: python3 guest/mkinitrd.py ROOT OUT [--compress gzip|zstd|none]
"""

from __future__ import annotations

import argparse
import gzip
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
CHUNK = 1 << 20
#: Device nodes the kernel needs before devtmpfs is mounted: (name, mode, major, minor).
REQUIRED_NODES = (("dev/console", stat.S_IFCHR | 0o600, 5, 1), ("dev/null", stat.S_IFCHR | 0o666, 1, 3))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class _Writer:
    """Streams cpio entries to ``out``, counting the bytes written."""

    def __init__(self, out: BinaryIO, epoch: int | None) -> None:
        self.out = out
        self.epoch = epoch
        self.ino = 0
        self.size = 0
        self.entries = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.size += len(data)

    def entry(
        self,
        name: str,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        size: int = 0,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        self.ino += 1
        if self.epoch is not None:
            mtime = min(mtime, self.epoch)
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (
            self.ino,
            mode,
            uid,
            gid,
            nlink,
            max(mtime, 0),
            size,
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._write(header + encoded + _pad(len(header) + len(encoded)))
        if name != TRAILER:
            self.entries += 1

    def data(self, chunks: Iterator[bytes], size: int) -> None:
        written = 0
        for chunk in chunks:
            self._write(chunk)
            written += len(chunk)
        if written != size:
            raise OSError(f"file changed while packing ({written} bytes, expected {size})")
        self._write(_pad(size))


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """(archive name, path) of everything below ``root``, parents first, names sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield (name if rel == "." else f"{rel}/{name}"), path


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def write_cpio(root: str, out: BinaryIO, epoch: int | None = None) -> tuple[int, int]:
    """Write the archive of ``root`` to ``out``; returns (entries, bytes)."""
    w = _Writer(out, epoch)
    seen: set[str] = set()
    for name, path in _walk(root):
        st = os.lstat(path)
        mode, common = st.st_mode, {"uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
        seen.add(name)
        if stat.S_ISDIR(mode):
            w.entry(name, mode, nlink=2, **common)
        elif stat.S_ISREG(mode):
            w.entry(name, mode, size=st.st_size, **common)
            w.data(_file_chunks(path), st.st_size)
        elif stat.S_ISLNK(mode):
            target = os.fsencode(os.readlink(path))
            w.entry(name, mode, size=len(target), **common)
            w.data(iter([target]), len(target))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            w.entry(name, mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)), **common)
        elif stat.S_ISFIFO(mode):
            w.entry(name, mode, **common)
        # sockets are left out: they mean nothing in a fresh boot
    if "dev" not in seen:
        w.entry("dev", stat.S_IFDIR | 0o755, nlink=2)
    for name, mode, major, minor in REQUIRED_NODES:
        if name not in seen:
            w.entry(name, mode, rdev=(major, minor))
    w.entry(TRAILER, 0)
    w._write(_pad(w.size))
    return w.entries, w.size


def pack(root: str, out_path: str, compress: str = "gzip") -> dict[str, int]:
    """Write ``out_path`` (compressed as asked); returns entry count and sizes in bytes."""
    epoch = int(os.environ["SOURCE_DATE_EPOCH"]) if os.environ.get("SOURCE_DATE_EPOCH") else None
    if compress == "gzip":
        with (
            open(out_path, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz,
        ):
            entries, size = write_cpio(root, gz, epoch)  # type: ignore[arg-type]
    elif compress == "zstd":
        with open(out_path, "wb") as raw:
            proc = subprocess.Popen(["zstd", "-q", "-19", "-T0", "-c"], stdin=subprocess.PIPE, stdout=raw)
            assert proc.stdin is not None
            entries, size = write_cpio(root, proc.stdin, epoch)  # type: ignore[arg-type]
            proc.stdin.close()
            if proc.wait() != 0:
                raise OSError(f"zstd failed with {proc.returncode}")
    elif compress == "none":
        with open(out_path, "wb") as raw:
            entries, size = write_cpio(root, raw, epoch)
    else:
        raise ValueError(f"unknown compression {compress!r}")
    return {"entries": entries, "cpio_bytes": size, "file_bytes": os.path.getsize(out_path)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pack a directory into a newc cpio initramfs.")
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--compress", choices=("gzip", "zstd", "none"), default="gzip")
    args = ap.parse_args(argv)
    stats = pack(args.root, args.out, args.compress)
    print(
        f"{args.out}: {stats['entries']} entries, {stats['cpio_bytes']} bytes of cpio, {stats['file_bytes']} on disk"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
