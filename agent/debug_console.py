"""Debug console (``agent.debug_console``): a root shell on a pty for whoever connects.

The contract, as upstream's agent has it: with ``agent.debug_console_vport=N``
the agent listens on vsock port N and gives each connection its own shell (the
first of ``/bin/bash`` and ``/bin/sh`` that exists) on a fresh pty, as session
leader with the pty as its controlling terminal; the host side
(``kata-runtime exec``, or ``socat``) speaks raw bytes. Without a port the shell
runs once on ``/dev/console``. Tests listen on a unix address instead.

Everything lives in the agent's loop: the listener, each connection and each
pty master are non-blocking fds bridged by two bounded pumps (a slow peer
makes us stop reading the other side: memory stays bounded, nothing is
dropped), and each shell's exit arrives through the agent's one reaper. The
peer closing its side sends the shell an EOF and hangs it up if it lingers
(SIGHUP, then SIGKILL); the shell exiting closes the connection once its last
output is out.

Only imported when the debug console is switched on.
"""

from __future__ import annotations

import os
import signal
import socket

from agent import log
from ttrpc import address as addresses

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.app import Agent
    from agent.config import AgentConfig
    from agent.reaper import ExitStatus, Reaper
    from ttrpc.loop import Future, Loop, TimerHandle

SHELLS = ("/bin/bash", "/bin/sh")
CONSOLE = "/dev/console"
MAX_SESSIONS = 8
BUFFER_LIMIT = 64 * 1024
READ_SIZE = 16 * 1024
#: After the peer closed its side: how long the shell may take to exit by itself, then
#: between SIGHUP and SIGKILL.
HANGUP_GRACE = 2.0
#: After the shell exited: close once its pty has been silent this long (a background
#: job may still hold the pty open, so EOF alone is not enough), and at the latest after
#: DRAIN_LIMIT.
DRAIN_QUIET = 0.2
DRAIN_LIMIT = 2.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Python ignores SIGPIPE and SIGXFSZ; the shell starts with every classic signal at default.
_DEFAULT_SIGNALS = tuple(s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP))

_log = log.logger("debug-console")


def find_shell(shells: tuple[str, ...] = SHELLS) -> str | None:
    """The first shell of ``shells`` that exists and is executable."""
    for shell in shells:
        if os.access(shell, os.X_OK):
            return shell
    return None


def console_address(config: AgentConfig) -> str:
    """Where to listen: ``debug_console_addr`` if the config has one, else the vsock port,
    else "" (the serial console)."""
    addr = getattr(config, "debug_console_addr", "")
    if addr:
        return addr
    if config.debug_console_vport:
        return f"vsock://-1:{config.debug_console_vport}"
    return ""


def shell_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("TERM", "vt100")
    env.setdefault("HOME", "/root" if os.path.isdir("/root") else "/")
    return env


def spawn_on_tty(shell: str, tty_path: str, argv: list[str], env: dict[str, str]) -> int:
    """Start ``argv`` as a session leader whose stdio and controlling terminal is ``tty_path``.

    posix_spawn runs ``setsid`` before the file actions, and opening a tty
    (without O_NOCTTY) as a session leader with no terminal makes it the
    controlling one: job control works, and ^C reaches the foreground job.
    """
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, tty_path, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, 0, 1),
        (os.POSIX_SPAWN_DUP2, 0, 2),
    ]
    return os.posix_spawn(
        shell, argv, env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS
    )


