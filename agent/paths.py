"""Resolve and open paths confined to a directory tree (a rootfs, the shared directory).

Why: paths we get from the runtime (mount destinations, CopyFile targets, storage mount
points) are joined with a root we trust, but the tree below that root is controlled by
the container image or the host. A symlink ``etc -> /`` or ``x -> ../../..`` must not
let a write land outside the root.

How: ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (or ``RESOLVE_IN_ROOT``)
makes the kernel enforce the confinement during the lookup itself, so there is no window
between checking and using. Where ``openat2`` is unavailable (kernel < 5.6, or a seccomp
filter answering ENOSYS) we walk one component at a time with ``O_PATH | O_NOFOLLOW``
from directory fds we hold, reading each symlink's text ourselves, so the kernel never
follows a link for us.

Two confinement modes, chosen by the caller:

* ``in_root=False`` (the default, "beneath"): any absolute symlink is refused, and so is
  any ``..`` (from a symlink target) that would climb above the root. Use it for trees
  written by a less trusted party where an absolute link is a sign of trouble (CopyFile's
  shared directory, sandbox storage directories).
* ``in_root=True`` ("in root"): the root behaves like ``/`` in a chroot: absolute symlinks
  are resolved from the root and ``..`` at the root stays at the root. This is how the OCI
  runtime will interpret a container image (``/etc/resolv.conf -> /run/...`` is common),
  so it is the right mode to check mount destinations. Escape is impossible by
  construction.

In both modes:

* the caller's own path is taken relative to the root (a leading ``/`` is ignored) and must
  not contain a ``..`` component: there is no legitimate reason for one, and refusing it
  lexically keeps error messages about the caller's input rather than the tree;
* magic links (``/proc/self/root``...) are never followed: the kernel refuses them with
  ``RESOLVE_NO_MAGICLINKS``, and the fallback walk only ever follows link *text*;
* at most 40 symlinks are followed per lookup, like the kernel's own limit.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path

from agent.errors import InvalidArgument, NotFound, PermissionDenied

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

MAX_SYMLINKS = 40
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}

_openat2_usable: bool | None = None  # None: not tried yet
_syscall = None
_open_how = None


class _Missing(Exception):
    """A component does not exist (internal: lets callers decide what missing means)."""

    def __init__(self, names: list[str], rest: list[str]) -> None:
        super().__init__(rest[0] if rest else "")
        self.names, self.rest = names, rest


def split_relative(relative: str | os.PathLike[str], *, what: str = "path") -> list[str]:
    """The components of a path taken relative to a root; refuses ``..`` and NUL bytes."""
    text = os.fspath(relative)
    if "\0" in text:
        raise InvalidArgument(f"{what} {text!r} contains a NUL byte")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"{what} {text!r} must not contain '..'")
    return parts


def openat2_available() -> bool:
    """Whether the running kernel (and any seccomp filter) lets us use openat2."""
    global _openat2_usable
    if _openat2_usable is None:
        fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            os.close(_openat2(fd, ".", os.O_PATH, 0, RESOLVE_BENEATH))
            _openat2_usable = True
        except OSError:
            _openat2_usable = False
        finally:
            os.close(fd)
    return _openat2_usable


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """Raw openat2(2) through libc's syscall(); raises OSError like os.open."""
    global _syscall, _open_how
    import ctypes  # lazily: ctypes is not otherwise resident

    nr = _SYS_OPENAT2.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, "openat2 syscall number unknown for this architecture")
    if _syscall is None:

        class OpenHow(ctypes.Structure):  # struct open_how
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        libc = ctypes.CDLL(None, use_errno=True)
        _open_how = OpenHow
        _syscall = libc.syscall
        _syscall.restype = ctypes.c_long
    if not flags & (os.O_CREAT | os.O_TMPFILE):
        mode = 0  # openat2 refuses a mode it would not use
    how = _open_how(flags | os.O_CLOEXEC, mode, resolve)
    fd = _syscall(
        ctypes.c_long(nr),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


#: The raw syscall, for modules that manage their own directory fds (CopyFile).
openat2 = _openat2


def _open_root(root: str | os.PathLike[str] | int) -> int:
    if isinstance(root, int):
        return os.dup(root)
    try:
        return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"root directory {os.fspath(root)!r} not found") from None
    except NotADirectoryError:
        raise InvalidArgument(f"root {os.fspath(root)!r} is not a directory") from None


