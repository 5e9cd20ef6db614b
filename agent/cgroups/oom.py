"""OOM notification primitives: a file descriptor to watch, and what its wake-ups mean.

The agent's event loop registers ``watch.fd`` for reading; when it becomes readable the
loop calls ``watch.check()``, which drains the fd and answers OOM, GONE (the cgroup was
removed: unregister and close) or NONE (a wake-up that was not an OOM kill).

* v1: an eventfd registered through ``cgroup.event_control`` on ``memory.oom_control``.
  The kernel also signals it when the cgroup is removed, so ``check`` tells the two apart
  by whether the cgroup still exists.
* v2: an inotify watch on ``memory.events`` (the kernel emits IN_MODIFY when a counter
  changes); ``check`` re-reads the file and reports OOM only when ``oom_kill`` went up,
  since the same file also counts ``low``/``high``/``max`` events.
"""

from __future__ import annotations

import enum
import errno
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from agent.cgroups.files import read_text
from agent.cgroups.layout import Cgroup, CgroupV2
from agent.errors import FailedPrecondition, NotFound

IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_INOTIFY_EVENT = struct.Struct("iIII")


class OomEvent(enum.Enum):
    NONE = "none"
    OOM = "oom"
    GONE = "gone"


def parse_memory_events(text: str) -> dict[str, int]:
    """``memory.events`` (``low N``, ``high N``, ``max N``, ``oom N``, ``oom_kill N``...)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def oom_kill_increased(before: Mapping[str, int], after: Mapping[str, int]) -> bool:
    """Whether the OOM killer killed something between two ``memory.events`` readings."""
    return after.get("oom_kill", 0) > before.get("oom_kill", 0)


class V1OomWatch:
    """An eventfd the kernel signals on each OOM in a v1 memory cgroup."""

    def __init__(self, memory_dir: Path) -> None:
        self.memory_dir = Path(memory_dir)
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(self.memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            os.close(self.fd)
            raise NotFound(f"memory cgroup {self.memory_dir} not found") from None
        try:
            # The kernel keeps its own reference: the control fd can be closed right after.
            with open(self.memory_dir / "cgroup.event_control", "w") as f:
                f.write(f"{self.fd} {control}")
        except OSError as e:
            os.close(self.fd)
            raise FailedPrecondition(
                f"cannot register an OOM eventfd in {self.memory_dir}: {e.strerror}"
            ) from None
        finally:
            os.close(control)

    def check(self) -> OomEvent:
        """Drain the eventfd; OOM, GONE (cgroup removed) or NONE (nothing pending)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return OomEvent.NONE
        if not (self.memory_dir / "cgroup.event_control").exists():
            return OomEvent.GONE
        return OomEvent.OOM

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class V2OomWatch:
    """An inotify fd on a v2 cgroup's ``memory.events``, remembering the last reading."""

    def __init__(self, cgroup_dir: Path) -> None:
        self.events_file = Path(cgroup_dir) / "memory.events"
        self.fd = _inotify_init()
        try:
            _inotify_add_watch(self.fd, self.events_file, IN_MODIFY)
        except BaseException:
            os.close(self.fd)
            raise
        self.last = parse_memory_events(read_text(self.events_file) or "")

    def check(self) -> OomEvent:
        """Drain pending inotify events and compare ``oom_kill`` with the last reading."""
        ignored = False
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                break
            offset = 0
            while offset + _INOTIFY_EVENT.size <= len(data):
                _wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, offset)
                ignored |= bool(mask & IN_IGNORED)
                offset += _INOTIFY_EVENT.size + length
        text = read_text(self.events_file)
        if text is None or ignored:
            return OomEvent.GONE
        current = parse_memory_events(text)
        increased = oom_kill_increased(self.last, current)
        self.last = current
        return OomEvent.OOM if increased else OomEvent.NONE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def watch_oom(cgroup: Cgroup) -> V1OomWatch | V2OomWatch:
    """The right watch for the cgroup's layout."""
    if isinstance(cgroup, CgroupV2):
        return V2OomWatch(cgroup.path)
    memory = cgroup.dir("memory")
    if memory is None:
        raise FailedPrecondition("the memory cgroup controller is not mounted")
    return V1OomWatch(memory)


_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes  # lazily: only OOM watching on v2 needs it

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _inotify_init() -> int:
    import ctypes

    fd = _c().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _inotify_add_watch(fd: int, path: Path, mask: int) -> int:
    import ctypes

    wd = _c().inotify_add_watch(fd, os.fsencode(path), ctypes.c_uint32(mask))
    if wd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            raise NotFound(f"{path} not found (no memory controller in this cgroup?)")
        raise OSError(err, os.strerror(err), str(path))
    return wd
