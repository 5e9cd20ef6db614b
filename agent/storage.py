"""Storage drivers by name, with reference-counted mount points.

The runtime describes each volume the guest must provide (``grpc.Storage``): a driver
name, a source, a filesystem type, options and the guest mount point. Several containers
of a pod can name the same mount point (a shared emptyDir, the virtio-fs share), so a
mount point is set up by its first user and torn down when its last user releases it.

Drivers here: ``local`` (a directory with a mode, for sandbox-local emptyDirs),
``ephemeral`` (a tmpfs), ``bind`` and ``virtio-fs`` (a bind mount of ``source``, or for
virtio-fs without ``bind`` a real ``virtiofs`` mount of the tag), ``overlayfs``
(``lowerdir``/``upperdir``/``workdir`` from the options). Block-device drivers (blk,
scsi, nvdimm...) need device discovery first and register themselves with
``register_driver`` from the devices module.

Every mount point must lie beneath the manager's ``mount_root`` (``/run/kata-containers``
in a guest) and is created with ``agent.paths.makedirs_beneath``, so a symlink planted in
a shared directory cannot redirect a mount elsewhere. Input is a plain ``StorageSpec``
(the service layer builds it from the protobuf). ``acquire``/``release`` block in
mount(2)/umount(2); the agent calls them from its worker threads.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from agent.paths import makedirs_beneath, open_beneath, resolve_beneath, split_relative

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 0x2

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "remount": (MS_REMOUNT, 0),
    "mand": (MS_MANDLOCK, 0),
    "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "silent": (MS_SILENT, 0),
    "loud": (0, MS_SILENT),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
    "defaults": (0, 0),
}
_PROPAGATION_OPTIONS = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


@dataclass(frozen=True)
class MountOptions:
    """Mount options split the way mount(2) wants them."""

    flags: int = 0
    propagation: int = 0
    data: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split fstab-style options into flags, propagation flags and the fs data string.

    ``mode=`` and the overlay directories stay in ``data`` (the filesystem wants them);
    ``key=value`` options are also indexed in ``extra``. Kata's own annotations
    (``io.katacontainers.*``) and userspace ``x-*`` options never reach the kernel.
    """
    flags, propagation = 0, 0
    data: list[str] = []
    extra: dict[str, str] = {}
    for opt in options:
        if opt in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[opt]
            flags = (flags | on) & ~off
        elif opt in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[opt]
        elif opt.startswith(("x-", "io.katacontainers.")) or not opt:
            continue
        else:
            data.append(opt)
            key, sep, value = opt.partition("=")
            if sep:
                extra[key] = value
    return MountOptions(flags, propagation, ",".join(data), extra)


_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes  # lazily: only storage and init mount things

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _enc(value: str | os.PathLike[str] | None):
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None, target: str | os.PathLike[str], fstype: str | None, flags: int = 0, data: str = ""
) -> None:
    """mount(2); raises OSError with the errno."""
    import ctypes

    rc = _c().mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data or None))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(target))


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2); raises OSError with the errno."""
    import ctypes

    if _c().umount2(_enc(target), ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(target))


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (exactly) is a mount point in this namespace."""
    return os.path.realpath(path) in mount_points()


# ---------------------------------------------------------------- storage specs


@dataclass(frozen=True)
class StorageSpec:
    """One storage to provide: the fields of ``grpc.Storage`` as plain values."""

    driver: str
    mount_point: str
    source: str = ""
    fstype: str = ""
    options: tuple[str, ...] = ()
    driver_options: tuple[str, ...] = ()
    fs_group: int | None = None
    fs_group_policy: str = "Always"  # or "OnRootMismatch"
    shared: bool = False

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StorageSpec:
        """From a dict shaped like ``grpc.Storage`` (e.g. ``MessageToDict`` output, snake_case)."""
        group = doc.get("fs_group") or {}
        gid = group.get("group_id")
        return cls(
            driver=str(doc.get("driver", "")),
            mount_point=str(doc.get("mount_point", "")),
            source=str(doc.get("source", "")),
            fstype=str(doc.get("fstype", "")),
            options=tuple(doc.get("options", ())),
            driver_options=tuple(doc.get("driver_options", ())),
            fs_group=int(gid) if gid is not None and group else None,
            fs_group_policy=str(group.get("group_change_policy", "Always")) or "Always",
            shared=bool(doc.get("shared", False)),
        )

    def identity(self) -> tuple[str, str, str]:
        return (self.driver, self.source, self.fstype)


# A driver sets the storage up at an existing, confined mount point. It returns True when
# it mounted something (release will unmount) and False for plain directories.
Driver = Callable[[StorageSpec, Path], bool]
DRIVERS: dict[str, Driver] = {}


def register_driver(name: str, driver: Driver) -> None:
    """Make ``driver`` available under ``name`` (other modules add block-device drivers)."""
    DRIVERS[name] = driver


