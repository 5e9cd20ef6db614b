"""The pod's shared IPC and UTS namespaces, kept alive by bind mounts (no process needed).

Why: every container of a pod must see the same hostname and the same System V
IPC objects, and the pod's first container may exit before the others. So at
CreateSandbox the agent makes a fresh UTS and IPC namespace, sets the pod's
hostname in it, and pins both by bind-mounting their ``nsfs`` files; each
container's spec then names these paths and the OCI runtime joins them.

How, without a helper process: a worker thread ``unshare``\\s the two
namespaces for itself alone (UTS and IPC are per-thread), sets the hostname,
bind-mounts ``/proc/thread-self/ns/{uts,ipc}`` onto the target files, and
``setns``\\es back into the namespaces it came from. Run it on the loop's
thread pool (``loop.run_in_thread``): it blocks in mount(2).
"""

from __future__ import annotations

import errno
import os
import socket

from agent.errors import Internal
from agent.storage import MNT_DETACH, MS_BIND, mount, umount

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
KINDS = {"uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC}
_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def create(directory: str, hostname: str = "") -> dict[str, str]:
    """New UTS+IPC namespaces pinned at ``directory/{uts,ipc}``; returns {kind: path}.

    Blocking (mounts): call from a worker thread, never the loop.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {kind: os.path.join(directory, kind) for kind in KINDS}
    originals = {kind: os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in KINDS}
    mounted: list[str] = []
    try:
        _check(_c().unshare(CLONE_NEWUTS | CLONE_NEWIPC), "unshare(UTS|IPC)")
        try:
            if hostname:
                socket.sethostname(hostname)
            for kind, path in paths.items():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o400))
                mount(f"/proc/thread-self/ns/{kind}", path, None, MS_BIND)
                mounted.append(path)
        finally:
            for kind, fd in originals.items():
                _check(_c().setns(fd, KINDS[kind]), f"setns back to the agent's {kind} namespace")
    except OSError as exc:
        remove(mounted)
        raise Internal(f"cannot create the sandbox's shared namespaces: {exc.strerror or exc}") from None
    finally:
        for fd in originals.values():
            os.close(fd)
    return paths


def remove(paths: list[str] | tuple[str, ...]) -> None:
    """Unpin namespaces made by :func:`create` (they go once no container uses them)."""
    for path in paths:
        try:
            umount(path, MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # A dying container's mount namespace may still hold a propagated copy of
            # this bind mount for a moment: the pin is already detached here, and the
            # empty file is harmless (create() reuses it), so teardown goes on.
            if exc.errno != errno.EBUSY:
                raise
