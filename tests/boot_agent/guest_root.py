"""The agent as PID 1 of fresh namespaces on a bare root: what a guest kernel hands its /init.

A shell, PID 1 of new pid/mount/net/uts/ipc/cgroup namespaces, builds a root
from a tmpfs: the host's /usr, /etc, the Python install, the checkout and the
test's directory bind-mounted at their own paths, and *empty* /proc, /sys,
/dev and /run, then ``exec chroot``s the real ``kata-agent`` entry point
(``python3 -m agent``), which stays PID 1. Everything the agent finds mounted
there it mounted itself (init mode), so the tests can check exactly that.
The sockets live in the test's directory, reachable from the host.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.agent.harness import wait_ready

from .helpers import REPO, agent_env

_PREPARE = """
set -e
R="$1"; shift
mount -t tmpfs -o mode=755 guestroot "$R"
for link in {links}; do ln -s "$(readlink "/$link")" "$R/$link"; done
for dir in {binds}; do mkdir -p "$R$dir"; mount --bind "$dir" "$R$dir"; done
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/tmp"
exec chroot "$R" "$@"
"""


def _binds(workdir: Path) -> list[str]:
    wanted = ["/usr", "/etc", sys.prefix, sys.base_prefix, str(REPO), str(workdir)]
    wanted += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.isdir(top) and not os.path.islink(top):
            wanted.append(top)
    out: list[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if os.path.isdir(p)}):
        if not any(path == o or path.startswith(o + "/") for o in out):
            out.append(path)
    return out


def _links() -> list[str]:
    return [n for n in ("bin", "sbin", "lib", "lib32", "lib64", "libx32") if os.path.islink(f"/{n}")]


class Guest:
    """One agent as PID 1; ``stop()`` ends it (SIGTERM to PID 1 ends the namespace)."""

    def __init__(self, workdir: Path, cmdline: str = "", **env: str) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.root.mkdir()
        self.sock = workdir / "agent.sock"
        self.console = workdir / "console.sock"
        cmdline_file = workdir / "cmdline"
        cmdline_file.write_text(cmdline + "\n")
        full_env = agent_env(
            KATA_AGENT_SERVER_ADDR=f"unix://{self.sock}",
            KATA_AGENT_CMDLINE_PATH=str(cmdline_file),
            **env,
        )
        script = _PREPARE.format(
            links=" ".join(shlex.quote(x) for x in _links()),
            binds=" ".join(shlex.quote(x) for x in _binds(workdir)),
        )
        argv = ["unshare", "--kill-child=SIGKILL", "--pid", "--mount", "--net", "--uts", "--ipc", "--cgroup"]
        argv += ["sh", "-c", script, "guest-init", str(self.root), sys.executable, "-m", "agent"]
        self.log = open(workdir / "agent.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> object:
        try:
            return wait_ready(f"unix://{self.sock}", self.proc, timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"guest not ready: {exc}\n{self.output()}") from exc

    @property
    def host_pid(self) -> int | None:
        """The agent's pid as the host sees it (unshare's only child)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def output(self) -> str:
        with open(self.workdir / "agent.log", "rb") as f:
            return f.read().decode(errors="replace")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15) -> int:
        pid = self.host_pid
        if pid is not None and self.proc.poll() is None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        code = self.wait_exit(timeout)
        if code is None:
            self.proc.kill()  # --kill-child takes PID 1, and the namespace, with it
            code = self.proc.wait()
        self.log.close()
        deadline = time.monotonic() + 5
        while os.path.ismount(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code
