"""The one event loop: a ``selectors`` loop that owns every file descriptor.

Listeners, connections, child stdio pipes, pty masters, netlink sockets and
the signal wake-up fd are all registered here, so no thread ever blocks on
I/O.  Handlers that must call a blocking syscall (mount, large writes, cgroup
reads under load) use :meth:`Loop.run_in_thread`, a small bounded pool whose
completions come back to the loop through the self-pipe.  Results travel as
:class:`Future` objects: plain callback futures, no coroutines, so the hot
path allocates little.
"""

from __future__ import annotations

import heapq
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Callback = Callable[..., Any]

_PENDING, _DONE, _CANCELLED = 0, 1, 2
_COMPACT_MIN = 512  # timers in the heap before cancelled ones are swept out


class CancelledError(Exception):
    """The future was cancelled (its caller went away or gave up)."""


class Future(Generic[T]):
    """A result that arrives later, completed on the loop thread.

    Callbacks run synchronously when the future completes (or at once if it
    already has); they must be quick and must not raise.
    """

    __slots__ = ("_state", "_result", "_exc", "_callbacks")

    def __init__(self) -> None:
        self._state = _PENDING
        self._result: T | None = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], Any]] | None = None

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> T:
        if self._state == _PENDING:
            raise RuntimeError("future is not done")
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        if self._state == _CANCELLED:
            return CancelledError()
        return self._exc

    def set_result(self, value: T) -> None:
        if self._state == _PENDING:
            self._result = value
            self._finish(_DONE)

    def set_exception(self, exc: BaseException) -> None:
        if self._state == _PENDING:
            self._exc = exc
            self._finish(_DONE)

    def cancel(self) -> bool:
        if self._state != _PENDING:
            return False
        self._finish(_CANCELLED)
        return True

    def add_done_callback(self, fn: Callable[[Future[T]], Any]) -> None:
        if self._state != _PENDING:
            fn(self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def _finish(self, state: int) -> None:
        self._state = state
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            fn(self)


def completed(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def _cancelled_timer() -> None:
    pass


class TimerHandle:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callback, args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # The handle stays in the heap until its time: drop what the callback holds now.
        self.callback = _cancelled_timer
        self.args = ()

    def __lt__(self, other: TimerHandle) -> bool:
        return self.when < other.when


class _ThreadPool:
    """At most ``size`` worker threads, started on first use.

    The queue is bounded so that a flood of blocking requests becomes
    back-pressure (a RESOURCE_EXHAUSTED for the caller), not unbounded memory.
    """

    def __init__(self, loop: Loop, size: int, max_queue: int) -> None:
        import queue
        import threading

        self._loop = loop
        self._size = size
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._threads: list[threading.Thread] = []
        self._threading = threading

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        import queue

        fut: Future[T] = Future()
        try:
            self._queue.put_nowait((fut, fn, args))
        except queue.Full:
            from ttrpc.status import Code, RPCError

            fut.set_exception(RPCError("blocking-work queue is full", Code.RESOURCE_EXHAUSTED))
            return fut
        if len(self._threads) < self._size and self._queue.qsize() > 0:
            thread = self._threading.Thread(target=self._work, name="ttrpc-pool", daemon=True)
            self._threads.append(thread)
            thread.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args = item
            try:
                value = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                self._loop.call_soon_threadsafe(fut.set_exception, exc)
            else:
                self._loop.call_soon_threadsafe(fut.set_result, value)

    def shutdown(self) -> None:
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except Exception:  # noqa: BLE001 - a full queue: daemon threads die with us
                break


class Loop:
    """A single-threaded reactor; only ``call_soon_threadsafe`` may be used off-thread."""

    def __init__(self, pool_size: int = 4, pool_queue: int = 256) -> None:
        self._selector = selectors.DefaultSelector()
        self._ready: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._timers: list[TimerHandle] = []
        self._compact_at = _COMPACT_MIN
        self._running = False
        self._pool: _ThreadPool | None = None
        self._pool_size = pool_size
        self._pool_queue = pool_queue
        self._signal_handlers: dict[int, Callback] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threadsafe: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._closed = False
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._on_wake, None))
        #: Called with (exception, callback) when a callback raises; replaceable.
        self.exception_handler: Callable[[BaseException, Callback], None] = _report_exception

    # -- fds ------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._update(fd, selectors.EVENT_READ, callback)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._update(fd, selectors.EVENT_WRITE, callback)

    def remove_reader(self, fd: int) -> None:
        self._update(fd, selectors.EVENT_READ, None)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, selectors.EVENT_WRITE, None)

    def _update(self, fd: int, event: int, callback: Callback | None) -> None:
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            if callback is None:
                return
            data = (callback, None) if event == selectors.EVENT_READ else (None, callback)
            self._selector.register(fd, event, data)
            return
        reader, writer = key.data
        if event == selectors.EVENT_READ:
            reader = callback
        else:
            writer = callback
        mask = (selectors.EVENT_READ if reader else 0) | (selectors.EVENT_WRITE if writer else 0)
        if mask:
            self._selector.modify(fd, mask, (reader, writer))
        else:
            self._selector.unregister(fd)

    def watched_fds(self) -> int:
        """How many fds the loop watches (leak checks in tests)."""
        return len(self._selector.get_map())

    # -- callbacks and timers -------------------------------------------------

    def call_soon(self, callback: Callback, *args: Any) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callback, *args: Any) -> None:
        if self._closed:
            return  # a pool thread finishing after close: nobody is left to run it
        self._threadsafe.append((callback, args))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

    def call_later(self, delay: float, callback: Callback, *args: Any) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback, args)
        timers = self._timers
        if len(timers) >= self._compact_at:
            # Cancelled timers stay in the heap until their time: sweep them out
            # now and then, so long timeouts cancelled early cannot pile up.
            timers[:] = [h for h in timers if not h.cancelled]
            heapq.heapify(timers)
            self._compact_at = max(_COMPACT_MIN, 2 * len(timers))
        heapq.heappush(timers, handle)
        return handle

    def time(self) -> float:
        return time.monotonic()

    def run_in_thread(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run a blocking function on the bounded pool; the future completes on the loop."""
        if self._pool is None:
            self._pool = _ThreadPool(self, self._pool_size, self._pool_queue)
        return self._pool.submit(fn, args)

    # -- signals --------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback(signum)`` on the loop when the signal arrives."""
        if not self._signal_handlers:
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signal_handlers[signum] = callback
        signal.signal(signum, _ignore_signal)

    def remove_signal_handler(self, signum: int) -> None:
        if self._signal_handlers.pop(signum, None) is not None:
            signal.signal(signum, signal.SIG_DFL)
        if not self._signal_handlers:
            signal.set_wakeup_fd(-1)

    def _on_wake(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            data = b""
        for byte in data:
            handler = self._signal_handlers.get(byte)
            if handler is not None:
                self._ready.append((handler, (byte,)))
        while self._threadsafe:
            self._ready.append(self._threadsafe.popleft())

    # -- running --------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run_forever(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def run_until(self, fut: Future[T], timeout: float | None = None) -> T:
        """Run until ``fut`` completes (tests and one-shot tools)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("future did not complete in time")
            self.run_once(0.05)
        return fut.result()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout: float | None
        if self._ready or self._threadsafe:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, self._timers[0].when - time.monotonic())
        else:
            timeout = None
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        for key, mask in self._selector.select(timeout):
            reader, writer = key.data
            if mask & selectors.EVENT_READ and reader is not None:
                self._ready.append((reader, ()))
            if mask & selectors.EVENT_WRITE and writer is not None:
                self._ready.append((writer, ()))
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0].when <= now:
            handle = heapq.heappop(timers)
            if not handle.cancelled:
                self._ready.append((handle.callback, handle.args))
        # Run only what is ready now; callbacks queued meanwhile wait a turn,
        # so a busy source cannot starve the selector.
        for _ in range(len(self._ready)):
            callback, args = self._ready.popleft()
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - one bad callback must not stop the loop
                self.exception_handler(exc, callback)

    def close(self) -> None:
        self._closed = True
        for signum in list(self._signal_handlers):
            self.remove_signal_handler(signum)
        if self._pool is not None:
            self._pool.shutdown()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level handler: the wake-up fd carries the signal to the loop."""


def _report_exception(exc: BaseException, callback: Callback) -> None:
    import sys
    import traceback

    print(f"ttrpc loop: callback {callback!r} raised", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