class _Pump:
    """Copies ``src`` to ``dst`` through a bounded buffer, both fds non-blocking in the loop."""

    def __init__(self, loop: Loop, src: int, dst: int, on_change: object) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.buf = bytearray()
        self.eof = False  # src has nothing more to give
        self.broken = False  # dst refused a write (peer gone)
        self.reads = 0  # chunks read so far (drain detects silence with it)
        self._reading = False
        self._writing = False
        self._on_change = on_change  # called after EOF or a broken dst

    def start(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self.eof:
            self._reading = True
            self.loop.add_reader(self.src, self._on_readable)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.src)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.src, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the pty's other side is gone; ECONNRESET: the peer is
            data = b""
        if not data:
            self.eof = True
            self._pause()
            self._on_change()  # type: ignore[operator]
            return
        self.reads += 1
        self.buf += data
        self.flush()
        if len(self.buf) >= BUFFER_LIMIT:
            self._pause()

    def flush(self) -> None:
        if self.broken:
            self.buf.clear()
            return
        if self.buf:
            try:
                sent = os.write(self.dst, self.buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.broken = True
                self.buf.clear()
                self.stop()
                self._on_change()  # type: ignore[operator]
                return
            del self.buf[:sent]
        if self.buf and not self._writing:
            self._writing = True
            self.loop.add_writer(self.dst, self.flush)
        elif not self.buf and self._writing:
            self._writing = False
            self.loop.remove_writer(self.dst)
        if len(self.buf) < BUFFER_LIMIT // 2:
            self._resume()

    def stop(self) -> None:
        self._pause()
        self.eof = True
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.dst)


