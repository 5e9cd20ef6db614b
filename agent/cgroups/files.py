"""Reading and writing cgroup control files.

Why tolerant reads: a container's cgroup can disappear between two reads (its last
process exits and the runtime removes it), and a controller or file may simply not exist
on this kernel. Statistics are best effort, so a missing file reads as None and callers
fall back to zero. Writes are not best effort: a limit we were asked to set and could not
is an error that names the file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from agent.errors import FailedPrecondition, InvalidArgument


def read_text(path: Path) -> str | None:
    """The file's content, or None when it (or its cgroup) does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL):
            return None  # a control file this kernel/config will not answer
        raise


def read_int(path: Path) -> int | None:
    """A single-integer file; "max" reads as None too (callers pick their "unlimited")."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text in ("", "max"):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_limit(path: Path, unlimited: int) -> int | None:
    """A limit file where "max" means ``unlimited``; None when the file is missing."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return unlimited
    try:
        return int(text)
    except ValueError:
        return None


def read_ints(path: Path) -> list[int]:
    """A whitespace-separated list of integers (cpuacct.usage_percpu)."""
    text = read_text(path) or ""
    return [int(tok) for tok in text.split() if tok.lstrip("-").isdigit()]


def read_kv(path: Path) -> dict[str, int]:
    """A flat-keyed file of ``key value`` lines (memory.stat, cpu.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def write_value(path: Path, value: str | int, *, field: str) -> None:
    """Write one value to a control file; errors name the OCI field being applied."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"{field}: {path} does not exist (controller not available?)") from None
    try:
        os.write(fd, data)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ERANGE):
            raise InvalidArgument(f"{field}: the kernel refused {value!r} for {path.name}") from None
        if e.errno == errno.EBUSY:
            raise FailedPrecondition(f"{field}: {path.name} is busy ({e.strerror})") from None
        raise FailedPrecondition(f"{field}: writing {path}: {e.strerror}") from None
    finally:
        os.close(fd)
