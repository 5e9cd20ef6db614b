"""Run OCI runtime argv in tests (a test-only stand-in for the agent's event loop).

The agent spawns the runtime from its loop and reaps it with its one reaper; tests have
neither, so they use subprocess. Output goes to files, never pipes: a container created
without a terminal inherits the stdio of ``create``/``exec`` and would hold a pipe open
long after the runtime exited.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from agent.runtime.cli import ContainerState, RuntimeCLI, error_message, parse_state

from .guestview import GuestView

_seq = itertools.count()


class RuntimeFailed(AssertionError):
    """A runtime invocation failed (carries the runtime's own message)."""


class OCIRunner:
    """Calls one runtime (crun or runc) inside a GuestView, remembering what it created."""

    def __init__(self, binary: str, view: GuestView, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "state").mkdir(exist_ok=True)
        self.cli = RuntimeCLI(binary=binary, root=str(workdir / "state"))
        self.view = view
        self.created: list[str] = []

    def call(self, argv: Sequence[str], *, timeout: float = 60) -> tuple[int, str, str]:
        """Run argv; returns (exit status, stdout, stderr)."""
        n = next(_seq)
        out, err = self.workdir / f"out.{n}", self.workdir / f"err.{n}"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = self.view.run(argv, timeout=timeout, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        return proc.returncode, out.read_text(errors="replace"), err.read_text(errors="replace")

    def check(self, argv: Sequence[str], *, timeout: float = 60) -> str:
        """Run argv, raise with the runtime's message on failure; returns stdout."""
        rc, out, err = self.call(argv, timeout=timeout)
        if rc != 0:
            raise RuntimeFailed(f"{' '.join(argv)} failed ({rc}): {error_message(err)}")
        return out

    def create(self, cid: str, bundle: Path, **kwargs) -> int:
        """create; returns the init pid from the pid file."""
        pid_file = bundle / f"{cid}.pid"
        self.created.append(cid)
        self.check(self.cli.create(cid, str(bundle), str(pid_file), **kwargs))
        return int(pid_file.read_text())

    def state(self, cid: str) -> ContainerState:
        return parse_state(self.check(self.cli.state(cid)))

    def wait_status(self, cid: str, status: str, timeout: float = 20) -> ContainerState:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st.status == status or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def cleanup(self) -> None:
        for cid in self.created:
            self.call(self.cli.delete(cid, force=True))
