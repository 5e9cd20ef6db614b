"""Socket addresses in the agent's URL forms.

``unix:///path`` (a socket file), ``unix://@name`` (Linux abstract
namespace) and ``vsock://CID:PORT``, where CID -1 means VMADDR_CID_ANY, the
form the Kata runtime uses for the agent (``vsock://-1:1024``).
"""

from __future__ import annotations

import os
import socket
import stat
from typing import NamedTuple

VMADDR_CID_ANY = 0xFFFF_FFFF


class AddressError(ValueError):
    """The address string is not one of the supported forms."""


class Address(NamedTuple):
    family: int
    sockaddr: str | tuple[int, int]
    text: str

    @property
    def path(self) -> str | None:
        """The socket file for a filesystem unix address (None otherwise)."""
        if (
            self.family == socket.AF_UNIX
            and isinstance(self.sockaddr, str)
            and not self.sockaddr.startswith("\0")
        ):
            return self.sockaddr
        return None


def parse_address(text: str) -> Address:
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(f"address {text!r} has no scheme (want unix:// or vsock://)")
    if scheme == "unix":
        if rest.startswith("@"):
            if len(rest) < 2:
                raise AddressError(f"abstract unix address {text!r} has no name")
            return Address(socket.AF_UNIX, "\0" + rest[1:], text)
        if not rest.startswith("/"):
            raise AddressError(
                f"unix address {text!r} must be absolute (unix:///path) or abstract (unix://@name)"
            )
        if len(rest.encode()) > 107:
            raise AddressError(f"unix socket path {rest!r} is longer than 107 bytes")
        return Address(socket.AF_UNIX, rest, text)
    if scheme == "vsock":
        cid_text, colon, port_text = rest.rpartition(":")
        try:
            cid, port = int(cid_text), int(port_text)
        except ValueError:
            raise AddressError(f"vsock address {text!r} must be vsock://CID:PORT") from None
        if not colon or port < 0 or port > 0xFFFF_FFFF or cid < -1 or cid > 0xFFFF_FFFF:
            raise AddressError(f"vsock address {text!r} has an out-of-range CID or port")
        return Address(socket.AF_VSOCK, (VMADDR_CID_ANY if cid == -1 else cid, port), text)
    raise AddressError(f"unsupported address scheme {scheme!r} in {text!r}")


def listen(address: Address, backlog: int = 512) -> socket.socket:
    """A non-blocking listening socket; a stale socket file is replaced."""
    sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        path = address.path
        if path is not None:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        sock.bind(address.sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(address: Address, timeout: float | None = 5.0) -> socket.socket:
    """A connected blocking socket (the client does its own reading).

    A unix listener whose backlog is full answers EAGAIN instead of making a
    timed connect wait, so that case is retried until the timeout.
    """
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(address.sockaddr)
            sock.settimeout(None)
            return sock
        except BlockingIOError:
            sock.close()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"connect to {address.text} timed out (listener backlog full)") from None
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise
