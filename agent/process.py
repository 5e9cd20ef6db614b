"""Run a short-lived child (the OCI runtime CLI, hooks, iptables) from the event loop.

The child is started with ``os.posix_spawn`` (vfork+exec in glibc: cheap, and
safe in a process that has threads), its stdout/stderr pipes are registered in
the loop, and its exit comes from the one :class:`~agent.reaper.Reaper`; nothing
here ever calls ``wait``. The result completes once both the exit and EOF on the
captured pipes have arrived, so callers see all the output.

Capture is bounded: at most ``capture_limit`` bytes (1 MiB by default) are
kept per stream, the rest is read and counted but dropped, so a chatty child
can neither fill our memory nor block on a full pipe. A child that leaves a
descendant holding its pipes open (a daemonising tool) would delay EOF forever,
so after the exit EOF is awaited for at most ``eof_grace`` seconds.

posix_spawn cannot change directory, so a ``cwd`` request falls back to
``subprocess.Popen`` used only as a launcher: its wait/poll are never called
and it is marked finished when the reaper reports the exit, so it never
collects (steals) an exit status itself.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from agent.errors import DeadlineExceeded, Internal, NotFound
from agent.reaper import ExitStatus, Reaper
from ttrpc.loop import Future, Loop, TimerHandle

DEVNULL = -3  # stdin/stdout/stderr: /dev/null (the value subprocess uses)
CAPTURE_LIMIT = 1 << 20
EOF_GRACE = 1.0
_READ_SIZE = 65536
# Python ignores SIGPIPE and SIGXFSZ, and we may have inherited other ignored
# signals: a child starts with the default action for every classic signal.
_DEFAULT_SIGNALS = tuple(s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP))


class CompletedRun(NamedTuple):
    """A finished child: its exit and what it printed (each capped at ``capture_limit``)."""

    argv: tuple[str, ...]
    pid: int
    exit: ExitStatus
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0  # bytes read past the capture limit and discarded
    stderr_dropped: int = 0

    @property
    def returncode(self) -> int:
        return self.exit.code

    def check(self) -> CompletedRun:
        """Return self if the child exited 0, else raise Internal with the tail of its stderr."""
        if self.exit.code != 0:
            detail = _tail(self.stderr) or _tail(self.stdout)
            raise Internal(f"{self.argv[0]} exited with {self.exit.code}: {detail}")
        return self


def _tail(data: bytes, limit: int = 2048) -> str:
    return data[-limit:].decode("utf-8", "replace").strip()


class _Capture:
    """One captured pipe: non-blocking reads in the loop, keep the first ``limit`` bytes."""

    __slots__ = ("fd", "chunks", "size", "dropped", "limit")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.chunks: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self.limit = limit

    def read(self) -> bool:
        """Read what is available; True at EOF."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        room = self.limit - self.size
        if room >= len(data):
            self.chunks.append(data)
            self.size += len(data)
        else:
            if room > 0:
                self.chunks.append(data[:room])
                self.size += room
            self.dropped += len(data) - max(room, 0)
        return False

    def value(self) -> bytes:
        return b"".join(self.chunks)