def open_beneath(
    root: str | os.PathLike[str] | int,
    relative: str | os.PathLike[str],
    flags: int = os.O_PATH,
    mode: int = 0o644,
    *,
    in_root: bool = False,
    what: str = "path",
    use_openat2: bool | None = None,
) -> int:
    """Open ``relative`` below ``root`` with ``flags``; returns a new fd (close it).

    ``root`` is a path or an fd we trust. ``use_openat2=False`` forces the fallback walk
    (tests use it; None means "if the kernel has it").
    """
    parts = split_relative(relative, what=what)
    rootfd = _open_root(root)
    try:
        if use_openat2 is None:
            use_openat2 = openat2_available()
        if use_openat2:
            return _open_kernel(rootfd, parts, flags, mode, in_root, what, relative)
        try:
            fd, _names = _walk(rootfd, parts, flags, mode, in_root, what, relative)
        except _Missing as m:
            raise NotFound(f"{what} {os.fspath(relative)!r}: {m.rest[0]!r} not found") from None
        except OSError as e:
            raise _translate(e, what, relative) from None
        return fd
    finally:
        os.close(rootfd)


def _open_kernel(rootfd: int, parts: list[str], flags: int, mode: int, in_root: bool, what, rel) -> int:
    resolve = RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if in_root else RESOLVE_BENEATH)
    for _attempt in range(8):
        try:
            return _openat2(rootfd, "/".join(parts) or ".", flags, mode, resolve)
        except OSError as e:
            if e.errno == errno.EAGAIN:  # a concurrent rename raced the lookup of '..'
                continue
            raise _translate(e, what, rel) from None
    raise PermissionDenied(f"{what} {os.fspath(rel)!r}: lookup kept racing with renames")


def _translate(e: OSError, what: str, rel) -> Exception:
    text = os.fspath(rel)
    if e.errno == errno.EXDEV:
        return PermissionDenied(f"{what} {text!r} escapes its root")
    if e.errno == errno.ENOENT:
        return NotFound(f"{what} {text!r} not found")
    if e.errno == errno.ELOOP:
        return InvalidArgument(f"{what} {text!r}: too many symbolic links, or a magic link")
    if e.errno == errno.ENOTDIR:
        return InvalidArgument(f"{what} {text!r}: a path component is not a directory")
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{what} {text!r}: {e.strerror}")
    return InvalidArgument(f"{what} {text!r}: {e.strerror}")


def _walk(
    rootfd: int,
    parts: list[str],
    flags: int,
    mode: int,
    in_root: bool,
    what: str,
    rel,
    *,
    make_dirs: int | None = None,
) -> tuple[int, list[str]]:
    """Component-by-component lookup; returns (fd, resolved names below the root).

    ``make_dirs`` (a mode) creates missing components as directories. Raises ``_Missing``
    when a component is absent and ``make_dirs`` is None and ``O_CREAT`` is not asked for it.
    """
    text = os.fspath(rel)
    stack: list[int] = [os.dup(rootfd)]
    names: list[str] = []
    todo: deque[str] = deque(parts)
    links = 0
    try:
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    if in_root:
                        continue
                    raise PermissionDenied(f"{what} {text!r} escapes its root through '..'")
                os.close(stack.pop())
                names.pop()
                continue
            last = not todo
            parent = stack[-1]
            if last and flags != os.O_PATH:
                fd = _open_last(parent, name, flags, mode)
            else:
                fd = _open_component(parent, name)
            if fd is None and make_dirs is not None:
                try:
                    os.mkdir(name, make_dirs, dir_fd=parent)
                except FileExistsError:
                    pass  # raced with another creator: open what is there now
                fd = _open_component(parent, name)
            if fd is None:
                raise _Missing(list(names), [name, *todo])
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink("", dir_fd=fd)
                os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise InvalidArgument(f"{what} {text!r}: too many symbolic links")
                if target.startswith("/"):
                    if not in_root:
                        raise PermissionDenied(f"{what} {text!r} escapes its root (absolute symlink)")
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                todo.extendleft(reversed(target.split("/")))
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise InvalidArgument(f"{what} {text!r}: {name!r} is not a directory")
            stack.append(fd)
            names.append(name)
        if len(stack) == 1 and flags != os.O_PATH:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[0]), names
        return stack.pop(), names
    finally:
        for fd in stack:
            os.close(fd)


