"""Kernel uevents: the sans-IO parser and the NETLINK_KOBJECT_UEVENT socket.

A kernel uevent datagram is ``ACTION@DEVPATH\\0KEY=VALUE\\0...``. The parser
never touches a socket, so the lead's event loop reads the datagrams (the
socket is non-blocking) and hands the bytes here.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # group 2 carries udev's re-broadcasts, which we do not want
LIBUDEV_MAGIC = b"libudev\0"
RECV_BUFFER = 4 * 1024 * 1024


class Uevent(NamedTuple):
    action: str
    devpath: str
    env: dict[str, str]

    @property
    def subsystem(self) -> str:
        return self.env.get("SUBSYSTEM", "")

    @property
    def devname(self) -> str:
        return self.env.get("DEVNAME", "")

    @property
    def devtype(self) -> str:
        return self.env.get("DEVTYPE", "")

    @property
    def seqnum(self) -> int:
        try:
            return int(self.env.get("SEQNUM", "0"))
        except ValueError:
            return 0

    @property
    def interface(self) -> str:
        return self.env.get("INTERFACE", "")


def parse_uevent(data: bytes) -> Uevent | None:
    """Parse one datagram; None for udev's own messages and for malformed input."""
    if data.startswith(LIBUDEV_MAGIC):
        return None
    parts = data.split(b"\0")
    header = parts[0].decode("utf-8", errors="replace")
    action, at, devpath = header.partition("@")
    if not at or not action or not devpath:
        return None
    env: dict[str, str] = {}
    for raw in parts[1:]:
        if not raw:
            continue
        key, eq, value = raw.decode("utf-8", errors="replace").partition("=")
        if eq and key:
            env[key] = value
    # The environment is authoritative; the header is the fallback.
    return Uevent(action=env.get("ACTION", action), devpath=env.get("DEVPATH", devpath), env=env)


def format_uevent(action: str, devpath: str, **env: str) -> bytes:
    """Build a datagram in the kernel's format (tests and fault injection)."""
    fields = {"ACTION": action, "DEVPATH": devpath, **env}
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())
    return f"{action}@{devpath}".encode() + b"\0" + body


def open_uevent_socket(groups: int = KERNEL_GROUP) -> socket.socket:
    """A non-blocking, close-on-exec uevent socket bound to the kernel's group.

    Register ``sock.fileno()`` in the event loop and call ``read_uevents`` when
    it is readable.
    """
    sock = socket.socket(
        socket.AF_NETLINK,
        socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        NETLINK_KOBJECT_UEVENT,
    )
    try:
        try:  # a hotplug storm must not overflow the queue; FORCE needs CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def read_uevents(sock: socket.socket, limit: int = 256) -> tuple[list[Uevent], bool]:
    """Drain up to ``limit`` datagrams without blocking.

    Returns the parsed kernel events and whether the kernel reported an
    overrun (ENOBUFS: events were lost, callers should rescan what they wait for).
    """
    events: list[Uevent] = []
    overrun = False
    for _ in range(limit):
        try:
            data, addr = sock.recvfrom(65536)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overrun = True
                continue
            raise
        if addr[0] != 0:  # only the kernel (port id 0) may speak here
            continue
        event = parse_uevent(data)
        if event is not None:
            events.append(event)
    return events, overrun