class _Run:
    """The state of one spawned child until its result is delivered."""

    def __init__(self, loop: Loop, argv: Sequence[str], eof_grace: float) -> None:
        self.loop = loop
        self.argv = tuple(argv)
        self.eof_grace = eof_grace
        self.result: Future[CompletedRun] = Future()
        self.pid = 0
        self.captures: dict[str, _Capture] = {}
        self.open_captures = 0
        self.exit: ExitStatus | None = None
        self.input: memoryview | None = None
        self.input_fd = -1
        self.timed_out: float | None = None
        self.timers: list[TimerHandle] = []
        self.launcher: Any = None  # the Popen object on the cwd path, kept until the exit
        self.finished = False

    # -- pipes ----------------------------------------------------------------

    def watch_capture(self, name: str, fd: int, limit: int) -> None:
        os.set_blocking(fd, False)
        capture = _Capture(fd, limit)
        self.captures[name] = capture
        self.open_captures += 1
        self.loop.add_reader(fd, lambda: self._on_readable(capture))

    def _on_readable(self, capture: _Capture) -> None:
        if capture.fd < 0 or not capture.read():
            return
        self._close_capture(capture)
        self._maybe_finish()

    def _close_capture(self, capture: _Capture) -> None:
        if capture.fd >= 0:
            self.loop.remove_reader(capture.fd)
            os.close(capture.fd)
            capture.fd = -1
            self.open_captures -= 1

    def feed_input(self, fd: int, data: bytes) -> None:
        os.set_blocking(fd, False)
        self.input_fd = fd
        self.input = memoryview(data)
        self._on_writable()

    def _on_writable(self) -> None:
        if self.input_fd < 0 or self.input is None:
            return
        try:
            while self.input:
                self.input = self.input[os.write(self.input_fd, self.input[:_READ_SIZE]) :]
        except BlockingIOError:
            self.loop.add_writer(self.input_fd, self._on_writable)
            return
        except OSError:
            pass  # EPIPE: the child does not want (more) input
        self._close_input()

    def _close_input(self) -> None:
        if self.input_fd >= 0:
            self.loop.remove_writer(self.input_fd)
            os.close(self.input_fd)
            self.input_fd = -1
            self.input = None

    # -- exit, timeout, cancel ------------------------------------------------

    def on_exit(self, fut: Future[ExitStatus]) -> None:
        if fut.cancelled():
            return
        if self.launcher is not None:
            self.launcher.returncode = fut.result().code  # so Popen never polls the pid
            self.launcher = None
        if self.finished:
            return
        self.exit = fut.result()
        if self.open_captures:
            self.timers.append(self.loop.call_later(self.eof_grace, self._grace_over))
        self._maybe_finish()

    def _grace_over(self) -> None:
        for capture in self.captures.values():
            if capture.fd >= 0:
                capture.read()  # whatever is there now, then give up on EOF
                self._close_capture(capture)
        self._maybe_finish()

    def on_timeout(self, timeout: float) -> None:
        if self.exit is None and not self.finished:
            self.timed_out = timeout
            self.kill()

    def kill(self) -> None:
        """SIGKILL the child if the reaper has not collected it (its pid cannot be reused before)."""
        if self.exit is None and self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def on_result_done(self, fut: Future[CompletedRun]) -> None:
        if fut.cancelled() and not self.finished:
            self.kill()  # the caller gave up: like Go's exec.CommandContext
            self._cleanup()

    def _maybe_finish(self) -> None:
        if self.finished or self.exit is None or self.open_captures:
            return
        self._cleanup()
        out = self.captures.get("stdout")
        err = self.captures.get("stderr")
        run = CompletedRun(
            argv=self.argv,
            pid=self.pid,
            exit=self.exit,
            stdout=out.value() if out else b"",
            stderr=err.value() if err else b"",
            stdout_dropped=out.dropped if out else 0,
            stderr_dropped=err.dropped if err else 0,
        )
        if self.timed_out is not None:
            exc = DeadlineExceeded(f"{self.argv[0]} did not finish in {self.timed_out:g}s (killed)")
            exc.run = run  # type: ignore[attr-defined]
            self.result.set_exception(exc)
        else:
            self.result.set_result(run)

    def _cleanup(self) -> None:
        self.finished = True
        for timer in self.timers:
            timer.cancel()
        for capture in self.captures.values():
            self._close_capture(capture)
        self._close_input()


def spawn(
    loop: Loop,
    reaper: Reaper,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | int | None = DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    capture_output: bool = True,
    pass_fds: Sequence[int] = (),
    timeout: float | None = None,
    capture_limit: int = CAPTURE_LIMIT,
    eof_grace: float = EOF_GRACE,
    start_new_session: bool = False,
) -> Future[CompletedRun]:
    """Start ``argv`` and return a future for its :class:`CompletedRun` (loop thread only).

    ``stdin``: bytes (fed through a pipe, then closed), an fd, ``DEVNULL`` or
    None (inherit ours). ``stdout``/``stderr``: an fd, ``DEVNULL``, or None,
    which means captured when ``capture_output`` else inherited. A child
    handed fds meant for a long-lived process (``runtime create`` without a
    terminal) must get them as ``stdout``/``stderr``, never be captured.
    ``timeout`` SIGKILLs the child and fails with DeadlineExceeded (the partial
    CompletedRun is on the exception's ``run``). Cancelling the future kills the
    child. A missing program fails with NotFound, other start errors Internal.
    """
    if not reaper.installed:
        raise RuntimeError("spawn() needs an installed Reaper to collect the exit")
    run = _Run(loop, argv, eof_grace)
    parent_fds: list[int] = []  # our ends, owned by ``run`` once the child started
    child_fds: list[int] = []  # the child's ends, closed here once it started
    try:
        targets: list[int | None] = [None, None, None]
        if isinstance(stdin, bytes | bytearray | memoryview):
            r, w = _pipe()
            child_fds.append(r)
            parent_fds.append(w)
            targets[0] = r
        else:
            targets[0] = stdin
        for index, given in enumerate((stdout, stderr), start=1):
            if given is None and capture_output:
                r, w = _pipe()
                child_fds.append(w)
                parent_fds.append(r)
                targets[index] = w
            else:
                targets[index] = given
        mark = reaper.mark()
        run.pid = _start(run, argv, env, cwd, targets, pass_fds, start_new_session)
    except OSError as exc:
        for fd in parent_fds + child_fds:
            os.close(fd)
        fut: Future[CompletedRun] = Future()
        name = argv[0] if argv else "?"
        cls = NotFound if exc.errno == errno.ENOENT else Internal
        fut.set_exception(cls(f"cannot start {name}: {exc.strerror or exc}"))
        return fut
    for fd in child_fds:
        os.close(fd)
    # Same loop turn as the spawn: the reaper cannot have collected the exit yet.
    reaper.watch(run.pid, since=mark).add_done_callback(run.on_exit)
    pipes = iter(parent_fds)
    if isinstance(stdin, bytes | bytearray | memoryview):
        run.feed_input(next(pipes), bytes(stdin))
    for name, given in (("stdout", stdout), ("stderr", stderr)):
        if given is None and capture_output:
            run.watch_capture(name, next(pipes), capture_limit)
    if timeout is not None:
        run.timers.append(loop.call_later(timeout, run.on_timeout, timeout))
    run.result.add_done_callback(run.on_result_done)
    return run.result


