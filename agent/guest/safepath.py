"""Path resolution confined beneath a directory fd.

``openat2(RESOLVE_BENEATH)`` (Linux >= 5.6, syscall 437 on every arch) makes
the kernel refuse any resolution that leaves the directory: ``..`` above it,
absolute symlinks, symlinks that climb out, magic links. Where it is missing
we walk the path one component at a time with ``O_NOFOLLOW``, refusing every
symlink (stricter, still safe). String prefix checks are never enough: a
symlink planted by the host would defeat them.
"""

from __future__ import annotations

import errno
import os
import stat

from agent import paths
from agent.errors import InvalidArgument, PermissionDenied

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Raw openat2 (shared with agent.paths); raises OSError, ENOSYS where the kernel lacks it."""
    return paths.openat2(dirfd, path, flags, mode, resolve)


def have_openat2() -> bool:
    return paths.openat2_available()


class Beneath:
    """Opens paths relative to a root directory fd, never resolving outside it."""

    def __init__(self, root_fd: int, *, use_openat2: bool | None = None, label: str = "") -> None:
        self.root_fd = root_fd
        self.use_openat2 = have_openat2() if use_openat2 is None else use_openat2
        self.label = label or f"fd {root_fd}"

    def open(self, rel: str, flags: int, mode: int = 0, *, follow_last: bool = True) -> int:
        """Open ``rel`` (relative, no ``..``) beneath the root.

        With ``follow_last=False`` a symlink as the last component is refused
        (``ELOOP``) instead of followed.
        """
        if rel in ("", "."):
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.root_fd)
        if self.use_openat2:
            resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
            if not follow_last:
                flags |= os.O_NOFOLLOW
            try:
                return openat2(self.root_fd, rel, flags, mode, resolve)
            except OSError as exc:
                raise self._translate(exc, rel) from None
        return self._walk(rel, flags, mode)

    def _walk(self, rel: str, flags: int, mode: int) -> int:
        parts = rel.split("/")
        cur = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                except OSError as exc:
                    raise self._translate(exc, rel) from None
                st = os.fstat(nxt)
                if not stat.S_ISDIR(st.st_mode):
                    os.close(nxt)
                    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
                    raise PermissionDenied(f"{self._where(rel)}: {kind} {part!r} in the path is refused")
                os.close(cur)
                cur = nxt
            try:
                fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(parts[-1], cur):
                    raise PermissionDenied(f"{self._where(rel)}: symlink {parts[-1]!r} is refused") from None
                raise self._translate(exc, rel) from None
            if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
                os.close(fd)
                raise PermissionDenied(f"{self._where(rel)}: symlink {parts[-1]!r} is refused")
            return fd
        finally:
            os.close(cur)

    def _where(self, rel: str) -> str:
        return f"{rel!r} beneath {self.label}"

    def _translate(self, exc: OSError, rel: str) -> OSError | PermissionDenied:
        if exc.errno in (errno.EXDEV, errno.ELOOP):
            return PermissionDenied(f"{self._where(rel)}: resolution escapes or uses a refused symlink")
        exc.filename = rel
        return exc


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def split_relative(path: str, root: str) -> list[str]:
    """Components of absolute ``path`` below absolute ``root``; refuses anything else."""
    if "\0" in path:
        raise InvalidArgument("path contains a NUL byte")
    if not path.startswith("/"):
        raise PermissionDenied(f"path {path!r} is not absolute")
    root_parts = [p for p in root.split("/") if p not in ("", ".")]
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PermissionDenied(f"path {path!r} contains '..'")
    if parts[: len(root_parts)] != root_parts or len(parts) <= len(root_parts):
        raise PermissionDenied(f"path {path!r} is not beneath {root}")
    return parts[len(root_parts) :]
