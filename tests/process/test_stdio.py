"""Container stdio: bounded buffers with back-pressure, pty masters, stdin, the console socket."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import termios
import time
import tty

import pytest

from agent.errors import FailedPrecondition
from agent.process import CompletedRun, spawn
from agent.reaper import Reaper
from agent.stdio import ConsoleSocket, InputStream, OutputStream, ProcessStdio
from tests.process.helpers import PY, RANDOM_WRITER, Drain, sha256, wait_for
from ttrpc.loop import Future, Loop

MiB = 1 << 20


def start_with(loop: Loop, reaper: Reaper, stdio: ProcessStdio, argv: list[str]) -> Future[CompletedRun]:
    """Start a process on the pipes (as ``runtime create`` would) and begin the drain at its exit."""
    assert stdio.child_fds is not None
    child_in, child_out, child_err = stdio.child_fds
    fut = spawn(loop, reaper, argv, stdin=child_in, stdout=child_out, stderr=child_err)
    stdio.close_child_fds()
    fut.add_done_callback(lambda _f: stdio.process_exited())
    return fut


class Watch:
    """Records, at each reader pause, whether the stream was back-pressuring a live writer."""

    def __init__(self, stream: OutputStream, proc: Future[CompletedRun]) -> None:
        self.stream, self.proc, self.seen = stream, proc, 0

    def __call__(self) -> None:
        if self.stream.paused and not self.proc.done():
            self.seen += 1


def test_16mib_through_pipes_with_a_slow_reader(loop: Loop, reaper: Reaper) -> None:
    """The shell pipeline of the brief: bytes and hash arrive intact; the writer was held back."""
    stdio = ProcessStdio.pipes(loop, stdin=False, limit=MiB)
    proc = start_with(loop, reaper, stdio, ["bash", "-c", "head -c 16M /dev/urandom | tee >(sha256sum >&2)"])
    watch = Watch(stdio.stdout, proc)
    out = Drain(loop, stdio.stdout, 32768, pause_every=4 * MiB, pause=0.4, on_pause=watch).start()
    assert stdio.stderr is not None
    err = Drain(loop, stdio.stderr, 32768).keep().start()
    digest = loop.run_until(out.done, timeout=120)
    loop.run_until(err.done, timeout=60)
    assert out.total == 16 * MiB
    assert err.bytes().split()[0].decode() == digest
    assert stdio.stdout.high_water <= MiB and out.max_buffered <= MiB
    assert watch.seen >= 1, "the writer was never back-pressured"
    assert loop.run_until(proc, timeout=60).returncode == 0
    stdio.close()


def test_two_concurrent_readers_get_every_byte_once_in_order(loop: Loop, reaper: Reaper) -> None:
    """Readers are served in the order they asked; together they see the stream exactly."""
    stdio = ProcessStdio.pipes(loop, stdin=False, limit=256 * 1024)
    proc = start_with(loop, reaper, stdio, [PY, "-c", RANDOM_WRITER, str(4 * MiB)])
    pieces: list[bytes] = []
    done: list[Future[None]] = [Future(), Future()]

    def reader(index: int, n: int) -> None:
        def got(fut: Future[bytes]) -> None:
            data = fut.result()
            if not data:
                done[index].set_result(None)
                return
            pieces.append(data)  # completion order is stream order
            loop.call_soon(reader, index, n)

        stdio.stdout.read(n).add_done_callback(got)

    reader(0, 32768)
    reader(1, 1000)
    for fut in done:
        loop.run_until(fut, timeout=120)
    assert stdio.stderr is not None
    err = Drain(loop, stdio.stderr, 4096).keep().start()
    loop.run_until(err.done, timeout=60)
    assert sha256(b"".join(pieces)) == err.bytes().decode()
    assert sum(len(p) for p in pieces) == 4 * MiB
    loop.run_until(proc, timeout=60)
    stdio.close()


def test_16mib_through_a_pty(loop: Loop, reaper: Reaper) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # no \n -> \r\n, no echo, no line discipline: bytes pass unchanged
    err_r, err_w = os.pipe()
    proc = spawn(
        loop, reaper, [PY, "-c", RANDOM_WRITER, str(16 * MiB)], stdin=slave, stdout=slave, stderr=err_w
    )
    os.close(slave)
    os.close(err_w)
    stdio = ProcessStdio.pty(loop, master, limit=MiB)
    stderr = OutputStream(loop, err_r)
    proc.add_done_callback(lambda _f: (stdio.process_exited(), stderr.process_exited()))
    watch = Watch(stdio.stdout, proc)
    out = Drain(loop, stdio.stdout, 32768, pause_every=4 * MiB, pause=0.4, on_pause=watch).start()
    err = Drain(loop, stderr, 4096).keep().start()
    digest = loop.run_until(out.done, timeout=180)  # EIO at the slave's hangup reads as EOF
    loop.run_until(err.done, timeout=60)
    assert out.total == 16 * MiB and digest == err.bytes().decode()
    assert stdio.stdout.high_water <= MiB
    assert watch.seen >= 1, "the writer was never back-pressured"
    assert loop.run_until(proc, timeout=60).returncode == 0
    stdio.close()
    stderr.close()


def test_exit_does_not_cut_off_a_slow_readers_data(loop: Loop, reaper: Reaper) -> None:
    """The drain clock only runs while we read: output left in the pipe at exit is all delivered."""
    size = 128 * 1024 + 40_000  # fills our buffer; the rest waits in the pipe when the writer exits
    stdio = ProcessStdio.pipes(loop, stdin=False, limit=128 * 1024, drain_timeout=0.2)
    proc = start_with(loop, reaper, stdio, [PY, "-c", RANDOM_WRITER, str(size)])
    wait_for(loop, lambda: proc.done() and stdio.stdout.paused)
    idle_until = loop.time() + 0.8  # well past drain_timeout, nobody reading
    wait_for(loop, lambda: loop.time() > idle_until)
    assert not stdio.stdout.eof
    out = Drain(loop, stdio.stdout, 8192, pause_every=64 * 1024, pause=0.1).start()
    assert stdio.stderr is not None
    err = Drain(loop, stdio.stderr, 4096).keep().start()
    loop.run_until(out.done, timeout=60)
    loop.run_until(err.done, timeout=60)
    assert out.total == size and out.sha.hexdigest() == err.bytes().decode()
    stdio.close()


def test_a_grandchild_holding_stdout_does_not_hang_the_reader(loop: Loop, reaper: Reaper) -> None:
    stdio = ProcessStdio.pipes(loop, stdin=False, drain_timeout=0.5)
    proc = start_with(loop, reaper, stdio, ["sh", "-c", "sleep 60 & echo $!; echo bye"])
    out = Drain(loop, stdio.stdout, 4096).keep().start()
    started = time.monotonic()
    loop.run_until(out.done, timeout=60)
    assert time.monotonic() - started < 30  # not the 60 s of the grandchild
    assert proc.done() and stdio.stdout.eof
    daemon, bye = out.bytes().split()
    assert bye == b"bye"
    exited = reaper.watch(int(daemon))
    os.kill(int(daemon), signal.SIGKILL)
    loop.run_until(exited, timeout=30)
    stdio.close()


def test_stdin_write_then_close_reaches_cat(loop: Loop, reaper: Reaper) -> None:
    stdio = ProcessStdio.pipes(loop, stdin=True)
    assert stdio.stdin is not None
    stdin = InputStream(loop, os.dup(stdio.stdin.fd), limit=64 * 1024)  # a small bound: writes wait
    stdio.stdin.abort()
    proc = start_with(loop, reaper, stdio, ["cat"])
    out = Drain(loop, stdio.stdout, 32768).keep().start()
    data = os.urandom(3 * MiB)
    writes = [stdin.write(data[i : i + 200_000]) for i in range(0, len(data), 200_000)]
    assert stdin.buffered <= 64 * 1024
    assert not writes[-1].done()  # back-pressure on the caller
    closed = stdin.write(b"")  # WriteStdin with empty data = CloseStdin, after the queued data
    for i, fut in enumerate(writes):
        assert loop.run_until(fut, timeout=60) == len(data[i * 200_000 : (i + 1) * 200_000])
    assert loop.run_until(closed, timeout=60) == 0
    loop.run_until(out.done, timeout=60)
    assert out.bytes() == data
    assert loop.run_until(proc, timeout=60).returncode == 0  # cat saw EOF
    assert stdin.closed
    with pytest.raises(FailedPrecondition, match="stdin is closed"):
        stdin.write(b"late").result()
    stdio.close()


def test_stdin_to_a_process_that_closed_it_fails(loop: Loop, reaper: Reaper) -> None:
    stdio = ProcessStdio.pipes(loop, stdin=True)
    proc = start_with(loop, reaper, stdio, ["sh", "-c", "exec 0<&-; sleep 0.1"])
    loop.run_until(proc, timeout=60)
    assert stdio.stdin is not None
    with pytest.raises(FailedPrecondition, match="closed its stdin"):
        loop.run_until(stdio.stdin.write(b"x" * 100), timeout=30)
    stdio.close()


def test_cancelled_reader_is_removed_and_eof_reaches_everyone(loop: Loop) -> None:
    r, w = os.pipe()
    stream = OutputStream(loop, r)
    first, second, third = stream.read(10), stream.read(10), stream.read(10)
    first.cancel()
    os.write(w, b"abc")
    loop.run_until(second, timeout=10)
    assert second.result() == b"abc" and not third.done()
    os.close(w)
    assert loop.run_until(third, timeout=10) == b""
    assert stream.read(5).result() == b""  # EOF stays EOF
    stream.close()


def test_read_returns_at_most_n_and_keeps_order(loop: Loop) -> None:
    r, w = os.pipe()
    stream = OutputStream(loop, r)
    os.write(w, b"0123456789")
    os.close(w)
    wait_for(loop, lambda: stream.eof)
    assert [stream.read(4).result() for _ in range(4)] == [b"0123", b"4567", b"89", b""]
    stream.close()


def test_resize_sets_the_window_size(loop: Loop) -> None:
    master, slave = os.openpty()
    stdio = ProcessStdio.pty(loop, master)
    try:
        stdio.resize(40, 132)
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        assert (rows, cols) == (40, 132)
    finally:
        os.close(slave)
        stdio.close()
    pipes = ProcessStdio.pipes(loop)
    with pytest.raises(FailedPrecondition, match="no terminal"):
        pipes.resize(1, 1)
    pipes.close()


SEND_PTY = r"""
import os, socket, sys, tty
master, slave = os.openpty()
tty.setraw(slave)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[1])
    socket.send_fds(s, [os.ttyname(slave).encode()], [master])
