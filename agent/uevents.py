"""The agent's one kernel uevent socket, read by the event loop.

Why one socket owned by the loop: every hot-plug wait (a NIC by PCI path, a
virtio-blk disk for AddSwap or storage, ...) is answered from the same stream,
and a :class:`~agent.devices.watcher.DeviceWatcher` remembers every device
seen so a waiter that starts after its device's ``add`` event still finds it.
Waits are loop futures; their ``hotplug_timeout`` expiry is one loop timer at
the earliest pending deadline, so no thread ever blocks on a device.

Memory blocks the hypervisor hot-adds announce themselves with an ``add``
uevent under ``/devices/system/memory``; they are onlined at once (in the
thread pool: onlining a large block is a slow sysfs write).

Create it with :func:`install` as early as possible (events that arrive
before the socket exists are only found by the sysfs scans some waits do).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from agent import log
from agent.devices.uevent import Uevent, open_uevent_socket, read_uevents
from agent.devices.watcher import DeviceWatcher, WatchHandle
from ttrpc.loop import Future, TimerHandle

if TYPE_CHECKING:
    import socket

    from agent.app import Agent

COMPONENT = "uevents"
_log = log.logger("uevent")


class Uevents:
    """Reads the uevent socket in the loop, feeds the watcher, expires waits on time."""

    def __init__(self, agent: Agent, *, open_socket: bool = True) -> None:
        self.loop = agent.loop
        self.sysfs_root = agent.config.sysfs_root
        self.watcher = DeviceWatcher(default_timeout=agent.config.hotplug_timeout, clock=self.loop.time)
        self.sock: socket.socket | None = None
        self.overruns = 0
        self.memory_onlined = 0
        self._timer: TimerHandle | None = None
        self._thread = threading.get_ident()  # components are created on the loop thread
        if open_socket:
            try:
                self.sock = open_uevent_socket()
            except OSError as exc:  # e.g. no CAP_NET_ADMIN in a test sandbox
                _log.warn("no uevent socket: hot-plug waits rely on sysfs scans", error=str(exc))
            else:
                self.loop.add_reader(self.sock.fileno(), self._on_readable)
        agent.on_close(self.close)

    # -- events ------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self.sock is not None
        try:
            events, overrun = read_uevents(self.sock)
        except OSError as exc:
            _log.error("reading uevents failed", error=str(exc))
            return
        if overrun:
            self.overruns += 1
            _log.warn("uevent queue overrun: some events were lost")
        self.dispatch(events)

    def dispatch(self, events: Iterable[Uevent]) -> None:
        """Handle events as if read from the socket (the reader, and tests)."""
        for event in events:
            if event.action == "add" and event.subsystem == "memory":
                self._online_memory(event.devpath)
                continue
            self.watcher.feed(event)

    def _online_memory(self, devpath: str) -> None:
        from agent.guest.cpumem import online_hotplugged_memory

        fut = self.loop.run_in_thread(online_hotplugged_memory, devpath, self.sysfs_root)
        fut.add_done_callback(lambda f: self._memory_done(devpath, f))

    def _memory_done(self, devpath: str, fut: Future[bool]) -> None:
        exc = fut.exception()
        if exc is not None:
            _log.error("onlining hot-added memory failed", devpath=devpath, error=str(exc))
        elif fut.result():
            self.memory_onlined += 1
            _log.debug("onlined hot-added memory", devpath=devpath)

    # -- waits -------------------------------------------------------------------

    def wait(self, start: Callable[[DeviceWatcher], WatchHandle]) -> Future[Any]:
        """Start a wait with ``start(watcher)`` (a ``watch_*`` helper) and return its future.

        The future completes on the loop with the handle's result, or fails
        with the error ``start`` raised or the timeout's DeadlineExceeded.
        Cancelling the future drops the wait.
        """
        fut: Future[Any] = Future()
        try:
            handle = start(self.watcher)
        except Exception as exc:  # noqa: BLE001 - e.g. an unresolvable PCI path
            fut.set_exception(exc)
            return fut
        handle.add_done_callback(lambda h: self._deliver(fut, h))
        if not handle.done:
            fut.add_done_callback(lambda f: handle.cancel() if f.cancelled() else None)
            self._schedule(handle.deadline)
        return fut

    def _deliver(self, fut: Future[Any], handle: WatchHandle) -> None:
        if threading.get_ident() != self._thread:  # a thread's WatchHandle.wait() expired it
            self.loop.call_soon_threadsafe(self._deliver, fut, handle)
            return
        try:
            value = handle.result()
        except Exception as exc:  # noqa: BLE001 - handed to the waiter
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None and not self._timer.cancelled and self._timer.when <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(deadline - self.loop.time(), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.watcher.poll_expired(self.loop.time())
        deadline = self.watcher.next_deadline()
        if deadline is not None:
            self._schedule(deadline)

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def install(agent: Agent) -> Uevents:
    """The agent's uevent component, created (socket opened) on first call.

    Call at start-up so that no event is missed; later calls return the same one.
    """
    return agent.component(COMPONENT, Uevents)
