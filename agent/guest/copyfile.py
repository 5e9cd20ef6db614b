"""CopyFile: the host pushes files, directories and symlinks into the shared
containers directory (when there is no shared filesystem), chunk by chunk.

Everything is confined beneath the shared directory: the request path must
name something strictly inside it, ``..`` is refused, and every lookup goes
through a directory fd with ``RESOLVE_BENEATH`` (see ``safepath``), so a
symlink placed by the host cannot redirect a write outside. Leaves are never
followed: an existing symlink at the target or at its temporary name is
replaced, not written through. A regular file is written to ``<name>.tmp``
and renamed over ``<name>`` when its size reaches ``file_size``, so readers
never see half a file. Symlinks created on request may point anywhere; that
is the host's business, and later CopyFile writes never follow them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import NamedTuple

from agent.errors import (
    AgentError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from agent.guest.safepath import Beneath, split_relative

DEFAULT_SHARED_DIR = "/run/kata-containers/shared/containers"
PERMISSION_MASK = 0o7777
DEFAULT_DIR_MODE = 0o755
TMP_SUFFIX = ".tmp"


class CopyFileRequest(NamedTuple):
    """The fields of ``grpc.CopyFileRequest``, as plain values."""

    path: str
    data: bytes = b""
    offset: int = 0
    file_size: int = 0
    file_mode: int = 0
    dir_mode: int = 0
    uid: int = 0
    gid: int = 0


def copy_file(
    req: CopyFileRequest, shared_dir: str = DEFAULT_SHARED_DIR, *, use_openat2: bool | None = None
) -> None:
    """Apply one CopyFile request (one chunk for regular files)."""
    if req.offset < 0:
        raise InvalidArgument(f"CopyFile: negative offset {req.offset}")
    if req.file_size < 0:
        raise InvalidArgument(f"CopyFile: negative file_size {req.file_size}")
    parts = split_relative(req.path, shared_dir)
    name = parts[-1]
    kind = stat.S_IFMT(req.file_mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        raise InvalidArgument(f"CopyFile: unsupported file type {kind:#o} for {req.path}")
    if kind in (0, stat.S_IFREG) and req.offset + len(req.data) > req.file_size:
        raise InvalidArgument(
            f"CopyFile: chunk [{req.offset}, {req.offset + len(req.data)}) exceeds file_size {req.file_size}"
        )

    try:
        root_fd = os.open(shared_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise FailedPrecondition(f"CopyFile: shared directory {shared_dir}: {exc.strerror}") from None
    try:
        beneath = Beneath(root_fd, use_openat2=use_openat2, label=shared_dir)
        parent_fd = _make_parents(beneath, parts[:-1], req.dir_mode & PERMISSION_MASK or DEFAULT_DIR_MODE)
        try:
            if kind == stat.S_IFDIR:
                _make_dir(parent_fd, name, req)
            elif kind == stat.S_IFLNK:
                _make_symlink(parent_fd, name, req)
            else:
                _write_chunk(parent_fd, name, req)
        finally:
            os.close(parent_fd)
    except AgentError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"CopyFile {req.path}: {exc.strerror}{where}") from None
        raise Internal(f"CopyFile {req.path}: {exc.strerror or exc}{where}") from None
    finally:
        os.close(root_fd)


def _make_parents(beneath: Beneath, dirs: list[str], mode: int) -> int:
    """An O_PATH fd of the parent directory, creating missing components."""
    flags = os.O_PATH | os.O_DIRECTORY
    fd = beneath.open("", flags)
    for i, part in enumerate(dirs):
        prefix = "/".join(dirs[: i + 1])
        try:
            nxt = beneath.open(prefix, flags)
        except FileNotFoundError:
            try:
                os.mkdir(part, mode, dir_fd=fd)  # mkdirat never follows a symlink at `part`
            except FileExistsError:
                pass
            nxt = beneath.open(prefix, flags)
        except NotADirectoryError:
            os.close(fd)
            raise PermissionDenied(f"CopyFile: {prefix!r} exists and is not a directory") from None
        os.close(fd)
        fd = nxt
    return fd


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int) -> None:
    """Remove whatever is at ``name`` (a directory tree too) without following links."""
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _open_leaf(parent_fd: int, name: str, flags: int, mode: int = 0) -> int:
    """Open a leaf in the parent, refusing symlinks and never blocking on FIFOs."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionDenied(f"CopyFile: {name!r} is a symlink, refusing to follow it") from None
        if exc.errno == errno.ENXIO:
            raise PermissionDenied(f"CopyFile: {name!r} is not a regular file") from None
        raise


def _apply_owner_mode(fd: int, req: CopyFileRequest) -> None:
    os.fchown(fd, req.uid, req.gid)
    os.fchmod(fd, req.file_mode & PERMISSION_MASK)  # after chown, which clears setuid bits


def _make_dir(parent_fd: int, name: str, req: CopyFileRequest) -> None:
    st = _lstat(name, parent_fd)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)  # a file or symlink squatting on the name
    try:
        os.mkdir(name, req.file_mode & PERMISSION_MASK, dir_fd=parent_fd)
    except FileExistsError:
        pass  # an existing directory keeps its contents
    fd = _open_leaf(parent_fd, name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _apply_owner_mode(fd, req)
    finally:
        os.close(fd)


def _make_symlink(parent_fd: int, name: str, req: CopyFileRequest) -> None:
    if not req.data or b"\0" in req.data:
        raise InvalidArgument(f"CopyFile: invalid symlink target for {req.path}")
    _remove(name, parent_fd)
    os.symlink(os.fsdecode(req.data), name, dir_fd=parent_fd)
    os.chown(name, req.uid, req.gid, dir_fd=parent_fd, follow_symlinks=False)


def _write_chunk(parent_fd: int, name: str, req: CopyFileRequest) -> None:
    tmp = name + TMP_SUFFIX
    if req.offset == 0:
        _remove(tmp, parent_fd)
        fd = _open_leaf(parent_fd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        existing = _lstat(tmp, parent_fd)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise PermissionDenied(f"CopyFile: {tmp!r} is not a regular file")
        fd = _open_leaf(parent_fd, tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionDenied(f"CopyFile: {tmp!r} is not a regular file")
        if st.st_nlink > 1:
            raise PermissionDenied(f"CopyFile: {tmp!r} has other hard links, refusing to write")
        view = memoryview(req.data)
        pos = req.offset
        try:
            while view:
                written = os.pwrite(fd, view, pos)
                view, pos = view[written:], pos + written
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # A lost chunk makes the file useless: free the disk instead of pinning it.
                _remove(tmp, parent_fd)
            raise
        if os.fstat(fd).st_size != req.file_size:
            return  # more chunks to come
        _apply_owner_mode(fd, req)
        os.fsync(fd)
    finally:
        os.close(fd)
    target = _lstat(name, parent_fd)
    if target is not None and stat.S_ISDIR(target.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd)
    os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