def _mount_checked(
    spec: StorageSpec, source: str, target: Path, fstype: str | None, opts: MountOptions
) -> None:
    try:
        mount(source, target, fstype, opts.flags, opts.data)
        if opts.flags & MS_BIND and opts.flags & MS_RDONLY:
            # A bind mount ignores MS_RDONLY until it is remounted.
            mount(None, target, None, MS_REMOUNT | MS_BIND | (opts.flags & ~MS_REC))
        if opts.propagation:
            mount(None, target, None, opts.propagation)
    except OSError as e:
        if is_mounted(target):
            _quiet_umount(target)
        if e.errno == errno.ENOENT:
            raise NotFound(f"storage.source {source!r} ({spec.driver}): {e.strerror}") from None
        if e.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(f"storage {spec.driver} at {target}: {e.strerror}") from None
        raise FailedPrecondition(
            f"storage {spec.driver}: mounting {source!r} ({fstype or 'bind'}) at {target}: {e.strerror}"
        ) from None


def _local(spec: StorageSpec, target: Path) -> bool:
    mode = parse_mount_options(spec.options).extra.get("mode")
    if mode is not None:
        try:
            os.chmod(target, int(mode, 8) & 0o7777)
        except ValueError:
            raise InvalidArgument(f"storage.options mode={mode!r} is not an octal mode") from None
    return False


def _ephemeral(spec: StorageSpec, target: Path) -> bool:
    if spec.fstype not in ("", "tmpfs"):
        raise InvalidArgument(f"storage.fstype {spec.fstype!r}: the ephemeral driver mounts tmpfs only")
    _mount_checked(spec, spec.source or "tmpfs", target, "tmpfs", parse_mount_options(spec.options))
    return True


def _bind(spec: StorageSpec, target: Path) -> bool:
    if not spec.source:
        raise InvalidArgument(f"storage.source is empty for the {spec.driver} driver")
    if not os.path.exists(spec.source):
        raise NotFound(f"storage.source {spec.source!r} not found")
    opts = parse_mount_options(spec.options)
    opts = MountOptions(opts.flags | MS_BIND, opts.propagation, "", opts.extra)
    _mount_checked(spec, spec.source, target, None, opts)
    return True


def _virtio_fs(spec: StorageSpec, target: Path) -> bool:
    opts = parse_mount_options(spec.options)
    if opts.flags & MS_BIND:
        return _bind(spec, target)
    if not spec.source:
        raise InvalidArgument("storage.source (the virtio-fs tag) is empty")
    _mount_checked(spec, spec.source, target, spec.fstype or "virtiofs", opts)
    return True


def _overlayfs(spec: StorageSpec, target: Path) -> bool:
    opts = parse_mount_options(spec.options)
    lower = opts.extra.get("lowerdir", "")
    if not lower:
        raise InvalidArgument("storage.options needs lowerdir= for the overlayfs driver")
    for d in lower.split(":"):
        if not os.path.isdir(d):
            raise NotFound(f"storage.options lowerdir {d!r} not found")
    upper, work = opts.extra.get("upperdir"), opts.extra.get("workdir")
    if (upper is None) != (work is None):
        raise InvalidArgument("storage.options needs both upperdir= and workdir=, or neither")
    for d in (upper, work):
        if d is not None:
            os.makedirs(d, mode=0o755, exist_ok=True)
    _mount_checked(spec, spec.source or "overlay", target, spec.fstype or "overlay", opts)
    return True


for _name, _driver in (
    ("local", _local),
    ("ephemeral", _ephemeral),
    ("bind", _bind),
    ("virtio-fs", _virtio_fs),
    ("overlayfs", _overlayfs),
):
    register_driver(_name, _driver)


def _quiet_umount(target: Path) -> None:
    try:
        umount(target)
    except OSError:
        try:
            umount(target, MNT_DETACH)
        except OSError:
            pass


def apply_fs_group(root: Path, gid: int, policy: str = "Always") -> None:
    """Give group ``gid`` read/write access to the tree (Kubernetes fsGroup semantics).

    Directories get the setgid bit so new files inherit the group. ``OnRootMismatch``
    skips the walk when the root already has the right group. Symlinks are not touched.
    """
    if policy == "OnRootMismatch" and os.lstat(root).st_gid == gid:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [None, *dirnames, *filenames]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.lchown(path, -1, gid)
            mode = stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP
            if stat.S_ISDIR(st.st_mode):
                mode |= stat.S_IXGRP | stat.S_ISGID
            elif st.st_mode & stat.S_IXUSR:
                mode |= stat.S_IXGRP
            os.chmod(path, mode)


# ---------------------------------------------------------------- manager


@dataclass
class _Entry:
    spec: StorageSpec
    path: Path
    count: int
    mounted: bool
    created: bool


