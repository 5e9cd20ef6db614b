"""PID-1 duties: the mounts, tty, hostname, loopback and power-off of a guest init.

Each duty is a function that is safe to call twice (it checks before acting)
and takes a ``root`` so tests can run it in fresh namespaces against a scratch
directory.  Order at boot (see ``mount_base``/``finish_init``): the base
mounts come first because the configuration needs ``/proc/cmdline``; cgroups
come after, since v1 vs v2 is a configuration choice.

Raw syscalls (mount, reboot, prctl) go through libc via ctypes, loaded on
first use so that importing this module stays cheap.
"""

from __future__ import annotations

import errno
import os

from agent.log import logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from agent.config import AgentConfig

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_RELATIME = 0x200000

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
RB_POWER_OFF = 0x4321FEDC

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
TIOCSCTTY = 0x540E

DEFAULT_PATH = "/bin:/sbin:/usr/bin:/usr/sbin"

_log = logger("init")
_libc = None


def libc():
    """The C library, with errno captured for OSError reporting (loaded once)."""
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
        lib.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
        lib.reboot.argtypes = (ctypes.c_int,)
        lib.prctl.argtypes = (ctypes.c_int,) + (ctypes.c_ulong,) * 4
        _libc = lib
    return _libc


def _oserror(what: str, path: str | None = None) -> OSError:
    import ctypes

    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)


# --- mounts -------------------------------------------------------------------


