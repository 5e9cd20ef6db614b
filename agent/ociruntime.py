"""Invoke the OCI runtime (crun or runc) from the loop, and turn its failures into agent errors.

Every invocation is a child spawned with :func:`agent.process.spawn`, so its
exit comes through the one reaper. The runtime's own message is what the
caller sees on failure: from its JSON ``--log`` file when the call's stderr
belongs to a container (``create`` and ``exec`` without a terminal pass their
stdio through to the container), else from the captured stderr.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

from agent import log
from agent.errors import Internal, NotFound
from agent.process import CompletedRun, spawn
from agent.reaper import Reaper
from agent.runtime.cli import RuntimeCLI, error_message, is_missing_container
from agent.tasks import Steps, task
from ttrpc.loop import Loop

#: Seconds a runtime call may take when the RPC gives no deadline.
DEFAULT_TIMEOUT = 60.0
_log = log.logger("runtime")
_COMMANDS = frozenset(
    ("create", "start", "exec", "kill", "delete", "pause", "resume", "update", "state", "ps")
)
_LOGRUS_MSG = re.compile(r'level=(?:error|fatal) msg="((?:[^"\\]|\\.)*)"')


class RuntimeFailed(Internal):
    """The runtime exited non-zero; ``missing`` says the container itself does not exist."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class OCIRuntime:
    """One runtime binary and state root, called from the loop thread."""

    def __init__(self, loop: Loop, reaper: Reaper, binary: str, root: str) -> None:
        self.loop = loop
        self.reaper = reaper
        # An absolute path spares posix_spawnp its PATH walk on every call.
        self.cli = RuntimeCLI(binary=shutil.which(binary) or binary, root=root)

    @property
    def flavor(self) -> str:
        return self.cli.flavor

    def with_log(self, path: str) -> RuntimeCLI:
        """A CLI that writes its JSON log to ``path`` (for calls whose stderr is a container's)."""
        return dataclasses.replace(self.cli, log=path)

    @task
    def call(
        self,
        argv: Sequence[str],
        container_id: str,
        *,
        timeout: float | None = None,
        log_path: str | None = None,
        **spawn_args: Any,
    ) -> Steps[CompletedRun]:
        """Run ``argv`` to its end; raise :class:`RuntimeFailed` with the runtime's message."""
        started = self.loop.time()
        run = yield spawn(self.loop, self.reaper, argv, timeout=timeout or DEFAULT_TIMEOUT, **spawn_args)
        _log.debug(
            "runtime call",
            command=_command(argv),
            container_id=container_id,
            exit=run.returncode,
            ms=round((self.loop.time() - started) * 1e3, 2),
        )
        if run.returncode != 0:
            raise self.failure(argv, container_id, run, log_path)
        return run

    def failure(
        self, argv: Sequence[str], container_id: str, run: CompletedRun, log_path: str | None
    ) -> RuntimeFailed:
        log_text = _read_tail(log_path) if log_path else None
        stderr = run.stderr.decode("utf-8", "replace")
        if not log_text and '"level"' in stderr:
            log_text = stderr  # runc/crun with --log-format json but no --log: JSON on stderr
        message = _unquote(error_message(stderr, log_text))
        command = _command(argv)
        missing = is_missing_container(self.cli, container_id, message)
        return RuntimeFailed(f"{self.flavor} {command} {container_id}: {message}", missing)


def _command(argv: Sequence[str]) -> str:
    return next((a for a in argv[1:] if a in _COMMANDS), "call")


def _unquote(message: str) -> str:
    """runc's text log line (``time=... level=error msg="..."``) -> just the message."""
    m = _LOGRUS_MSG.search(message)
    return m.group(1).replace('\\"', '"') if m else message


def _read_tail(path: str, limit: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_pid_file(path: str) -> int:
    """The pid the runtime wrote (``--pid-file``)."""
    try:
        with open(path, "rb") as f:
            text = f.read(64)
    except FileNotFoundError:
        raise NotFound(f"the runtime wrote no pid file at {path}") from None
    try:
        pid = int(text.strip())
    except ValueError:
        raise Internal(f"pid file {path} holds {text[:32]!r}, not a pid") from None
    if pid <= 0:
        raise Internal(f"pid file {path} holds {pid}")
    return pid
