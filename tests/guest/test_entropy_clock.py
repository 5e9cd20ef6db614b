"""ReseedRandomDev and SetGuestDateTime without touching the machine's RNG or clock.

The random device path is a temporary file and the ioctls are recorded; the
clock setter is injected, so the real CLOCK_REALTIME is never moved.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from agent.errors import Internal, InvalidArgument, PermissionDenied
from agent.guest.clock import set_guest_datetime
from agent.guest.entropy import RNDADDTOENTCNT, RNDRESEEDCRNG, reseed_random_dev


def test_reseed_writes_data_then_credits_and_reseeds(tmp_path: Path) -> None:
    dev = tmp_path / "random"
    dev.write_bytes(b"")
    calls = []
    reseed_random_dev(b"\x01" * 64, str(dev), ioctl=lambda fd, req, arg: calls.append((req, arg)))
    assert dev.read_bytes() == b"\x01" * 64
    assert calls == [(RNDADDTOENTCNT, struct.pack("i", 512)), (RNDRESEEDCRNG, 0)]


def test_reseed_ioctl_failure_is_reported(tmp_path: Path) -> None:
    dev = tmp_path / "random"
    dev.write_bytes(b"")
    with pytest.raises(Internal, match="reseeding .* failed"):
        reseed_random_dev(b"abc", str(dev))  # the real ioctl on a regular file: ENOTTY


def test_reseed_empty_is_a_no_op(tmp_path: Path) -> None:
    reseed_random_dev(b"", str(tmp_path / "does-not-exist"))


def test_ioctl_numbers() -> None:
    # _IOW('R', 1, int) and _IO('R', 7) from <linux/random.h>
    assert (1 << 30) | (4 << 16) | (ord("R") << 8) | 1 == RNDADDTOENTCNT
    assert (ord("R") << 8) | 7 == RNDRESEEDCRNG


def test_set_datetime_argument_handling() -> None:
    seen: list[int] = []
    before = time.time()
    assert set_guest_datetime(1_700_000_000, 250_000, setter=seen.append) == 1_700_000_000_250_000_000
    assert seen == [1_700_000_000_250_000_000]
    assert abs(time.time() - before) < 60  # the machine's clock did not move
    for sec, usec in ((-1, 0), (0, -1), (0, 1_000_000)):
        with pytest.raises(InvalidArgument):
            set_guest_datetime(sec, usec, setter=seen.append)
    assert len(seen) == 1


def test_set_datetime_errors_are_mapped() -> None:
    def denied(ns: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    def overflow(ns: int) -> None:
        raise OverflowError("timestamp too large")

    with pytest.raises(PermissionDenied):
        set_guest_datetime(1, 0, setter=denied)
    with pytest.raises(InvalidArgument, match="out of range"):
        set_guest_datetime(2**62, 0, setter=overflow)
