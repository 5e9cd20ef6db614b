"""Logs to the host over vsock (``agent.log_vport``).

As upstream's agent does, given a log port the agent listens on it (vsock, any
CID) and copies its log stream to whoever connects: the host side dials in.
Lines logged before anyone connects must not be lost, and logging must never
block the agent, so:

- the logger writes each line to a pipe whose write end is non-blocking (and
  widened to 1 MiB): until a peer connects the kernel keeps the lines; when
  the pipe is full a line is dropped, never waited for (agent.log's rule);
- once a peer is connected, the loop copies the pipe to it through a bounded
  buffer; a slow peer stops the copying, so the pipe fills and then drops;
- a new connection replaces the previous one (the host side restarted);
- at shutdown what is left is sent with a short deadline, and later lines go
  back to stderr.

The sink is installed before the loop exists, so the boot lines (init, the
announce line) are kept, and attached to the loop once the agent has one.
Only imported when log_vport (or log_addr) is set.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys

from agent import log
from ttrpc import address as addresses

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.config import AgentConfig
    from ttrpc.loop import Loop

PIPE_SIZE = 1 << 20
BUFFER_LIMIT = 256 * 1024
READ_SIZE = 64 * 1024
CLOSE_TIMEOUT = 2.0


def log_address(config: AgentConfig) -> str:
    """``log_addr`` if the config has one, else ``vsock://-1:<log_vport>``, else ""."""
    addr = getattr(config, "log_addr", "")
    if addr:
        return addr
    if config.log_vport:
        return f"vsock://-1:{config.log_vport}"
    return ""


class LogSink:
    """The log pipe, the listener and at most one connected peer."""

    def __init__(self, address: str) -> None:
        addr = addresses.parse_address(address)
        self.address = address
        self._path = addr.path
        self._listener = addresses.listen(addr, backlog=4)
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB will do
        self._peer: socket.socket | None = None
        self._buf = bytearray()
        self._loop: Loop | None = None
        self._reading = False
        self._writing = False
        self.connections = 0
        log.set_output(self._write_fd)

    # -- in the loop ----------------------------------------------------------

    def attach(self, agent: object) -> None:
        """Serve from ``agent.loop``; detached again by ``agent.on_close``."""
        self._loop = agent.loop  # type: ignore[attr-defined]
        self._loop.add_reader(self._listener.fileno(), self._on_accept)
        agent.on_close(self.detach)  # type: ignore[attr-defined]

    def detach(self) -> None:
        """Leave the loop (it is closing); :meth:`close` sends the rest synchronously."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.remove_reader(self._listener.fileno())
        if self._peer is not None:
            loop.remove_reader(self._peer.fileno())
            loop.remove_writer(self._peer.fileno())
        loop.remove_reader(self._read_fd)
        self._reading = self._writing = False

    def _on_accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        self._drop_peer()  # the newest connection wins: the host side came back
        self._peer = sock
        self.connections += 1
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_peer_readable)
        self._resume()
        self._flush()

    def _on_peer_readable(self) -> None:
        """The peer sends nothing we want: this only notices that it went away."""
        peer = self._peer
        if peer is None:
            return
        try:
            data = peer.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_peer()

    def _drop_peer(self) -> None:
        peer, self._peer = self._peer, None
        if peer is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(peer.fileno())
            self._loop.remove_writer(peer.fileno())
            self._pause()
        self._writing = False
        peer.close()

    def _resume(self) -> None:
        if not self._reading and self._loop is not None and len(self._buf) < BUFFER_LIMIT:
            self._reading = True
            self._loop.add_reader(self._read_fd, self._on_pipe_readable)

    def _pause(self) -> None:
        if self._reading and self._loop is not None:
            self._reading = False
            self._loop.remove_reader(self._read_fd)

    def _on_pipe_readable(self) -> None:
        try:
            data = os.read(self._read_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        self._buf += data
        if len(self._buf) >= BUFFER_LIMIT:
            self._pause()
        self._flush()

    def _flush(self) -> None:
        peer = self._peer
        if peer is None or self._loop is None:
            return
        if self._buf:
            try:
                sent = peer.send(self._buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop_peer()  # unsent bytes stay buffered for the next peer
                return
            del self._buf[:sent]
        if self._buf and not self._writing:
            self._writing = True
            self._loop.add_writer(peer.fileno(), self._flush)
        elif not self._buf and self._writing:
            self._writing = False
            self._loop.remove_writer(peer.fileno())
        if len(self._buf) < BUFFER_LIMIT // 2:
            self._resume()

    # -- the end --------------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is left to the peer (blocking, at most ``timeout`` s), then log to stderr."""
        self.detach()
        log.set_output(sys.stderr.fileno() if sys.stderr is not None else 2)
        os.close(self._write_fd)
        while True:
            try:
                data = os.read(self._read_fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            self._buf += data
        os.close(self._read_fd)
        peer, self._peer = self._peer, None
        if peer is not None:
            try:
                peer.setblocking(True)
                peer.settimeout(timeout)
                peer.sendall(self._buf)
                peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            peer.close()
        self._buf.clear()
        self._listener.close()
        if self._path:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass


def install(config: AgentConfig, address: str | None = None) -> LogSink | None:
    """Send the agent's log lines to the configured log port from now on.

    ``address`` overrides the configuration (tests). If the port cannot be
    opened (no vsock in this kernel, say) the error is logged and the lines
    stay on stderr: losing the log port must not stop the agent.
    """
    if address is None:
        address = log_address(config)
    if not address:
        return None
    try:
        return LogSink(address)
    except (OSError, ValueError) as exc:
        log.logger("root").error("cannot open the log port, logging to stderr", address=address, error=exc)
        return None
