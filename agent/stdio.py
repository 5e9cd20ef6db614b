"""The agent's side of a container process's stdio: pipes or a pty master, in the loop.

ReadStdout/ReadStderr map onto :meth:`OutputStream.read`, WriteStdin and
CloseStdin onto :class:`InputStream`, TtyWinResize onto :func:`resize_pty`.

Back-pressure, not loss: an :class:`OutputStream` keeps at most ``limit`` bytes
(1 MiB by default); when that is full it stops reading the fd, the pipe (or
pty) fills, and the container blocks in ``write`` until the runtime's
ReadStdout loop catches up. Nothing is ever dropped.

EOF after exit: a pipe stays open while any descendant holds its write end (a
daemon started by the container's process, say), so EOF can be arbitrarily
late. Once the owner reports the exit (:meth:`OutputStream.process_exited`),
EOF is declared when the fd has been readable-but-silent for ``drain_timeout``
seconds (2 s by default). Time spent paused for a slow reader does not count,
so output the process wrote before exiting is never cut off; a lingering
descendant delays EOF by at most ``drain_timeout`` after its last write.

A pty master reports the hangup of the slave as EIO: that is EOF too. The
master fd itself arrives from the OCI runtime over ``--console-socket``:
:class:`ConsoleSocket` listens there and receives it with SCM_RIGHTS.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
import termios
from collections import deque

from agent.errors import FailedPrecondition, InvalidArgument
from ttrpc.loop import Future, Loop, TimerHandle

OUTPUT_LIMIT = 1 << 20
INPUT_LIMIT = 1 << 20
DRAIN_TIMEOUT = 2.0
_READ_SIZE = 65536
_WRITE_SIZE = 65536


class OutputStream:
    """stdout, stderr or a pty master, read into a bounded buffer and served to readers in order."""

    def __init__(
        self,
        loop: Loop,
        fd: int,
        *,
        limit: int = OUTPUT_LIMIT,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.loop = loop
        self.limit = limit
        self.drain_timeout = drain_timeout
        self._fd = fd
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already handed out
        self._size = 0
        self._readers: deque[tuple[int, Future[bytes]]] = deque()
        self._reading = True
        self._exited = False
        self._quiet_since = 0.0  # after the exit: when the fd last gave data or was resumed
        self._drain_timer: TimerHandle | None = None
        #: The most ever buffered at once (never above ``limit``), and the total read.
        self.high_water = 0
        self.total = 0
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)

    # -- state ----------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def paused(self) -> bool:
        """True while reading is stopped because the buffer is full (the writer is back-pressured)."""
        return self._fd >= 0 and not self._reading

    @property
    def eof(self) -> bool:
        """No more data will be read from the fd (the buffer may still hold some)."""
        return self._fd < 0

    @property
    def fd(self) -> int:
        return self._fd

    # -- the reader API -------------------------------------------------------

    def read(self, n: int) -> Future[bytes]:
        """At most ``n`` bytes once some are available; b"" at EOF. Cancel the future to give up."""
        if n <= 0:
            raise InvalidArgument("read length must be positive")
        fut: Future[bytes] = Future()
        if not self._readers and self._size:
            fut.set_result(self._take(n))
            self._resume()
        elif not self._readers and self._fd < 0:
            fut.set_result(b"")
        else:
            entry = (n, fut)
            self._readers.append(entry)
            fut.add_done_callback(lambda f: self._forget(entry))
        return fut

    def _forget(self, entry: tuple[int, Future[bytes]]) -> None:
        if entry[1].cancelled():
            try:
                self._readers.remove(entry)
            except ValueError:
                pass

    def _take(self, n: int) -> bytes:
        """Up to n bytes from the front of the buffer (no copy when a whole chunk fits)."""
        head = self._chunks[0]
        if self._offset == 0 and len(head) <= n and (len(self._chunks) == 1 or len(head) == n):
            self._chunks.popleft()
            self._size -= len(head)
            return head
        parts = []
        want = n
        while want and self._chunks:
            head = self._chunks[0]
            piece = head[self._offset : self._offset + want]
            parts.append(piece)
            want -= len(piece)
            if self._offset + len(piece) == len(head):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset += len(piece)
        data = b"".join(parts)
        self._size -= len(data)
        return data

    def _serve(self) -> None:
        while self._readers and self._size:
            n, fut = self._readers.popleft()
            fut.set_result(self._take(n))
        if self._fd < 0 and not self._size:
            while self._readers:
                self._readers.popleft()[1].set_result(b"")
        self._resume()

    # -- the fd side ----------------------------------------------------------

    def _on_readable(self) -> None:
        if self._fd < 0 or not self._reading:
            return
        room = self.limit - self._size
        try:
            data = os.read(self._fd, min(_READ_SIZE, room))
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a pty master after the slave's hangup; anything else: give up too
        if not data:
            self._close_fd()
            self._serve()
            return
        self._chunks.append(data)
        self._size += len(data)
        self.total += len(data)
        if self._size > self.high_water:
            self.high_water = self._size
        if self._exited:
            self._quiet_since = self.loop.time()
        self._serve()
        if self._size >= self.limit:
            self._reading = False  # back-pressure: the pipe fills, the writer blocks
            self.loop.remove_reader(self._fd)

    def _resume(self) -> None:
        if self._fd >= 0 and not self._reading and self._size < self.limit:
            self._reading = True
            self.loop.add_reader(self._fd, self._on_readable)
            if self._exited:
                self._quiet_since = self.loop.time()  # time spent paused does not count
                self._arm_drain(self.drain_timeout)

    def process_exited(self) -> None:
        """The process is gone: from now on, silence for ``drain_timeout`` counts as EOF."""
        if not self._exited:
            self._exited = True
            self._quiet_since = self.loop.time()
            self._arm_drain(self.drain_timeout)

    def _arm_drain(self, delay: float) -> None:
        if self._drain_timer is None and self._fd >= 0:
            self._drain_timer = self.loop.call_later(delay, self._drain_check)

    def _drain_check(self) -> None:
        """One timer per stream, re-armed for the remainder while data keeps coming."""
        self._drain_timer = None
        if self._fd < 0 or not self._reading:
            return  # EOF already, or paused (resuming re-arms)
        left = self._quiet_since + self.drain_timeout - self.loop.time()
        if left > 0:
            self._arm_drain(left)
            return
        self._close_fd()
        self._serve()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            if self._reading:
                self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def close(self) -> None:
        """Stop now (the process is being removed): buffered data is dropped, readers get b""."""
        self._close_fd()
        self._chunks.clear()
        self._size = 0
        self._offset = 0
        self._serve()


class InputStream:
    """stdin (a pipe, or a dup of the pty master): bounded buffered writes, close after flush."""

    def __init__(self, loop: Loop, fd: int, *, limit: int = INPUT_LIMIT, eof: bytes = b"") -> None:
        self.loop = loop
        self.limit = limit
        self._fd = fd
        self._eof = eof  # written before closing (e.g. the terminal's VEOF for a pty)
        self._buf = bytearray()
        self._waiting: deque[tuple[memoryview, int, Future[int]]] = deque()
        self._writing = False
        self._closing = False
        self._closed: Future[None] = Future()
        os.set_blocking(fd, False)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, data: bytes) -> Future[int]:
        """Queue ``data``; the future gives len(data) once it is buffered or written.

        Empty data closes stdin (WriteStdin's convention). A write that does
        not fit waits for room (the caller is back-pressured); once it has
        started to enter the buffer it completes even if cancelled, so writes
        are never torn. Writing after close, or to a process that closed its
        stdin, fails with FailedPrecondition (bytes already accepted into the
        buffer when the process goes away are lost with it; the writes still
        queued fail).
        """
        fut: Future[int] = Future()
        if not data:
            self.close()
            fut.set_result(0)
            return fut
        if self._closing or self._fd < 0:
            fut.set_exception(FailedPrecondition("stdin is closed"))
            return fut
        view = memoryview(bytes(data))
        if not self._buf and not self._waiting:
            # Nothing queued: write straight away, so a process that closed its
            # stdin fails this very write rather than a later one.
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._fail(exc)
                fut.set_exception(FailedPrecondition(self._reason(exc)))
                return fut
            if not view:
                fut.set_result(len(data))
                return fut
        self._waiting.append((view, len(data), fut))
        self._fill()
        self._flush()
        return fut

    def close(self) -> Future[None]:
        """Close once everything queued so far is written (CloseStdin); the future says when."""
        if not self._closing and self._fd >= 0:
            self._closing = True
            if self._eof:
                self._waiting.append((memoryview(self._eof), len(self._eof), Future()))
                self._fill()
            self._flush()
        return self._closed

    def abort(self, reason: str = "stdin is closed") -> None:
        """Close now, failing queued writes (the process is gone)."""
        self._buf.clear()
        while self._waiting:
            self._waiting.popleft()[2].set_exception(FailedPrecondition(reason))
        self._close_fd()

    def _fill(self) -> None:
        while self._waiting:
            view, total, fut = self._waiting[0]
            if fut.cancelled() and len(view) == total:
                self._waiting.popleft()  # not started: drop it whole
                continue
            room = self.limit - len(self._buf)
            if room <= 0:
                return
            self._buf += view[:room]
            if len(view) > room:
                self._waiting[0] = (view[room:], total, fut)
                return
            self._waiting.popleft()
            fut.set_result(total)

    def _flush(self) -> None:
        try:
            while self._buf and self._fd >= 0:
                written = os.write(self._fd, self._buf[:_WRITE_SIZE])
                del self._buf[:written]
                self._fill()
        except BlockingIOError:
            if not self._writing:
                self._writing = True
                self.loop.add_writer(self._fd, self._flush)
            return
        except OSError as exc:
            self._fail(exc)
            return
        if self._writing and self._fd >= 0:
            self._writing = False
            self.loop.remove_writer(self._fd)
        if self._closing and not self._waiting:
            self._close_fd()

    @staticmethod
    def _reason(exc: OSError) -> str:
        if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
            return "the process closed its stdin"
        return f"stdin write failed: {exc.strerror}"

    def _fail(self, exc: OSError) -> None:
        self.abort(self._reason(exc))

    def _close_fd(self) -> None:
        if self._fd >= 0:
            if self._writing:
                self.loop.remove_writer(self._fd)
                self._writing = False
            os.close(self._fd)
            self._fd = -1
        self._closed.set_result(None)


def resize_pty(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on a pty master (TtyWinResize); the kernel sends SIGWINCH to the foreground."""
    if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
        raise InvalidArgument(f"bad window size {rows}x{cols}")
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError as exc:
        raise FailedPrecondition(f"cannot resize terminal: {exc.strerror}") from exc


class ProcessStdio:
    """The agent's ends of one process's stdio, plus the ends to hand to the runtime.

    Pipes: ``child_fds`` are (stdin, stdout, stderr) for the runtime (pass them
    to :func:`agent.process.spawn` as stdin/stdout/stderr), then call
    :meth:`close_child_fds`. Pty: built from the master fd the console socket
    received; stdout reads the master, stdin writes a dup of it, no stderr.
    """

    def __init__(
        self,
        stdout: OutputStream,
        stderr: OutputStream | None,
        stdin: InputStream | None,
        child_fds: tuple[int, int, int] | None = None,
        tty: bool = False,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.child_fds = child_fds
        self.tty = tty

    @classmethod
    def pipes(
        cls,
        loop: Loop,
        *,
        stdin: bool = True,
        limit: int = OUTPUT_LIMIT,
        drain_timeout: float = DRAIN_TIMEOUT,
        pipe_size: int = 0,
    ) -> ProcessStdio:
        """Three pipes (stdin a /dev/null-like closed pipe when ``stdin`` is False)."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if pipe_size:
            for fd in (in_w, out_w, err_w):
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, pipe_size)
                except OSError:
                    pass  # above /proc/sys/fs/pipe-max-size: keep the default
        stdin_stream: InputStream | None = None
        if stdin:
            stdin_stream = InputStream(loop, in_w)
        else:
            os.close(in_w)  # the process reads EOF at once
        return cls(
            OutputStream(loop, out_r, limit=limit, drain_timeout=drain_timeout),
            OutputStream(loop, err_r, limit=limit, drain_timeout=drain_timeout),
            stdin_stream,
            child_fds=(in_r, out_w, err_w),
        )

    @classmethod
    def pty(
        cls,
        loop: Loop,
        master_fd: int,
        *,
        limit: int = OUTPUT_LIMIT,
        drain_timeout: float = DRAIN_TIMEOUT,
        eof: bytes = b"",
    ) -> ProcessStdio:
        """Streams over a pty master (ownership of ``master_fd`` passes to the result)."""
        stdin = InputStream(loop, fcntl.fcntl(master_fd, fcntl.F_DUPFD_CLOEXEC, 3), eof=eof)
        return cls(
            OutputStream(loop, master_fd, limit=limit, drain_timeout=drain_timeout),
            None,
            stdin,
            tty=True,
        )

    def close_child_fds(self) -> None:
        """Drop our copies of the runtime's ends once it has them (else EOF never comes)."""
        for fd in self.child_fds or ():
            os.close(fd)
        self.child_fds = None

    def resize(self, rows: int, cols: int) -> None:
        """TtyWinResize: on the master, through whichever of our two fds is still open."""
        fd = self.stdout.fd
        if fd < 0 and self.stdin is not None:
            fd = self.stdin.fd
        if not self.tty or fd < 0:
            raise FailedPrecondition("the process has no terminal")
        resize_pty(fd, rows, cols)

    def process_exited(self) -> None:
        """Start the bounded drain on the output streams."""
        self.stdout.process_exited()
        if self.stderr is not None:
            self.stderr.process_exited()

    def close(self) -> None:
        """Release everything (RemoveContainer / process removal)."""
        self.close_child_fds()
        self.stdout.close()
        if self.stderr is not None:
            self.stderr.close()
        if self.stdin is not None:
            self.stdin.abort()


class ConsoleSocket:
    """A unix socket at ``path`` for ``runtime create --console-socket``: receives the pty master.

    Accepts connections (non-blocking, in the loop) until one carries an fd
    with SCM_RIGHTS; :meth:`receive` then yields it (the caller owns it), and
    the socket is closed and its path removed. Call :meth:`close` if the
    runtime failed and will never connect.
    """

    def __init__(self, loop: Loop, path: str) -> None:
        self.loop = loop
        self.path = path
        self.pty_name = ""  # what the runtime sent along (runc: the slave's path)
        self._result: Future[int] = Future()
        self._conns: dict[int, socket.socket] = {}
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(path):
                os.unlink(path)
            self._sock.bind(path)
            os.chmod(path, 0o600)
            self._sock.listen(4)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._on_accept)
        self._result.add_done_callback(lambda _f: self.close())

    def receive(self) -> Future[int]:
        """The master fd, once the runtime sends it (cancel the future to give up)."""
        return self._result

    def _on_accept(self) -> None:
        if self._sock is None:
            return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._conns[conn.fileno()] = conn
        self.loop.add_reader(conn.fileno(), lambda: self._on_message(conn))

    def _on_message(self, conn: socket.socket) -> None:
        fds = array.array("i")
        try:
            data, ancdata, _flags, _addr = conn.recvmsg(
                4096, socket.CMSG_SPACE(16 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fds:
            for extra in fds[1:]:
                os.close(extra)
            self.pty_name = data.decode("utf-8", "replace")
            self._result.set_result(fds[0])
            if self._result.cancelled():
                os.close(fds[0])
            return
        if not data:  # closed without sending an fd: wait for another connection
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if self._conns.pop(conn.fileno(), None) is not None:
            self.loop.remove_reader(conn.fileno())
            conn.close()

    def close(self) -> None:
        """Stop listening and remove the path; a pending receive is cancelled."""
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._result.cancel()
