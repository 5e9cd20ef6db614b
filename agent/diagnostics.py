"""GetDiagnosticData: a container's termination log (the last 4 KiB, as the kubelet reads it).

Where the log is: Kubernetes mounts a file at the container's
``terminationMessagePath`` (``/dev/termination-log`` by default); under Kata
that mount's source is a file in the guest (usually in the shared directory).
If the spec has such a mount, its source is read, but only beneath the shared
directory or ``/run/kata-containers``: the spec comes from the host, and this
call must not become a way to read any guest file. Otherwise, while the
container's init runs, the path is looked up inside the container's own root
(``/proc/<pid>/root``, confined there like the runtime would resolve it).
Blocking (file reads): run it on a worker thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.errors import NotFound

if TYPE_CHECKING:
    from agent.container import Container

TERMINATION_LOG = "/dev/termination-log"
LIMIT = 4096
#: Accepted ``log_type`` values ('' means the termination log).
LOG_TYPES = frozenset({"", "termination-log", "termination_log"})


def read_diagnostic(container: Container, log_type: str) -> str:
    """The termination log of ``container`` (``log_type`` is one of LOG_TYPES)."""
    from agent.paths import open_beneath

    sandbox = container.sandbox
    tops = [os.path.realpath(sandbox.config.shared_dir), os.path.realpath(sandbox.base)]
    for mount in container.spec.get("mounts") or ():
        source = mount.get("source") or ""
        if mount.get("destination") != TERMINATION_LOG or not source.startswith("/"):
            continue
        for top in tops:
            if source.startswith(top + "/"):
                fd = open_beneath(top, source[len(top) + 1 :], os.O_RDONLY, what="termination log")
                return _tail(fd)
    if container.init.alive:
        root = f"{sandbox.config.proc_root}/{container.init.pid}/root"
        try:
            fd = open_beneath(root, TERMINATION_LOG, os.O_RDONLY, in_root=True, what="termination log")
        except NotFound:
            pass
        else:
            return _tail(fd)
    raise NotFound(f"container {container.id} has no termination log at {TERMINATION_LOG}")


def _tail(fd: int) -> str:
    """The last LIMIT bytes of the file (closes ``fd``)."""
    try:
        size = os.fstat(fd).st_size
        if size > LIMIT:
            os.lseek(fd, size - LIMIT, os.SEEK_SET)
        data = os.read(fd, LIMIT)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")