class StorageManager:
    """Reference-counted storages of one sandbox, all beneath ``mount_root``."""

    def __init__(self, mount_root: str | os.PathLike[str]) -> None:
        self.mount_root = Path(os.path.realpath(mount_root))
        self._entries: dict[Path, _Entry] = {}
        self._lock = threading.Lock()

    def _confined(self, mount_point: str) -> str:
        """``mount_point`` relative to ``mount_root``; refuses anything outside it."""
        if not mount_point:
            raise InvalidArgument("storage.mount_point is empty")
        absolute = os.path.normpath(os.path.join(self.mount_root, mount_point))
        if os.path.commonpath([absolute, str(self.mount_root)]) != str(self.mount_root):
            raise PermissionDenied(f"storage.mount_point {mount_point!r} is outside {self.mount_root}")
        rel = os.path.relpath(absolute, self.mount_root)
        split_relative(rel, what="storage.mount_point")
        if rel == ".":
            raise InvalidArgument(f"storage.mount_point {mount_point!r} is the mount root itself")
        return rel

    def _lookup(self, rel: str) -> Path:
        """The real path a confined mount point names (its missing tail kept as given)."""
        return resolve_beneath(self.mount_root, rel, allow_missing=True, what="storage.mount_point")

    def acquire(self, spec: StorageSpec) -> Path:
        """Set the storage up (or count one more user of it); returns the mount point."""
        driver = DRIVERS.get(spec.driver)
        if driver is None:
            raise InvalidArgument(f"storage.driver {spec.driver!r} is not supported")
        rel = self._confined(spec.mount_point)
        with self._lock:
            resolved = self._lookup(rel)
            known = self._entries.get(resolved)
            if known is not None:
                if known.spec.identity() != spec.identity():
                    raise InvalidArgument(
                        f"storage.mount_point {spec.mount_point!r} is already used by "
                        f"{known.spec.driver} storage of {known.spec.source!r}"
                    )
                known.count += 1
                return known.path
            existed = os.path.lexists(resolved)
            path = self._make_mount_point(spec, rel)
            try:
                mounted = driver(spec, path)
                if spec.fs_group is not None and not parse_mount_options(spec.options).flags & MS_RDONLY:
                    apply_fs_group(path, spec.fs_group, spec.fs_group_policy)
            except BaseException:
                if not existed:
                    _remove(path, recursive=False)
                raise
            self._entries[path] = _Entry(spec, path, 1, mounted, created=not existed)
            return path

    def _make_mount_point(self, spec: StorageSpec, rel: str) -> Path:
        """A directory, or an empty file when a single file is bind-mounted."""
        binds = spec.driver == "bind" or parse_mount_options(spec.options).flags & MS_BIND
        if binds and spec.source and os.path.exists(spec.source) and not os.path.isdir(spec.source):
            parent, _, name = rel.rpartition("/")
            if parent:
                makedirs_beneath(self.mount_root, parent, 0o755, what="storage.mount_point")
            fd = open_beneath(
                self.mount_root, rel, os.O_WRONLY | os.O_CREAT, 0o644, what="storage.mount_point"
            )
            os.close(fd)
            return self._lookup(rel)
        return makedirs_beneath(self.mount_root, rel, 0o755, what="storage.mount_point")

    def release(self, mount_point: str | os.PathLike[str]) -> bool:
        """Drop one user; the last one unmounts and removes the mount point. True if torn down."""
        with self._lock:
            entry = self._entries.get(self._lookup(self._confined(os.fspath(mount_point))))
            if entry is None:
                raise NotFound(f"storage at {os.fspath(mount_point)!r} not found")
            entry.count -= 1
            if entry.count > 0:
                return False
            del self._entries[entry.path]
            self._teardown(entry)
            return True

    def _teardown(self, entry: _Entry) -> None:
        if entry.mounted:
            try:
                umount(entry.path)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    umount(entry.path, MNT_DETACH)  # still in use: detach, it goes when they do
                elif e.errno != errno.EINVAL:  # EINVAL: no longer a mount point
                    raise FailedPrecondition(f"unmounting storage at {entry.path}: {e.strerror}") from None
        if entry.created:
            _remove(entry.path, recursive=entry.spec.driver == "local")

    def refcount(self, mount_point: str | os.PathLike[str]) -> int:
        """How many users the storage at ``mount_point`` has (0 if unknown)."""
        entry = self._entries.get(self._lookup(self._confined(os.fspath(mount_point))))
        return entry.count if entry else 0

    def mount_points(self) -> list[Path]:
        """Every storage currently set up."""
        return list(self._entries)

    def release_all(self) -> None:
        """Tear everything down regardless of counts (DestroySandbox), newest first."""
        with self._lock:
            entries = list(self._entries.values())[::-1]
            self._entries.clear()
        for entry in entries:
            self._teardown(entry)


def _remove(path: Path, *, recursive: bool) -> None:
    """Remove a mount point we created (best effort: it stays beneath our mount root)."""
    try:
        if recursive:
            import shutil  # lazily: only a local storage's last release needs it

            shutil.rmtree(path)
        elif path.is_dir() and not path.is_symlink():
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass  # gone already, or not empty or busy: leave it, it is beneath our mount root
