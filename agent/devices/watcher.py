"""DeviceWatcher: a map of devices already seen plus waiters for new ones.

The uevent reader ``feed``s every event; a caller that needs a device calls
``watch(matcher)``. The map is consulted first, under the same lock as
``feed``, so a device whose event arrived before the waiter existed is found
at once and one that arrives later completes the waiter: no event is missed.
Expiry is driven by the caller (``poll_expired(now)`` from a loop timer set at
``next_deadline()``), so the watcher owns no thread. A thread that prefers to
block may call ``WatchHandle.wait()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from agent.devices.uevent import Uevent
from agent.errors import AgentError, DeadlineExceeded

DEFAULT_HOTPLUG_TIMEOUT = 3.0

Matcher = Callable[[Uevent], bool]


class WatchHandle:
    """One pending wait; completes with the matching event or an error."""

    def __init__(
        self,
        watcher: DeviceWatcher,
        matcher: Matcher,
        deadline: float,
        timeout: float,
        description: str,
        transform: Callable[[Uevent], Any] | None,
    ) -> None:
        self._watcher = watcher
        self.matcher = matcher
        self.deadline = deadline
        self.timeout = timeout
        self.description = description or repr(matcher)
        self._transform = transform
        self.event: Uevent | None = None
        self.error: AgentError | None = None
        self._done = threading.Event()
        self._callbacks: list[Callable[[WatchHandle], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, fn: Callable[[WatchHandle], None]) -> None:
        """Run ``fn(handle)`` on completion (now, if already complete)."""
        with self._watcher._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def result(self) -> Any:
        """The event (or its transform); raises the error of a failed wait."""
        if not self._done.is_set():
            raise RuntimeError(f"wait for {self.description} is still pending")
        if self.error is not None:
            raise self.error
        assert self.event is not None
        return self._transform(self.event) if self._transform else self.event

    def wait(self) -> Any:
        """Block the calling thread until done or expired (not for the loop thread)."""
        while not self._done.is_set():
            remaining = self.deadline - self._watcher.clock()
            if remaining <= 0:
                self._watcher.poll_expired()
                break
            self._done.wait(remaining)
        return self.result()

    def cancel(self) -> None:
        self._watcher._remove(self)

    def _complete(
        self, event: Uevent | None, error: AgentError | None
    ) -> list[Callable[[WatchHandle], None]]:
        self.event, self.error = event, error
        self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        return f"<WatchHandle {self.description} {state}>"


class DeviceWatcher:
    """Seen-device map and waiter list, safe to use from the loop and from threads."""

    def __init__(
        self, default_timeout: float = DEFAULT_HOTPLUG_TIMEOUT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default_timeout = default_timeout
        self.clock = clock
        self.seen: dict[str, Uevent] = {}
        self._waiters: list[WatchHandle] = []
        self._lock = threading.Lock()

    def feed(self, event: Uevent) -> list[WatchHandle]:
        """Record one event; returns the waiters it completed."""
        completed: list[WatchHandle] = []
        callbacks: list[tuple[Callable[[WatchHandle], None], WatchHandle]] = []
        with self._lock:
            if event.action == "remove":
                self.seen.pop(event.devpath, None)
                return []
            if event.action != "add":
                return []
            self.seen[event.devpath] = event
            for handle in list(self._waiters):
                if _matches(handle.matcher, event):
                    self._waiters.remove(handle)
                    callbacks += [(cb, handle) for cb in handle._complete(event, None)]
                    completed.append(handle)
        for cb, handle in callbacks:
            cb(handle)
        return completed

    def watch(
        self,
        matcher: Matcher,
        timeout: float | None = None,
        description: str = "",
        transform: Callable[[Uevent], Any] | None = None,
    ) -> WatchHandle:
        """Wait for a device matching ``matcher``; already-seen devices match at once."""
        timeout = self.default_timeout if timeout is None else timeout
        handle = WatchHandle(self, matcher, self.clock() + timeout, timeout, description, transform)
        with self._lock:
            for event in self.seen.values():
                if _matches(matcher, event):
                    handle._complete(event, None)
                    return handle
            self._waiters.append(handle)
        return handle

    def poll_expired(self, now: float | None = None) -> list[WatchHandle]:
        """Fail every waiter whose deadline has passed; returns them."""
        now = self.clock() if now is None else now
        expired: list[WatchHandle] = []
        callbacks: list[tuple[Callable[[WatchHandle], None], WatchHandle]] = []
        with self._lock:
            for handle in list(self._waiters):
                if handle.deadline <= now:
                    self._waiters.remove(handle)
                    err = DeadlineExceeded(
                        f"timeout after {handle.timeout:g}s waiting for uevent of {handle.description}"
                    )
                    callbacks += [(cb, handle) for cb in handle._complete(None, err)]
                    expired.append(handle)
        for cb, handle in callbacks:
            cb(handle)
        return expired

    def next_deadline(self) -> float | None:
        """When the loop should next call ``poll_expired`` (None: nothing pending)."""
        with self._lock:
            return min((h.deadline for h in self._waiters), default=None)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._waiters)

    def _remove(self, handle: WatchHandle) -> None:
        with self._lock:
            if handle in self._waiters:
                self._waiters.remove(handle)


def _matches(matcher: Matcher, event: Uevent) -> bool:
    try:
        return bool(matcher(event))
    except Exception:  # a faulty matcher must not break the event stream
        return False
