"""The network worker process: ``python3 -m agent.network.worker --fd N``.

It serves requests from the agent over an inherited socketpair end, one at a
time, and exits when the agent closes its end or after ``--idle-timeout``
seconds without a request. Exiting when idle gives back the ~24 MB that
pyroute2 costs; the agent respawns it on the next network call.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import os
import select
import socket
import sys
import time
from collections.abc import Collection
from typing import Any

from agent.errors import InvalidArgument, Unimplemented
from agent.network.protocol import MessageDecoder, ProtocolError, encode_error, encode_result

CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Join the network namespace at ``path`` or die: never fall back to the agent's own."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
        if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(fd).st_ino:
            raise OSError(f"setns({path}) did not change the network namespace")
    finally:
        os.close(fd)


class Server:
    """Reads requests, dispatches them to an ops object, writes replies."""

    def __init__(self, sock: socket.socket, ops: Any, idle_timeout: float, allowed: Collection[str]) -> None:
        self.sock = sock
        self.ops = ops
        self.allowed = frozenset(allowed)
        self.idle_timeout = idle_timeout
        self.decoder = MessageDecoder()
        self.deadline = time.monotonic() + idle_timeout

    def handle(self, msg: dict[str, Any]) -> bytes:
        req_id = msg.get("id")
        if not isinstance(req_id, int):
            raise ProtocolError("request without an integer id")
        op = msg.get("op")
        args = msg.get("args") or {}
        try:
            if op not in self.allowed:
                raise Unimplemented(f"network worker: unknown operation {op!r}")
            if not isinstance(args, dict):
                raise InvalidArgument("network worker: args must be an object")
            method = getattr(self.ops, op)
            try:
                inspect.signature(method).bind(**args)
            except TypeError as exc:
                raise InvalidArgument(f"network worker: bad arguments for {op}: {exc}") from None
            result = method(**args)
        except Exception as exc:  # every failure goes back to the caller, the worker lives on
            self.deadline = time.monotonic() + self.idle_timeout
            return encode_error(req_id, exc, self.deadline)
        self.deadline = time.monotonic() + self.idle_timeout
        return encode_result(req_id, result, self.deadline)

    def serve(self) -> str:
        """Run until EOF or idle; returns why it stopped."""
        fd = self.sock.fileno()
        while True:
            remaining = self.deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(remaining, 0.0))
            if not readable:
                if remaining <= 0:
                    return "idle"
                continue
            data = self.sock.recv(1 << 16)
            if not data:
                return "eof"
            for msg in self.decoder.feed(data):
                self.sock.sendall(self.handle(msg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.network.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket fd")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--netns", default=None, help="path of a network namespace to join first")
    parser.add_argument("--proc-root", default="/proc")
    opts = parser.parse_args(argv)

    sock = socket.socket(fileno=opts.fd)
    sock.setblocking(True)
    if opts.netns:
        try:
            enter_netns(opts.netns)
        except OSError as exc:
            print(f"network worker: {exc}", file=sys.stderr)
            return 3

    from agent.network.ops import OPS, NetOps  # the heavy import, paid only here

    ops = NetOps(proc_root=opts.proc_root)
    try:
        Server(sock, ops, opts.idle_timeout, OPS).serve()
    except (ProtocolError, OSError) as exc:
        print(f"network worker: {exc}", file=sys.stderr)
        return 2
    finally:
        ops.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