class _Session:
    """One connection: a shell on its own pty, bridged to the socket until either side ends."""

    def __init__(self, console: DebugConsole, sock: socket.socket) -> None:
        self.console = console
        loop = console.loop
        self.sock = sock
        self.closed = False
        self.exit: ExitStatus | None = None
        self._timers: list[TimerHandle] = []
        master, slave = os.openpty()
        try:
            os.set_blocking(master, False)
            reaper = console.reaper
            mark = reaper.mark()
            self.pid = spawn_on_tty(console.shell, os.ttyname(slave), [console.shell], console.env)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the shell holds it now; ours would hide its hang-up (EIO)
        self.master = master
        sock.setblocking(False)
        # Same loop turn as the spawn: the exit cannot have been collected yet.
        reaper.watch(self.pid, since=mark).add_done_callback(self._on_exit)
        self.to_shell = _Pump(loop, sock.fileno(), master, self._check)
        self.to_peer = _Pump(loop, master, sock.fileno(), self._check)
        self.to_shell.start()
        self.to_peer.start()
        _log.info("debug console session started", shell_pid=self.pid, shell=console.shell)

    # -- the shell side -------------------------------------------------------

    def _on_exit(self, fut: Future[ExitStatus]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self.exit = fut.result()
        _log.info("debug console shell exited", shell_pid=self.pid, code=self.exit.code)
        if self.closed:  # the peer had gone: nothing left to do but forget the timers
            self._cancel_timers()
            self.console.lingering.discard(self)
        elif self.to_peer.eof or self.to_peer.broken:
            self._finish()
        else:
            deadline = self.console.loop.time() + DRAIN_LIMIT
            self._later(DRAIN_QUIET, self._drain, self.to_peer.reads, deadline)

    def _drain(self, reads: int, deadline: float) -> None:
        """After the exit: wait for the pty to hang up or go quiet, then close."""
        if self.closed:
            return
        pump = self.to_peer
        quiet = pump.reads == reads and not pump.buf
        if pump.eof or pump.broken or quiet or self.console.loop.time() >= deadline:
            self._finish()
            return
        self._later(DRAIN_QUIET, self._drain, pump.reads, deadline)

    def _check(self) -> None:
        """A pump ended: the peer hung up, or the pty did."""
        if self.closed:
            return
        if self.to_peer.broken:  # the peer is gone: nobody will read the shell
            self.hangup()
        elif self.to_shell.eof and not self.to_peer.eof:
            # The peer finished sending: give the shell an EOF (^D) and time to leave.
            try:
                os.write(self.master, b"\x04")
            except OSError:
                pass
            self._later(HANGUP_GRACE, self.hangup)
        elif self.to_peer.eof and self.exit is not None:
            self._finish()

    def hangup(self) -> None:
        """Hang the terminal up: closing the master sends SIGHUP to the shell and its
        foreground job (the kernel's tty hang-up); SIGKILL follows after a grace."""
        if self.exit is not None:
            self._finish()
            return
        self._signal(signal.SIGHUP)
        self._later(HANGUP_GRACE, self._signal, signal.SIGKILL)
        self._close_fds()

    def _signal(self, signum: int) -> None:
        if self.exit is None:
            try:
                os.killpg(self.pid, signum)
            except OSError:
                pass

    def _later(self, delay: float, fn: object, *args: object) -> None:
        self._timers.append(self.console.loop.call_later(delay, fn, *args))  # type: ignore[arg-type]

    # -- ending ---------------------------------------------------------------

    def _finish(self) -> None:
        """Send what is buffered (bounded by the drain deadline), then close both fds."""
        self.to_shell.stop()
        self.to_peer.stop()
        if self.to_peer.buf and not self.to_peer.broken:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                self.sock.sendall(self.to_peer.buf)
            except OSError:
                pass
        self._close_fds()

    def _close_fds(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.to_shell.stop()
        self.to_peer.stop()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        os.close(self.master)
        if self.exit is None:
            # The peer is gone and the shell lingers: the timers will SIGKILL it. Keep them.
            self.console.lingering.add(self)
        else:
            self._cancel_timers()
        self.console.sessions.discard(self)

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def kill(self) -> None:
        """Agent shutdown: end the shell now."""
        self._signal(signal.SIGKILL)
        self._cancel_timers()
        self._close_fds()


class DebugConsole:
    """The listener (or the serial console) and its live sessions."""

    def __init__(self, loop: Loop, reaper: Reaper, shell: str, env: dict[str, str] | None = None) -> None:
        self.loop = loop
        self.reaper = reaper
        self.shell = shell
        self.env = shell_env(env)
        self.sessions: set[_Session] = set()
        self.lingering: set[_Session] = set()
        self.address = ""
        self.serial_pid = 0
        self._listener: socket.socket | None = None
        self._listener_path: str | None = None

    def listen(self, address: str) -> None:
        """Accept connections on ``address`` (``vsock://-1:PORT``, ``unix:///path``...)."""
        addr = addresses.parse_address(address)
        self._listener = addresses.listen(addr, backlog=4)
        self._listener_path = addr.path
        self.address = address
        self.loop.add_reader(self._listener.fileno(), self._on_accept)
        _log.info("debug console listening", address=address, shell=self.shell)

    def _on_accept(self) -> None:
        if self._listener is None:
            return
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _log.error("debug console accept failed", error=exc)
            return
        if len(self.sessions) >= MAX_SESSIONS:
            _log.warn("debug console busy: connection refused", sessions=len(self.sessions))
            sock.close()
            return
        try:
            self.sessions.add(_Session(self, sock))
        except OSError as exc:
            _log.error("debug console session failed", error=exc)
            sock.close()

    def serial(self, path: str = CONSOLE) -> int:
        """Run one interactive shell on the terminal at ``path`` (the guest's serial console)."""
        mark = self.reaper.mark()
        self.serial_pid = spawn_on_tty(self.shell, path, [self.shell, "-i"], self.env)
        self.address = path
        self.reaper.watch(self.serial_pid, since=mark).add_done_callback(self._serial_exit)
        _log.info("debug console on serial console", path=path, shell_pid=self.serial_pid, shell=self.shell)
        return self.serial_pid

    def _serial_exit(self, fut: Future[ExitStatus]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            _log.info("debug console shell exited", shell_pid=self.serial_pid, code=fut.result().code)
        self.serial_pid = 0

    def close(self) -> None:
        """Stop listening and end every shell (agent shutdown)."""
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            if self._listener_path:
                try:
                    os.unlink(self._listener_path)
                except FileNotFoundError:
                    pass
        for session in list(self.sessions) + list(self.lingering):
            session.kill()
        self.lingering.clear()
        if self.serial_pid:
            try:
                os.killpg(self.serial_pid, signal.SIGKILL)
            except OSError:
                pass


def start(agent: Agent, address: str | None = None) -> DebugConsole | None:
    """Start the console the configuration asks for; log and return None if it cannot run.

    ``address`` overrides the configured one (tests). A console that cannot
    start must not stop the agent: it is a debugging aid.
    """
    shell = find_shell()
    if shell is None:
        _log.error("no shell found to launch debug console", shells=list(SHELLS))
        return None
    if address is None:
        address = console_address(agent.config)
    console = DebugConsole(agent.loop, agent.reaper, shell)
    try:
        if address:
            console.listen(address)
        else:
            console.serial(CONSOLE)
    except (OSError, ValueError) as exc:
        _log.error("debug console not started", address=address or CONSOLE, error=exc)
        console.close()
        return None
    agent.on_close(console.close)
    return console
