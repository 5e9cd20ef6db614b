"""SetGuestDateTime: set the guest's wall clock (e.g. after a VM resume)."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.errors import InvalidArgument, PermissionDenied

ClockSetter = Callable[[int], None]


def _set_realtime_ns(ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def set_guest_datetime(sec: int, usec: int, *, setter: ClockSetter = _set_realtime_ns) -> int:
    """Set CLOCK_REALTIME to ``sec`` + ``usec``; returns the nanoseconds set.

    ``setter`` is injectable so tests never move the machine's clock.
    """
    if sec < 0:
        raise InvalidArgument(f"seconds must not be negative, got {sec}")
    if not 0 <= usec < 1_000_000:
        raise InvalidArgument(f"microseconds must be in [0, 1000000), got {usec}")
    ns = sec * 1_000_000_000 + usec * 1_000
    try:
        setter(ns)
    except PermissionError as exc:
        raise PermissionDenied(f"setting the clock: {exc}") from None
    except OverflowError:
        raise InvalidArgument(f"time {sec}.{usec:06d} is out of range for this system") from None
    return ns
