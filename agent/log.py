"""JSON-lines structured logging, one object per line, to stderr or any fd.

Not the ``logging`` package: that costs import time and memory at every agent
start and its machinery (handlers, records, locks) buys us nothing here.  A
line is built only when its level passes the threshold (one integer compare
otherwise), written with a single ``os.write`` (atomic on pipes up to
PIPE_BUF) and a failing sink (broken pipe, full non-blocking socket, closed fd)
drops the line instead of raising: logging must never take the agent down.

Fields: ``time`` (RFC 3339, UTC, nanoseconds), ``level``, ``msg``, ``pid``,
``subsystem``, ``name`` ("kata-agent"), ``source`` ("agent"), then the
caller's key/values.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.config import AgentConfig

TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL = 5, 10, 20, 30, 40, 50

LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": DEBUG,
    "info": INFO,
    "warn": WARN,
    "error": ERROR,
    "critical": CRITICAL,
}
_NAMES: dict[int, str] = {v: k for k, v in LEVELS.items()}
# logrus spellings accepted by the upstream agent; fatal/panic log but do not abort.
_ALIASES = {"warning": "warn", "fatal": "critical", "panic": "critical"}
_RESERVED = frozenset(("time", "level", "msg", "pid", "subsystem", "name", "source"))

try:  # the C escaper behind json.dumps, without importing json (and re)
    from _json import encode_basestring as _estr
except ImportError:  # pragma: no cover - non-CPython
    from json.encoder import py_encode_basestring as _estr

_threshold = INFO
_fd = 2
_sink: object = None  # keeps a socket/file object alive while its fd is the sink
_pid = os.getpid()
_tcache: tuple[int, str] = (-1, "")


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def normalize_level(name: str) -> str:
    """Canonical level name for ``name`` (case-insensitive, logrus aliases); ValueError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LEVELS:
        raise ValueError("expected one of trace, debug, info, warn, error, critical")
    return key


def set_level(level: str | int) -> None:
    """Set the threshold: lines below it are never formatted."""
    global _threshold
    _threshold = level if isinstance(level, int) else LEVELS[normalize_level(level)]


def get_level() -> str:
    return _NAMES.get(_threshold, str(_threshold))


def set_output(sink: int | object) -> None:
    """Send lines to an fd, or to an object with ``fileno()`` (kept referenced)."""
    global _fd, _sink
    if isinstance(sink, int):
        _fd, _sink = sink, None
    else:
        _fd, _sink = sink.fileno(), sink  # type: ignore[attr-defined]


def configure(level: str | int | None = None, output: int | object | None = None) -> None:
    """Set level and/or output in one call (either may be left as is)."""
    if level is not None:
        set_level(level)
    if output is not None:
        set_output(output)


def _timestamp() -> str:
    global _tcache
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    cache = _tcache  # one tuple, so threads never see a torn (second, prefix) pair
    if cache[0] != sec:
        cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        _tcache = cache
    return f"{cache[1]}.{frac:09d}Z"


def _enc(value: object, depth: int = 0) -> str:
    """JSON text for ``value``; anything unknown becomes its ``str()``."""
    cls = value.__class__
    if cls is str:
        return _estr(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return _estr(repr(value))
        return float.__repr__(value)
    if depth < 8:
        if isinstance(value, dict):
            items = (f"{_estr(str(k))}:{_enc(v, depth + 1)}" for k, v in value.items())
            return "{" + ",".join(items) + "}"
        if isinstance(value, list | tuple | set | frozenset):
            return "[" + ",".join(_enc(v, depth + 1) for v in value) + "]"
    if isinstance(value, bytes | bytearray):
        return _estr(bytes(value).decode("utf-8", "backslashreplace"))
    try:
        text = f"{cls.__name__}: {value}" if isinstance(value, BaseException) else str(value)
    except Exception:
        text = f"<unprintable {cls.__name__}>"
    return _estr(text)


def _emit(level: int, subsystem: str, msg: object, bound: str, fields: dict[str, object]) -> None:
    parts = [
        '{"time":"',
        _timestamp(),
        '","level":"',
        _NAMES.get(level) or str(level),
        '","msg":',
        _enc(msg),
        ',"pid":',
        str(_pid),
        ',"subsystem":',
        _estr(subsystem),
        ',"name":"kata-agent","source":"agent"',
        bound,
    ]
    for key, value in fields.items():
        if key in _RESERVED:
            key = "field." + key
        parts.append(f",{_estr(key)}:{_enc(value)}")
    parts.append("}\n")
    _write("".join(parts).encode("utf-8", "backslashreplace"))


def _write(data: bytes) -> None:
    fd = _fd
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        pass  # EPIPE, EAGAIN, EBADF...: drop the line, never raise


class Logger:
    """A subsystem's logger; ``bind`` adds fields carried by every line."""

    __slots__ = ("subsystem", "_bound")

    def __init__(self, subsystem: str, _bound: str = "") -> None:
        self.subsystem = subsystem
        self._bound = _bound  # pre-encoded ',"k":v' text of bound fields

    def bind(self, **fields: object) -> Logger:
        extra = "".join(
            f",{_estr('field.' + k if k in _RESERVED else k)}:{_enc(v)}" for k, v in fields.items()
        )
        return Logger(self.subsystem, self._bound + extra)

    @staticmethod
    def enabled(level: int) -> bool:
        """Whether a line at ``level`` would be written (to skip costly field building)."""
        return level >= _threshold

    def log(self, level: int, msg: object, /, **fields: object) -> None:
        if level >= _threshold:
            _emit(level, self.subsystem, msg, self._bound, fields)

    def trace(self, msg: object, /, **fields: object) -> None:
        if _threshold <= TRACE:
            _emit(TRACE, self.subsystem, msg, self._bound, fields)

    def debug(self, msg: object, /, **fields: object) -> None:
        if _threshold <= DEBUG:
            _emit(DEBUG, self.subsystem, msg, self._bound, fields)

    def info(self, msg: object, /, **fields: object) -> None:
        if _threshold <= INFO:
            _emit(INFO, self.subsystem, msg, self._bound, fields)

    def warn(self, msg: object, /, **fields: object) -> None:
        if _threshold <= WARN:
            _emit(WARN, self.subsystem, msg, self._bound, fields)

    warning = warn

    def error(self, msg: object, /, **fields: object) -> None:
        if _threshold <= ERROR:
            _emit(ERROR, self.subsystem, msg, self._bound, fields)

    def critical(self, msg: object, /, **fields: object) -> None:
        if _threshold <= CRITICAL:
            _emit(CRITICAL, self.subsystem, msg, self._bound, fields)

    def __repr__(self) -> str:
        return f"Logger({self.subsystem!r})"


_loggers: dict[str, Logger] = {}


def logger(subsystem: str) -> Logger:
    """The (shared) logger for ``subsystem``, e.g. ``logger("rpc")``."""
    lg = _loggers.get(subsystem)
    if lg is None:
        lg = _loggers[subsystem] = Logger(subsystem)
    return lg


def announce(config: AgentConfig, version: str, **extra: object) -> None:
    """Write the start line: version, PID-1 mode and the effective configuration."""
    logger("root").info(
        "announce",
        **{"agent-version": version, "init-mode": os.getpid() == 1, "config": config.as_dict()},
        **extra,
    )