def _open_component(parent: int, name: str) -> int | None:
    try:
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return None


def _open_last(parent: int, name: str, flags: int, mode: int) -> int | None:
    """Open the final component with the caller's flags, never following a symlink."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        # A symlink: hand back an O_PATH fd so the walk reads and follows its text.
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def resolve_beneath(
    root: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    *,
    in_root: bool = False,
    allow_missing: bool = False,
    what: str = "path",
) -> Path:
    """The real path ``relative`` names below ``root``, with every symlink resolved.

    The answer is only advice (the tree may change afterwards): when you act on the path,
    prefer ``open_beneath`` and work with the fd. With ``allow_missing`` a missing tail
    is appended as given (it cannot contain links, since it does not exist).
    """
    parts = split_relative(relative, what=what)
    base = Path(os.path.realpath(root))
    rootfd = _open_root(base)
    try:
        if openat2_available():
            found = _resolve_kernel(rootfd, base, parts, in_root, what, relative)
            if found is not None:
                return found
        try:
            fd, names = _walk(rootfd, parts, os.O_PATH, 0, in_root, what, relative)
        except OSError as e:
            raise _translate(e, what, relative) from None
        except _Missing as m:
            if not allow_missing:
                raise NotFound(f"{what} {os.fspath(relative)!r}: {m.rest[0]!r} not found") from None
            if ".." in m.rest:
                raise NotFound(f"{what} {os.fspath(relative)!r}: '..' below a missing directory") from None
            return base.joinpath(*m.names, *[p for p in m.rest if p not in ("", ".")])
        os.close(fd)
        return base.joinpath(*names)
    finally:
        os.close(rootfd)


def _resolve_kernel(rootfd: int, base: Path, parts: list[str], in_root: bool, what, rel) -> Path | None:
    """openat2 + the fd's /proc link; None when that cannot answer (missing path, no /proc)."""
    try:
        fd = _open_kernel(rootfd, parts, os.O_PATH, 0, in_root, what, rel)
    except NotFound:
        return None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
    finally:
        os.close(fd)
    if real != base and base not in real.parents:
        raise PermissionDenied(f"{what} {os.fspath(rel)!r} resolved outside its root: {real}")
    return real


def makedirs_beneath(
    root: str | os.PathLike[str],
    relative: str | os.PathLike[str],
    mode: int = 0o755,
    *,
    in_root: bool = False,
    what: str = "path",
) -> Path:
    """Create ``relative`` (and missing parents) as directories below ``root``; returns it.

    Existing symlinks on the way are followed under the same confinement rules, and a
    symlink raced into place after ``mkdir`` is caught by ``O_NOFOLLOW``.
    """
    parts = split_relative(relative, what=what)
    base = Path(os.path.realpath(root))
    rootfd = _open_root(base)
    try:
        try:
            fd, names = _walk(rootfd, parts, os.O_PATH, 0, in_root, what, relative, make_dirs=mode)
        except OSError as e:
            raise _translate(e, what, relative) from None
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise InvalidArgument(f"{what} {os.fspath(relative)!r} exists and is not a directory")
        finally:
            os.close(fd)
        return base.joinpath(*names)
    finally:
        os.close(rootfd)
