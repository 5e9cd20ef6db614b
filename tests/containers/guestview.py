"""A guest-like view of cgroups for running crun/runc on a test host (test-only helper).

A Kata guest mounts its own cgroups and the agent sits at their root. This host instead
has hybrid cgroups (v1 controllers plus a cgroup2 ``unified`` mount holding hugetlb) that
crun refuses, and our own cgroups are nested in the test machine's. So a holder process
keeps a private mount namespace in which /sys/fs/cgroup is a fresh tmpfs carrying, per
v1 hierarchy, a bind mount of a per-test parent cgroup (``V1Tree``). Runtime commands run
in that namespace through ``nsenter``; containers' cgroups land inside the test parent.

The holder is ``cat`` on a pipe from us: it exits (and the namespace with its mounts
disappears) when we close the pipe, or when the test process dies.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .cgtree import V1Tree

_SETUP = """
set -e
mount -t tmpfs -o mode=755 cgroup-view "$STAGE"
{binds}
umount -l /sys/fs/cgroup
mount --move "$STAGE" /sys/fs/cgroup
echo ready
exec cat
"""


def require_tools(*names: str) -> None:
    """Fail (never skip) when a tool the test needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise RuntimeError(f"missing tools: {', '.join(missing)} (Debian packages util-linux and mount)")


class GuestView:
    """The private mount namespace with the guest-like cgroup mounts."""

    def __init__(self, tree: V1Tree, workdir: Path) -> None:
        require_tools("unshare", "nsenter", "mount", "umount")
        self.tree = tree
        stage = workdir / "cgroup-stage"
        stage.mkdir()
        lines = []
        for name, source in sorted(tree.mount_sources().items()):
            target = stage / name
            lines.append(f"mkdir -p {shlex.quote(str(target))}")
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
        script = _SETUP.format(binds="\n".join(lines))
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "STAGE": str(stage)},
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read() if self.holder.stderr else b""
            self.holder.kill()
            self.holder.wait()
            raise RuntimeError(f"guest cgroup view setup failed: {line!r} {err!r}")

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the view's mount namespace."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv]

    def run(self, argv: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run to completion in the view (never with pipes a container could inherit)."""
        return subprocess.run(self.argv(argv), timeout=timeout, **kwargs)

    def close(self) -> None:
        if self.holder.poll() is None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()
