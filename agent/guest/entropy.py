"""ReseedRandomDev: feed host-provided entropy to the guest's random pool.

A VM restored from a template shares its RNG state with its siblings; the
runtime sends fresh bytes, which we write to the random device, credit with
RNDADDTOENTCNT and follow with RNDRESEEDCRNG so the CRNG uses them at once.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any

from agent.errors import Internal

RNDADDTOENTCNT = 0x40045201  # _IOW('R', 0x01, int)
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
DEFAULT_RANDOM_DEV = "/dev/random"

Ioctl = Callable[[int, int, Any], Any]


def reseed_random_dev(data: bytes, path: str = DEFAULT_RANDOM_DEV, *, ioctl: Ioctl = fcntl.ioctl) -> None:
    """Mix ``data`` into the pool and reseed. Empty data is a no-op."""
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            ioctl(fd, RNDADDTOENTCNT, struct.pack("i", min(len(data) * 8, 2**31 - 1)))
            ioctl(fd, RNDRESEEDCRNG, 0)
        except OSError as exc:
            raise Internal(f"reseeding {path} failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
