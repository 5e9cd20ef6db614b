"""Sequential steps on the event loop, written as generators that yield futures.

Why: creating a container is a chain of waits (mounts on a worker thread, the
runtime's ``create``, the pty arriving on the console socket, the pid file),
and the loop only has plain callback futures. Written as callbacks that chain
is hard to read and easy to get wrong on the error paths. A generator that
``yield``\\s each future and gets its result back (or its exception raised at
the ``yield``) reads like blocking code, keeps ``try/finally`` cleanups, and
still never blocks the loop::

    @task
    def create(self):
        path = yield loop.run_in_thread(prepare)
        run = yield spawn(loop, reaper, argv)
        return run.pid

Cancelling a task's future does not interrupt the generator: the steps that
change state (runtime calls, mounts) always run to their end, so the agent's
view never diverges from the kernel's. Futures complete on the loop thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from ttrpc.loop import CancelledError, Future

T = TypeVar("T")
U = TypeVar("U")
Steps = Generator[Future[Any], Any, T]


def run(gen: Steps[T]) -> Future[T]:
    """Drive ``gen`` to its end; the future gives its return value or its exception."""
    result: Future[T] = Future()

    def step(value: Any, exc: BaseException | None) -> None:
        while True:  # a trampoline: futures already done are consumed without recursion
            try:
                fut = gen.send(value) if exc is None else gen.throw(exc)
            except StopIteration as stop:
                result.set_result(stop.value)
                return
            except BaseException as error:  # noqa: BLE001 - handed to the task's future
                result.set_exception(error)
                return
            if not isinstance(fut, Future):
                value, exc = None, TypeError(f"a task yielded {type(fut).__name__}, not a Future")
                continue
            if not fut.done():
                fut.add_done_callback(lambda f: step(*outcome(f)))
                return
            value, exc = outcome(fut)

    step(None, None)
    return result


def outcome(fut: Future[Any]) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, exception) of a done future; cancelled is CancelledError."""
    if fut.cancelled():
        return None, CancelledError()
    exc = fut.exception()
    return (None, exc) if exc is not None else (fut.result(), None)


def task(fn: Callable[..., Steps[T]]) -> Callable[..., Future[T]]:
    """Decorator: calling ``fn`` runs it as a task and returns its future."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Future[T]:
        try:
            gen = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - a plain function raising early
            fut: Future[T] = Future()
            fut.set_exception(exc)
            return fut
        return run(gen)

    return wrapper


def then(fut: Future[T], fn: Callable[[T], U]) -> Future[U]:
    """A future of ``fn(result)``; exceptions and cancellation pass through."""
    out: Future[U] = Future()

    def done(f: Future[T]) -> None:
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            out.set_result(fn(f.result()))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's future
            out.set_exception(error)

    fut.add_done_callback(done)
    return out


def sleep(loop: Any, delay: float) -> Future[None]:
    """A future that completes after ``delay`` seconds (for polling steps in a task)."""
    fut: Future[None] = Future()
    loop.call_later(delay, fut.set_result, None)
    return fut


def with_timeout(
    loop: Any, fut: Future[T], timeout: float | None, error: Callable[[], Exception]
) -> Future[T]:
    """``fut``, or ``error()`` after ``timeout`` seconds (``fut`` itself carries on)."""
    if timeout is None or fut.done():
        return fut
    out: Future[T] = Future()

    def expire() -> None:
        if not out.done():
            out.set_exception(error())

    timer = loop.call_later(timeout, expire)

    def done(f: Future[T]) -> None:
        timer.cancel()
        value, exc = outcome(f)
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(value)

    fut.add_done_callback(done)
    return out
