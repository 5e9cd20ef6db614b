"""The one reaper: every child exit in the agent is collected here, and only here.

Why one: ``waitpid`` hands an exit status to exactly one caller. If a handler
waited on "its" child itself, or a library called ``wait`` behind our back, the
exit of a container process could be stolen and WaitProcess would hang. So the
agent becomes a child subreaper (orphaned descendants, such as a container's
init once the OCI runtime has exited, are reparented to us), and on every
SIGCHLD one loop of ``waitpid(-1, WNOHANG)`` collects every exited child and
hands each status to whoever asked for that pid with :meth:`Reaper.watch`.

An exit can arrive before anyone asks for it: a short-lived child can exit
before its spawner registers it, and a container process's pid is only known
once the runtime's ``create`` has written its pid file. Unclaimed exits are
therefore remembered (a bounded map, oldest forgotten first). Pids are reused,
so a remembered exit carries a sequence number: a caller takes
:meth:`Reaper.mark` before starting the process and passes it as ``since``, and
an older exit of a previous process with the same pid is never mistaken for
the new one's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections import OrderedDict
from typing import NamedTuple

from agent.errors import NotFound
from ttrpc.loop import Future, Loop, TimerHandle

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
UNCLAIMED_LIMIT = 1024
# A safety net, not the mechanism: the loop's wake-up pipe can drop a signal
# byte if it is ever full, so a slow periodic sweep bounds how long an exit can
# go unnoticed. One WNOHANG waitpid every few seconds costs nothing.
SWEEP_INTERVAL = 5.0


class ExitStatus(NamedTuple):
    """How a process ended: ``code`` is the exit code, or 128+signal (the shell's convention)."""

    pid: int
    code: int
    status: int  # the raw wait status, for anyone who needs more than ``code``

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, or None if it exited."""
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @classmethod
    def from_wait_status(cls, pid: int, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(pid, 128 + os.WTERMSIG(status), status)
        return cls(pid, os.WEXITSTATUS(status), status)


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value))
    return value.value != 0


def set_child_subreaper(enabled: bool = True) -> None:
    _prctl(PR_SET_CHILD_SUBREAPER, int(enabled))


class Reaper:
    """Collects every child exit on SIGCHLD and dispatches it by pid (loop thread only)."""

    def __init__(
        self,
        loop: Loop,
        unclaimed_limit: int = UNCLAIMED_LIMIT,
        sweep_interval: float | None = SWEEP_INTERVAL,
    ) -> None:
        self.loop = loop
        self._limit = unclaimed_limit
        self._sweep_interval = sweep_interval
        self._sweep_timer: TimerHandle | None = None
        self._watchers: dict[int, list[Future[ExitStatus]]] = {}
        self._unclaimed: OrderedDict[int, tuple[int, ExitStatus]] = OrderedDict()
        self._seq = 0
        self._installed = False
        self._was_subreaper: bool | None = None
        #: The loop thread (set by ``install``): helpers refuse to block it.
        self.thread_id: int | None = None
        #: How many exits were collected in total (tests, metrics).
        self.reaped = 0

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self, subreaper: bool = True) -> None:
        """Become a child subreaper, handle SIGCHLD on the loop, and collect exits already pending.

        Call on the loop's (main) thread: signal handlers can only be set there.
        """
        if self._installed:
            return
        if subreaper:
            self._was_subreaper = is_child_subreaper()
            set_child_subreaper(True)
        self.loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        self._installed = True
        self.thread_id = threading.get_ident()
        self.reap()  # children that exited before the handler existed sent a SIGCHLD nobody saw
        if self._sweep_interval:
            self._sweep_timer = self.loop.call_later(self._sweep_interval, self._sweep)

    def _sweep(self) -> None:
        if self._installed and self._sweep_interval:
            self.reap()
            self._sweep_timer = self.loop.call_later(self._sweep_interval, self._sweep)

    def uninstall(self) -> None:
        """Stop handling SIGCHLD (tests; shutdown). Restores the previous subreaper flag."""
        if not self._installed:
            return
        self.reap()
        self.loop.remove_signal_handler(signal.SIGCHLD)
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._was_subreaper is False:
            set_child_subreaper(False)
        self._installed = False

    def mark(self) -> int:
        """A point in the exit sequence: exits remembered before it are ignored by ``watch(since=...)``."""
        return self._seq

    def watch(self, pid: int, since: int | None = None) -> Future[ExitStatus]:
        """A future for the exit of ``pid``, which must be our child or an orphan reparented to us.

        A remembered exit is handed out once (then forgotten); with ``since``
        one older than that mark is ignored as belonging to an earlier process
        with the same pid. Cancelling the future drops the registration. If the
        pid has neither a remembered exit nor a live process, the future fails
        with NotFound at once instead of pending forever.
        """
        fut: Future[ExitStatus] = Future()
        entry = self._unclaimed.get(pid)
        if entry is not None and (since is None or entry[0] > since):
            del self._unclaimed[pid]
            fut.set_result(entry[1])
            return fut
        if entry is not None:
            del self._unclaimed[pid]  # an earlier process's exit: stale
        if not _exists(pid):
            fut.set_exception(NotFound(f"process {pid} not found"))
            return fut
        self._watchers.setdefault(pid, []).append(fut)
        fut.add_done_callback(lambda f: self._unregister(pid, f))
        return fut

    def _unregister(self, pid: int, fut: Future[ExitStatus]) -> None:
        if not fut.cancelled():
            return
        waiting = self._watchers.get(pid)
        if waiting is not None and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self._watchers[pid]

    def pending(self) -> int:
        """How many pids have a watcher waiting (leak checks in tests)."""
        return len(self._watchers)

    def unclaimed(self) -> int:
        """How many exits are remembered for nobody yet."""
        return len(self._unclaimed)

    def _on_sigchld(self, _signum: int) -> None:
        self.reap()

    def reap(self) -> int:
        """Collect every exited child now; returns how many. Safe to call any time on the loop."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no children at all
            except InterruptedError:
                continue
            if pid == 0:
                break
            count += 1
            self._dispatch(ExitStatus.from_wait_status(pid, status))
        self.reaped += count
        return count

    def _dispatch(self, exit_status: ExitStatus) -> None:
        self._seq += 1
        waiting = self._watchers.pop(exit_status.pid, None)
        delivered = False
        for fut in waiting or ():
            if not fut.done():
                fut.set_result(exit_status)
                delivered = True
        if delivered:
            return
        self._unclaimed.pop(exit_status.pid, None)
        self._unclaimed[exit_status.pid] = (self._seq, exit_status)
        while len(self._unclaimed) > self._limit:
            self._unclaimed.popitem(last=False)


def _exists(pid: int) -> bool:
    """Whether a process (possibly a zombie not yet reaped) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