def _pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose fds are >= 3, so dup2 onto 0..2 can never clobber one."""
    r, w = os.pipe2(os.O_CLOEXEC)
    return _above_stdio(r), _above_stdio(w)


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return new


def _start(
    run: _Run,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    targets: list[int | None],
    pass_fds: Sequence[int],
    start_new_session: bool,
) -> int:
    if cwd is not None:
        return _start_with_popen(run, argv, env, cwd, targets, pass_fds, start_new_session)
    actions: list[tuple[Any, ...]] = []
    for target, source in enumerate(targets):
        if source == DEVNULL:
            flags = os.O_RDONLY if target == 0 else os.O_WRONLY
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, flags, 0))
        elif source is not None:
            actions.append((os.POSIX_SPAWN_DUP2, source, target))
    for fd in pass_fds:
        actions.append((os.POSIX_SPAWN_DUP2, fd, fd))  # dup2 onto itself clears FD_CLOEXEC (glibc)
    spawner = os.posix_spawnp if "/" not in argv[0] else os.posix_spawn
    return spawner(
        argv[0],
        list(argv),
        dict(os.environ if env is None else env),
        file_actions=actions,
        setsigmask=(),
        setsigdef=_DEFAULT_SIGNALS,
        setsid=start_new_session,
    )


def _start_with_popen(
    run: _Run,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str,
    targets: list[int | None],
    pass_fds: Sequence[int],
    start_new_session: bool,
) -> int:
    import subprocess

    def fd(value: int | None) -> int | None:
        return subprocess.DEVNULL if value == DEVNULL else value

    proc = subprocess.Popen(
        list(argv),
        stdin=fd(targets[0]),
        stdout=fd(targets[1]),
        stderr=fd(targets[2]),
        env=None if env is None else dict(env),
        cwd=cwd,
        pass_fds=tuple(pass_fds),
        start_new_session=start_new_session,
    )
    run.launcher = proc  # referenced until the exit, so its __del__ never queues it for polling
    return proc.pid


def run_from_thread(
    loop: Loop, reaper: Reaper, argv: Sequence[str], *, wait: float | None = None, **kwargs: Any
) -> CompletedRun:
    """Blocking form of :func:`spawn` for code running on a worker thread (``loop.run_in_thread``).

    The spawn itself happens on the loop thread; this thread waits for the
    result (at most ``wait`` seconds, else DeadlineExceeded; pass ``timeout``
    to also kill the child). Calling it on the loop thread would deadlock, so
    that raises RuntimeError. Before the loop and reaper run (early init), plain
    ``subprocess.run`` is fine: then nobody else collects exits.
    """
    if threading.get_ident() == reaper.thread_id:
        raise RuntimeError("run_from_thread() called on the loop thread: use spawn()")
    done = threading.Event()
    box: list[Future[CompletedRun]] = []

    def start() -> None:
        try:
            fut = spawn(loop, reaper, argv, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            fut = Future()
            fut.set_exception(exc)
        box.append(fut)
        fut.add_done_callback(lambda _f: done.set())

    loop.call_soon_threadsafe(start)
    if not done.wait(wait):
        if box:
            loop.call_soon_threadsafe(box[0].cancel)
        raise DeadlineExceeded(f"{argv[0]} did not finish in {wait:g}s")
    return box[0].result()
