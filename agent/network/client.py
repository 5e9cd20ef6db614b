"""Agent side of the network worker: spawn on demand, talk, let it go idle.

``NetworkWorker`` imports nothing heavy. It starts ``python3 -m
agent.network.worker`` on first use, connected by a socketpair, and knows from
each reply until when the worker stays alive (``idle_deadline``); past that
instant (minus a safety margin) it treats the worker as gone and spawns a new
one instead of racing its exit.

Two ways to drive it:

* ``call(op, args, timeout)``: blocking, thread-safe, for a thread-pool job.
* the event loop: ``start()`` then register ``fileno()`` for reading, write
  ``codec.encode_request(op, args)`` bytes to ``sock`` and pass what is read to
  ``codec.feed()``; on EOF call ``close()``. Check ``usable()`` before each new
  request and ``start()`` again if it is false. Use one style per instance.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import DeadlineExceeded, Unavailable
from agent.network import iptables
from agent.network.protocol import ClientCodec, ProtocolError

DEFAULT_IDLE_TIMEOUT = 5.0
DEFAULT_CALL_TIMEOUT = 60.0


class NetworkWorker:
    """Handle on the (possibly not yet running) network worker process."""

    def __init__(
        self,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        *,
        netns: str | None = None,
        proc_root: str | None = None,
        python: str | None = None,
        margin: float = 0.25,
        on_spawn: Callable[[int], None] | None = None,  # hand each pid to the agent's reaper
        env: dict[str, str] | None = None,
    ) -> None:
        if idle_timeout <= margin:
            raise ValueError(f"idle_timeout ({idle_timeout}) must exceed the margin ({margin})")
        self.idle_timeout = idle_timeout
        self.netns = netns
        self.proc_root = proc_root
        self.python = python or sys.executable
        self.margin = margin
        self.on_spawn = on_spawn
        self.env = env
        self.sock: socket.socket | None = None
        self.codec = ClientCodec()
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawn_count = 0
        self._exiting: list[tuple[subprocess.Popen[bytes], float]] = []
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def fileno(self) -> int:
        if self.sock is None:
            raise Unavailable("network worker is not running")
        return self.sock.fileno()

    def usable(self, now: float | None = None) -> bool:
        """True while a request sent now is sure to reach a live worker."""
        if self.sock is None or self.proc is None:
            return False
        if self.codec.pending:
            return True  # busy workers do not go idle
        deadline = self.codec.idle_deadline
        now = time.monotonic() if now is None else now
        return deadline is not None and now < deadline - self.margin

    def start(self) -> None:
        """Make sure a usable worker runs (spawning one if needed)."""
        self._reap_exiting()
        if self.usable():
            return
        self.close()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            self.python,
            "-m",
            "agent.network.worker",
            "--fd",
            str(child.fileno()),
            "--idle-timeout",
            repr(self.idle_timeout),
        ]
        if self.netns:
            argv += ["--netns", self.netns]
        if self.proc_root:
            argv += ["--proc-root", self.proc_root]
        spawned_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                env=self.env,
                close_fds=True,
            )
        except OSError as exc:
            parent.close()
            raise Unavailable(f"cannot start the network worker: {exc}") from None
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.codec = ClientCodec()
        # The worker starts its idle clock after it is up, so this is conservative.
        self.codec.idle_deadline = spawned_at + self.idle_timeout
        self.spawn_count += 1
        if self.on_spawn is not None:
            self.on_spawn(self.proc.pid)

    def close(self) -> None:
        """Drop the connection; the worker exits on EOF and is reaped later."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.on_spawn is None:  # else the agent's reaper owns the exit
                self._exiting.append((self.proc, time.monotonic()))
            self.proc = None
        self._reap_exiting()

    def _reap_exiting(self, grace: float = 2.0) -> None:
        """Poll closed workers (never blocking); SIGKILL one that ignores EOF."""
        still = []
        for proc, since in self._exiting:
            if proc.poll() is not None:
                continue
            if time.monotonic() - since > grace:
                try:
                    proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    continue
            still.append((proc, since))
        self._exiting = still

    def shutdown(self, timeout: float = 2.0) -> None:
        """Close and wait for every worker this handle started (tests, agent exit)."""
        self.close()
        end = time.monotonic() + timeout
        for proc, _ in self._exiting:
            try:
                proc.wait(max(end - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._exiting = []

    def __enter__(self) -> NetworkWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- blocking calls ----------------------------------------------------------

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
        """Run one operation in the worker and return its result (or raise its error)."""
        with self._lock:
            deadline = time.monotonic() + timeout
            self.start()
            req_id, data = self.codec.encode_request(op, args)
            try:
                self._send(data, deadline)
            except (BrokenPipeError, ConnectionResetError):
                # The worker was gone before reading anything: safe to resend once.
                self.close()
                self.start()
                req_id, data = self.codec.encode_request(op, args)
                self._send(data, deadline)
            return self._wait_reply(op, req_id, deadline)

    def _send(self, data: bytes, deadline: float) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise DeadlineExceeded("network worker: timed out sending the request")
            _, writable, _ = select.select([], [self.sock], [], remaining)
            if writable:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    continue

    def _wait_reply(self, op: str, req_id: int, deadline: float) -> Any:
        while True:
            assert self.sock is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # The worker may still be busy with it; a fresh one is simpler than resyncing.
                self.close()
                raise DeadlineExceeded(f"network worker: no answer to {op} in time")
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                status = self._exit_status()
                self.close()
                raise Unavailable(f"network worker exited before answering {op}{status}")
            try:
                replies = self.codec.feed(data)
            except ProtocolError as exc:
                self.close()
                raise Unavailable(f"network worker sent garbage: {exc}") from None
            for reply in replies:
                if reply.id == req_id:
                    return reply.unwrap()

    def _exit_status(self, wait: float = 1.0) -> str:
        """A short wait for the exit code of a worker that hung up (thread context only)."""
        if self.proc is None or self.on_spawn is not None:
            return ""
        try:
            return f" (exit status {self.proc.wait(wait)})"
        except subprocess.TimeoutExpired:
            return ""

    # -- typed helpers (the service layer's entry points) -----------------------

    def update_interface(
        self, iface: dict[str, Any], timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> dict[str, Any]:
        return self.call("update_interface", {"iface": iface}, timeout)

    def update_routes(
        self, routes: list[dict[str, Any]], timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> list[dict[str, Any]]:
        return self.call("update_routes", {"routes": routes}, timeout)

    def list_interfaces(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> list[dict[str, Any]]:
        return self.call("list_interfaces", None, timeout)

    def list_routes(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> list[dict[str, Any]]:
        return self.call("list_routes", None, timeout)

    def add_arp_neighbors(
        self, neighbors: list[dict[str, Any]], timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> None:
        self.call("add_arp_neighbors", {"neighbors": neighbors}, timeout)

    def get_iptables(self, is_ipv6: bool, timeout: float = DEFAULT_CALL_TIMEOUT) -> bytes:
        return iptables.from_wire(self.call("get_iptables", {"is_ipv6": is_ipv6}, timeout))

    def set_iptables(self, is_ipv6: bool, data: bytes, timeout: float = DEFAULT_CALL_TIMEOUT) -> bytes:
        args = {"is_ipv6": is_ipv6, "data": iptables.to_wire(data)}
        return iptables.from_wire(self.call("set_iptables", args, timeout))


def worker_pss_kib(pid: int) -> int:
    """PSS of a process in KiB, from /proc/PID/smaps_rollup (for reports and tests)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise OSError(f"no Pss line for pid {pid}")


__all__ = ["NetworkWorker", "worker_pss_kib", "DEFAULT_IDLE_TIMEOUT"]