os.close(master)
os.write(slave, b"hello through the console socket")
"""


def test_console_socket_receives_a_pty_master(loop: Loop, reaper: Reaper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "console.sock")
    console = ConsoleSocket(loop, path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    helper = spawn(loop, reaper, [PY, "-c", SEND_PTY, path])
    master = loop.run_until(console.receive(), timeout=60)
    assert not os.path.exists(path) and console.pty_name.startswith("/dev/pts/")
    assert fcntl.fcntl(master, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    stdio = ProcessStdio.pty(loop, master)
    helper.add_done_callback(lambda _f: stdio.process_exited())
    out = Drain(loop, stdio.stdout, 1024).keep().start()
    loop.run_until(out.done, timeout=60)
    assert out.bytes() == b"hello through the console socket"
    assert loop.run_until(helper, timeout=60).check()
    stdio.close()


def test_console_socket_ignores_a_connection_without_fd_and_can_be_closed(loop: Loop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "c.sock")
    console = ConsoleSocket(loop, path)
    with socket.socket(socket.AF_UNIX) as peer:
        peer.connect(path)
        peer.sendall(b"no fd here")
    for _ in range(10):
        loop.run_once(0.01)
    assert not console.receive().done()
    console.close()
    assert console.receive().cancelled() and not os.path.exists(path)
