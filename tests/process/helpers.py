"""Shared pieces for the process tests: a callback-driven stream reader and polling helpers."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable

from agent.stdio import OutputStream
from ttrpc.loop import Future, Loop

PY = sys.executable

# Writes N random bytes to stdout in 64 KiB pieces, then their SHA-256 to stderr.
RANDOM_WRITER = r"""
import hashlib, os, sys
left = int(sys.argv[1])
h = hashlib.sha256()
out = sys.stdout.buffer
while left:
    block = os.urandom(min(65536, left))
    h.update(block)
    out.write(block)
    left -= len(block)
out.flush()
sys.stderr.write(h.hexdigest())
"""


def wait_for(loop: Loop, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the loop until ``condition()`` holds (generous timeout: a noisy machine)."""
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        loop.run_once(0.02)


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    return not os.path.exists(f"/proc/{pid}")


def state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat ('Z' for a zombie), '' if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


class Drain:
    """Reads a stream to EOF with read(n) calls issued one after another, like ReadStdout.

    Each next read is queued with call_soon (a new RPC, not a recursion). With
    ``pause_every`` the reader stops for ``pause`` seconds after each such
    many bytes, and records whether the stream was back-pressuring then.
    """

    def __init__(
        self,
        loop: Loop,
        stream: OutputStream,
        n: int,
        *,
        pause_every: int = 0,
        pause: float = 0.0,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.stream = stream
        self.n = n
        self.pause_every = pause_every
        self.pause = pause
        self.on_pause = on_pause
        self.sha = hashlib.sha256()
        self.total = 0
        self.reads = 0
        self.max_buffered = 0
        self.data: list[bytes] | None = None
        self.done: Future[str] = Future()

    def keep(self) -> Drain:
        self.data = []
        return self

    def start(self) -> Drain:
        self.loop.call_soon(self._next)
        return self

    def _next(self) -> None:
        self.stream.read(self.n).add_done_callback(self._got)

    def _got(self, fut: Future[bytes]) -> None:
        try:
            data = fut.result()
            assert len(data) <= self.n
        except BaseException as exc:  # noqa: BLE001 - surfaced through done
            self.done.set_exception(exc)
            return
        self.max_buffered = max(self.max_buffered, self.stream.buffered)
        if not data:
            self.done.set_result(self.sha.hexdigest())
            return
        self.reads += 1
        self.sha.update(data)
        if self.data is not None:
            self.data.append(data)
        before = self.total
        self.total += len(data)
        if self.pause_every and before // self.pause_every != self.total // self.pause_every:
            self.loop.call_later(self.pause, self._after_pause)
        else:
            self.loop.call_soon(self._next)

    def _after_pause(self) -> None:
        if self.on_pause is not None:
            self.on_pause()
        self._next()

    def bytes(self) -> bytes:
        assert self.data is not None
        return b"".join(self.data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
