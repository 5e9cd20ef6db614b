"""The sandbox-wide OOM event queue behind GetOOMEvent.

Each container's OOM watch (:func:`agent.cgroups.watch_oom`: a v1 eventfd or a
v2 inotify fd) is registered in the loop; when it fires, the container's id is
queued. GetOOMEvent is a long poll: it takes the oldest queued id, or waits for
the next one. Waiting costs a future, never a thread, so a pending GetOOMEvent
never delays another call. The queue is bounded (oldest events dropped first,
and counted): a runtime that stopped polling cannot make the agent grow.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from agent import log
from ttrpc.loop import Future, Loop

QUEUE_LIMIT = 1024
_log = log.logger("oom")


class Watch(Protocol):
    fd: int

    def check(self) -> object: ...

    def close(self) -> None: ...


class OomEvents:
    """Container ids of OOM kills, in order, for whoever asks."""

    def __init__(self, loop: Loop, limit: int = QUEUE_LIMIT) -> None:
        self.loop = loop
        self.limit = limit
        self._events: deque[str] = deque()
        self._waiters: deque[Future[str]] = deque()
        self._watches: dict[str, Watch] = {}
        #: Events dropped because nobody collected them in time.
        self.dropped = 0

    def watch(self, container_id: str, watch: Watch) -> None:
        """Start feeding the queue from ``watch`` (ownership passes to us)."""
        self.unwatch(container_id, drain=False)
        self._watches[container_id] = watch
        self.loop.add_reader(watch.fd, lambda: self._on_ready(container_id, watch))

    def unwatch(self, container_id: str, *, drain: bool = True) -> None:
        """Stop watching; with ``drain`` an OOM already signalled is still queued first."""
        watch = self._watches.pop(container_id, None)
        if watch is None:
            return
        if drain:
            self._check(container_id, watch)
        self.loop.remove_reader(watch.fd)
        watch.close()

    def watching(self) -> int:
        return len(self._watches)

    def _on_ready(self, container_id: str, watch: Watch) -> None:
        if self._watches.get(container_id) is not watch:
            return
        if self._check(container_id, watch) == "gone":
            self._watches.pop(container_id, None)
            self.loop.remove_reader(watch.fd)
            watch.close()

    def _check(self, container_id: str, watch: Watch) -> str:
        try:
            event = getattr(watch.check(), "value", "none")
        except OSError as exc:
            _log.warn("OOM watch failed", container_id=container_id, error=str(exc))
            return "gone"
        if event == "oom":
            _log.info("OOM kill", container_id=container_id)
            self.push(container_id)
        return str(event)

    def push(self, container_id: str) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(container_id)
                return
        self._events.append(container_id)
        while len(self._events) > self.limit:
            self._events.popleft()
            self.dropped += 1

    def get(self) -> Future[str]:
        """The next container id; cancel the future to stop waiting."""
        fut: Future[str] = Future()
        if self._events:
            fut.set_result(self._events.popleft())
            return fut
        self._waiters.append(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Future[str]) -> None:
        if fut.cancelled():
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def close(self) -> None:
        for container_id in list(self._watches):
            self.unwatch(container_id, drain=False)
        while self._waiters:
            self._waiters.popleft().cancel()