def _unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` for a space, etc.)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str, str, str]]:
    """``(mount point, fstype, source, super options)`` for each mount, in table order."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) >= 5 and len(tail) >= 2:
                opts = tail[2] if len(tail) > 2 else ""
                entries.append((_unescape(fields[4]), tail[0], _unescape(tail[1]), opts))
    return entries


def mounted_fstype(target: str) -> str | None:
    """The filesystem type visible at ``target`` if it is a mount point, else None.

    Uses mountinfo (the last entry for a path is the one on top); before /proc
    exists it falls back to comparing devices with the parent ("?" type).
    """
    real = os.path.realpath(target)
    try:
        table = mountinfo()
    except OSError:
        return "?" if os.path.ismount(real) else None
    for point, fstype, _, _ in reversed(table):
        if point == real:
            return fstype
    return None


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    """mount(2); raises OSError with the errno."""
    rc = libc().mount(
        source.encode(), target.encode(), fstype.encode(), flags, data.encode() if data else None
    )
    if rc != 0:
        raise _oserror(f"mount {fstype} on {target}", target)


def ensure_mount(
    root: str,
    rel: str,
    fstype: str,
    source: str,
    flags: int = 0,
    data: str | None = None,
    mode: int = 0o755,
) -> bool:
    """Mount ``fstype`` at ``root/rel`` unless that type is already there.

    Creates the mount point if needed; returns True if it mounted something.
    """
    target = os.path.join(root, rel)
    if mounted_fstype(target) in (fstype, "?"):
        return False
    os.makedirs(target, mode=mode, exist_ok=True)
    mount(source, target, fstype, flags, data)
    _log.debug("mounted", fstype=fstype, target=target, options=data or "")
    return True


def mount_proc(root: str = "/") -> bool:
    return ensure_mount(root, "proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_sysfs(root: str = "/") -> bool:
    return ensure_mount(root, "sys", "sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_devtmpfs(root: str = "/") -> bool:
    return ensure_mount(root, "dev", "devtmpfs", "devtmpfs", MS_NOSUID, "mode=0755")


def mount_devpts(root: str = "/") -> bool:
    """A private devpts instance whose ptmx node everyone may open (via /dev/ptmx)."""
    return ensure_mount(
        root, "dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
    )


def mount_shm(root: str = "/") -> bool:
    return ensure_mount(root, "dev/shm", "tmpfs", "shm", MS_NOSUID | MS_NODEV, "mode=1777", 0o1777)


def mount_run(root: str = "/") -> bool:
    return ensure_mount(root, "run", "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")


def mount_base(root: str = "/") -> list[str]:
    """proc, sysfs, devtmpfs, devpts, /dev/shm and /run; returns what was newly mounted."""
    done = []
    for name, fn in (
        ("proc", mount_proc),
        ("sys", mount_sysfs),
        ("dev", mount_devtmpfs),
        ("dev/pts", mount_devpts),
        ("dev/shm", mount_shm),
        ("run", mount_run),
    ):
        if fn(root):
            done.append(name)
    return done


def cgroup_controllers(proc_cgroups: str = "/proc/cgroups") -> list[str]:
    """Names of the enabled cgroup v1 controllers listed by the kernel."""
    names = []
    with open(proc_cgroups, encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and not line.startswith("#") and fields[3] == "1":
                names.append(fields[0])
    return names


def mount_cgroups(
    root: str = "/",
    v2: bool = False,
    rel: str = "sys/fs/cgroup",
    proc_cgroups: str | None = None,
) -> list[str]:
    """Mount the cgroup hierarchy: cgroup2 (nsdelegate), or v1 controllers on a tmpfs.

    v1 mounts one hierarchy per enabled controller from /proc/cgroups; a
    controller the kernel refuses (for instance one already bound to another
    hierarchy) is logged and skipped so the guest still boots.  Returns the
    mount points newly mounted.
    """
    base = os.path.join(root, rel)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    if v2:
        if mounted_fstype(base) == "cgroup2":
            return []
        os.makedirs(base, mode=0o755, exist_ok=True)
        try:
            mount("cgroup2", base, "cgroup2", flags, "nsdelegate")
        except OSError:  # kernels before 4.13 lack nsdelegate
            mount("cgroup2", base, "cgroup2", flags)
        return [base]
    done = []
    if ensure_mount(root, rel, "tmpfs", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755"):
        done.append(base)
    if proc_cgroups is None:
        proc_cgroups = os.path.join(root, "proc/cgroups")
    for name in cgroup_controllers(proc_cgroups):
        target = os.path.join(base, name)
        if mounted_fstype(target) == "cgroup":
            continue
        os.makedirs(target, mode=0o755, exist_ok=True)
        try:
            mount("cgroup", target, "cgroup", flags, name)
        except OSError as exc:
            _log.warn("cgroup controller not mounted", controller=name, error=exc.strerror)
            continue
        done.append(target)
    return done


# --- devices, session, names --------------------------------------------------


def link_ptmx(root: str = "/") -> bool:
    """Make ``dev/ptmx`` open the private devpts instance (``dev/pts/ptmx``).

    Without a node there, a symlink. Over an existing node, a bind mount: the
    devtmpfs is one instance per kernel, shared with the host when the agent
    runs in test namespaces, and replacing its node would change the host's
    /dev/ptmx; a mount stays in this mount namespace.
    """
    path = os.path.join(root, "dev/ptmx")
    try:
        if os.readlink(path) == "pts/ptmx":
            return False
    except OSError:
        pass
    if mounted_fstype(path) == "devpts":
        return False
    if not os.path.lexists(path):
        os.symlink("pts/ptmx", path)
        return True
    mount(os.path.join(root, "dev/pts/ptmx"), path, "", MS_BIND)
    return True


def setup_session(fd: int = 0) -> bool:
    """Become a session leader and, if ``fd`` is a tty, take it as controlling tty.

    Returns True if a controlling terminal was set.
    """
    if os.getsid(0) != os.getpid():
        os.setsid()
    if not os.isatty(fd):
        return False
    import fcntl

    fcntl.ioctl(fd, TIOCSCTTY, 1)  # 1: steal it if another session holds it
    return True


def read_hostname(root: str = "/") -> str:
    """First word of ``etc/hostname`` under ``root``, or "localhost"."""
    try:
        with open(os.path.join(root, "etc/hostname"), encoding="utf-8") as f:
            words = f.read().split()
    except OSError:
        words = []
    return words[0] if words else "localhost"


def set_hostname(name: str | None = None, root: str = "/") -> str:
    """Set the UTS hostname (default: from ``etc/hostname``); returns the name set."""
    import socket

    name = name or read_hostname(root)
    if socket.gethostname() != name:
        socket.sethostname(name)
    return name


def _ifreq_flags(sock, name: str, flags: int | None = None) -> int:
    import fcntl
    import struct

    req = struct.pack("16sH22x", name.encode(), flags or 0)
    cmd = SIOCGIFFLAGS if flags is None else SIOCSIFFLAGS
    return struct.unpack_from("16xH", fcntl.ioctl(sock.fileno(), cmd, req))[0]


def interface_flags(name: str = "lo") -> int:
    """The link flags (IFF_*) of interface ``name`` in this network namespace."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return _ifreq_flags(sock, name)


def loopback_up(name: str = "lo") -> bool:
    """Set IFF_UP on the loopback with SIOCSIFFLAGS (no netlink library needed)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _ifreq_flags(sock, name)
        if flags & IFF_UP:
            return False
        _ifreq_flags(sock, name, flags | IFF_UP)
    return True


# --- process duties -----------------------------------------------------------


def set_child_subreaper() -> None:
    """Adopt orphaned descendants (so container processes are reaped by us)."""
    if libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_CHILD_SUBREAPER)")


def is_child_subreaper() -> bool:
    import ctypes

    value = ctypes.c_int(0)
    if libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value), 0, 0, 0) != 0:
        raise _oserror("prctl(PR_GET_CHILD_SUBREAPER)")
    return value.value != 0


def power_off() -> NoReturn:
    """sync, then reboot(RB_POWER_OFF): the VM stops (in a PID namespace, its init exits).

    Refuses (EPERM) unless we are PID 1: a stray call from an agent running as
    a plain process on a host must not switch that host off.  Only returns by
    raising OSError.
    """
    if os.getpid() != 1:
        raise OSError(errno.EPERM, "power_off: only PID 1 may power off")
    os.sync()
    libc().reboot(RB_POWER_OFF)
    raise _oserror("reboot(RB_POWER_OFF)")


# --- the sequence -------------------------------------------------------------


def finish_init(config: AgentConfig, root: str = "/") -> None:
    """Everything after ``mount_base`` and the configuration, in boot order.

    cgroups (v1 or v2 per config), /dev/ptmx, session and tty, hostname, lo up,
    child subreaper and a usable PATH.
    """
    mount_cgroups(root, v2=config.cgroup_v2, rel=config.cgroup_root.lstrip("/"))
    link_ptmx(root)
    try:
        setup_session()
    except OSError as exc:
        _log.warn("no controlling terminal", error=exc.strerror)
    try:
        set_hostname(root=root)
    except OSError as exc:
        _log.warn("failed to set hostname", error=exc.strerror)
    loopback_up()
    set_child_subreaper()
    os.environ.setdefault("PATH", DEFAULT_PATH)
