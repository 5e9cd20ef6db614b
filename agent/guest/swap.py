"""AddSwap / AddSwapPath: enable swap on a hot-plugged disk or on a file.

No mkswap needed: ``write_swap_header`` lays down the version-1 swap header
(``SWAPSPACE2`` at the end of the first page) when the area has none, and
``swapon`` is the raw syscall through libc.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import uuid

from agent.devices.block import watch_virtio_blk_pci
from agent.devices.pci import PciPath
from agent.devices.watcher import DeviceWatcher
from agent.errors import (
    AlreadyExists,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

MAGIC = b"SWAPSPACE2"
MIN_PAGES = 10
_libc = ctypes.CDLL(None, use_errno=True)


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _area_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    raise InvalidArgument("a swap area must be a regular file or a block device")


def has_swap_signature(path: str) -> bool:
    page = page_size()
    with open(path, "rb") as f:
        f.seek(page - len(MAGIC))
        return f.read(len(MAGIC)) in (MAGIC, b"SWAP-SPACE")


def write_swap_header(path: str) -> int:
    """Format ``path`` as a swap area (like ``mkswap``); returns its usable pages."""
    page = page_size()
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        pages = _area_size(fd) // page
        if pages < MIN_PAGES:
            raise InvalidArgument(f"{path}: a swap area needs at least {MIN_PAGES} pages of {page} bytes")
        header = bytearray(page)
        # union swap_header.info: bootbits[1024], version, last_page, nr_badpages, uuid[16], volume[16]
        struct.pack_into("=III", header, 1024, 1, pages - 1, 0)
        header[1036:1052] = uuid.uuid4().bytes
        header[page - len(MAGIC) :] = MAGIC
        os.pwrite(fd, bytes(header), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return pages - 1


def swapon(path: str, flags: int = 0) -> None:
    if _libc.swapon(os.fsencode(path), ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        msg = f"swapon {path}: {os.strerror(err)}"
        if err in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(msg)
        if err == errno.EBUSY:
            raise AlreadyExists(msg)
        if err == errno.ENOENT:
            raise NotFound(msg)
        if err == errno.EINVAL:
            raise InvalidArgument(
                msg + " (no valid swap header, holes in the file, or an unsupported filesystem)"
            )
        raise Internal(msg)


def swapoff(path: str) -> None:
    if _libc.swapoff(os.fsencode(path)) != 0:
        err = ctypes.get_errno()
        raise Internal(f"swapoff {path}: {os.strerror(err)}")


def add_swap_path(path: str) -> None:
    """AddSwapPath: swap on a file (given a header first if it lacks one)."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"swap path {path!r} must be absolute")
    if ".." in path.split("/"):
        raise InvalidArgument(f"swap path {path!r} must not contain '..'")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise NotFound(f"swap file {path} does not exist") from None
    if stat.S_ISDIR(mode):
        raise InvalidArgument(f"swap path {path}: Is a directory")
    if not stat.S_ISREG(mode):
        # A header would be written onto whatever the path names: in a guest a block
        # device here could be the root disk.  Only the runtime's swap files qualify.
        raise PermissionDenied(f"swap path {path} is not a regular file (devices and links are refused)")
    if not has_swap_signature(path):
        os.chmod(path, 0o600)
        write_swap_header(path)
    swapon(path)


def add_swap(
    watcher: DeviceWatcher,
    pci_slots: list[int],
    *,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    timeout: float | None = None,
) -> str:
    """AddSwap: wait for the virtio-blk disk at the PCI path, then swap on it.

    Blocks until the device appears (run it in the thread pool); returns the node.
    """
    if not pci_slots:
        raise InvalidArgument("AddSwap needs a PCI path")
    handle = watch_virtio_blk_pci(
        watcher, PciPath.from_slots(pci_slots), sysfs_root=sysfs_root, dev_root=dev_root, timeout=timeout
    )
    node = handle.wait()
    swapon(node)
    return node


def active_swaps(proc_root: str = "/proc") -> list[str]:
    with open(os.path.join(proc_root, "swaps")) as f:
        return [line.split()[0].replace("\\040", " ") for line in f.readlines()[1:] if line.strip()]
