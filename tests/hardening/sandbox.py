"""A throwaway "guest" for hostile and fuzzed agents: namespaces, a read-only host, fake devices.

Fuzzing reaches every RPC, including the ones that act on the machine, so the
agent under attack must not be able to touch the host:

- ``unshare --fork --pid --mount --net --uts --ipc --cgroup``: its own process
  tree, mount table, network stack, hostname, IPC and cgroup view;
- every mount it inherits is remounted read-only in its mount namespace (a
  private namespace alone would still let it write the host's files, e.g.
  /etc/resolv.conf), except one scratch directory shared with the test (the
  socket, logs, the fake sysfs);
- a fresh /proc (with /proc/sys read-only), a read-only sysfs of its own
  network namespace, tmpfs on /run, and a /dev holding only null, zero, full,
  urandom, a pty multiplexer and a *regular file* named ``random``: no block
  device to format, no entropy pool to credit;
- sysfs-driven guest services (OnlineCPUMem, MemHotplugByProbe...) get a fake
  sysfs tree in the scratch directory (``KATA_AGENT_SYSFS_ROOT``), cgroups a
  fake root (``KATA_AGENT_CGROUP_ROOT``).

What remains global is the clock: SetGuestDateTime is kept out of the fuzz set.

The agent is *not* PID 1 here: this launcher is (it reaps, forwards SIGTERM,
and exits with the agent's status).  As PID 1 the agent would do init duties
(mount devtmpfs, power off after DestroySandbox) that defeat the sandbox.

Run as ``python -m tests.hardening.sandbox SCRATCH -- CMD...`` under unshare;
:class:`SandboxedAgent` does that from the test side.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NAMESPACES = ("--fork", "--kill-child=SIGKILL", "--pid", "--mount", "--net", "--uts", "--ipc", "--cgroup")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
_FLAG_NAMES = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}


# --- inside the namespaces (PID 1) -------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _c(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_c(source), _c(target), _c(fstype), flags, _c(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount, parents first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            point = fields[4].encode().decode("unicode_escape")
            flags = 0
            for opt in fields[5].split(","):
                flags |= _FLAG_NAMES.get(opt, 0)
            out.append((point, flags))
    return out


def _make_devices(dev: str) -> None:
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("urandom", 9)):
        os.mknod(f"{dev}/{name}", 0o666 | 0o020000, os.makedev(1, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    Path(dev, "random").write_bytes(b"")  # ReseedRandomDev writes here, credits nothing
    os.makedirs(f"{dev}/pts")
    _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")


def seal(scratch: str) -> None:
    """Make the host read-only for this mount namespace, except ``scratch``."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    inherited = _mounts()
    _mount(scratch, scratch, None, MS_BIND)
    for point, flags in inherited:
        if point == scratch or point.startswith(scratch + "/"):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as exc:
            if point == "/":
                raise
            print(f"sandbox: left {point} as it was: {exc}", file=sys.stderr)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("/proc/sys", "/proc/sys", None, MS_BIND)
    _mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64m")
    os.makedirs("/run/kata-containers/shared/containers")  # the host's share, as virtio-fs provides it
    _make_devices("/dev")


def launch(argv: list[str]) -> int:
    """Be PID 1: start ``argv``, forward SIGTERM/SIGINT to it, reap everything, return its status."""
    child = subprocess.Popen(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            code = child.returncode
            return code if code >= 0 else 128 - code


def main(args: list[str]) -> int:
    scratch, sep, *cmd = args
    if sep != "--" or not cmd:
        print("usage: sandbox SCRATCH -- CMD...", file=sys.stderr)
        return 2
    seal(os.path.realpath(scratch))
    return launch(cmd)


# --- on the test side ---------------------------------------------------------------------


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def fake_sysfs(root: Path, cpus: int = 4, memory_blocks: int = 4) -> None:
    """The sysfs files the guest services read and write, as plain files."""
    cpu = root / "devices/system/cpu"
    for n in range(cpus):
        (cpu / f"cpu{n}").mkdir(parents=True, exist_ok=True)
        if n:
            (cpu / f"cpu{n}/online").write_text("1\n")
    (cpu / "online").write_text(f"0-{cpus - 1}\n")
    mem = root / "devices/system/memory"
    for n in range(memory_blocks):
        (mem / f"memory{n}").mkdir(parents=True, exist_ok=True)
        (mem / f"memory{n}/online").write_text("1\n")
    (mem / "block_size_bytes").write_text("8000000\n")
    (mem / "probe").write_text("")
    (root / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (root / "class/net").mkdir(parents=True, exist_ok=True)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def sandbox_env(scratch: Path) -> dict[str, str]:
    """The environment of a sandboxed agent: fake sysfs and cgroup roots in ``scratch``."""
    fake_sysfs(scratch / "sys")
    for sub in ("cgroup", "tmp"):
        (scratch / sub).mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(
        KATA_AGENT_SYSFS_ROOT=str(scratch / "sys"),
        KATA_AGENT_CGROUP_ROOT=str(scratch / "cgroup"),
        KATA_AGENT_SHARED_DIR="/run/kata-containers/shared/containers",
        KATA_AGENT_HOTPLUG_TIMEOUT="2",
        TMPDIR=str(scratch / "tmp"),
    )
    return env


def sandbox_command(scratch: Path, argv: list[str]) -> list[str]:
    return [
        "unshare",
        *NAMESPACES,
        sys.executable,
        "-m",
        "tests.hardening.sandbox",
        str(scratch),
        "--",
        *argv,
    ]


def run_in_sandbox(
    scratch: Path, argv: list[str], timeout: float, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end in the sandbox (e.g. a fuzzer serving the agent in-process)."""
    scratch = scratch.resolve()
    return subprocess.run(
        sandbox_command(scratch, argv),
        env=sandbox_env(scratch),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        check=False,
        **popen,
    )


class SandboxedAgent:
    """A real ``kata-agent`` process in the sandbox, seen from the host."""

    def __init__(
        self,
        scratch: Path,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "agent",
    ) -> None:
        self.scratch = scratch.resolve()
        self.args = args
        self.extra_env = env or {}
        self.module = module
        self.socket = self.scratch / "agent.sock"
        self.address = f"unix://{self.socket}"
        self.log_path = self.scratch / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def start(self, timeout: float = 30.0) -> SandboxedAgent:
        from tests.agent.harness import wait_ready

        env = sandbox_env(self.scratch)
        env.update(self.extra_env)
        agent = [sys.executable, "-m", self.module, "--server-addr", self.address, *self.args]
        cmd = sandbox_command(self.scratch, agent)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            wait_ready(self.address, self.proc, timeout=timeout).close()
        except Exception:
            self.stop()
            raise RuntimeError(f"sandboxed agent did not start:\n{self.logs()}") from None
        return self

    @property
    def pid(self) -> int:
        """The agent's PID on the host (unshare -> launcher -> agent)."""
        if self._pid is None:
            assert self.proc is not None
            for launcher in _children(self.proc.pid):
                for agent in _children(launcher):
                    self._pid = agent
            if self._pid is None:
                raise RuntimeError("agent process not found")
        return self._pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and Path(f"/proc/{self.pid}").exists()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fds(self) -> dict[str, str]:
        """fd number -> what it points at (socket:[...], pipe:[...], a path)."""
        out = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                out[fd] = os.readlink(f"/proc/{self.pid}/fd/{fd}")
        return out

    def memory_kb(self) -> dict[str, int]:
        """Pss and Rss (kB) from smaps_rollup."""
        out = {}
        with open(f"/proc/{self.pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    out[key] = int(rest.split()[0])
        return out

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            for launcher in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(launcher, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # --kill-child takes the namespace down with it
                proc.wait()
        deadline = time.monotonic() + 5
        while self.socket.exists() and time.monotonic() < deadline and proc.returncode != 0:
            time.sleep(0.05)
        return proc.returncode

    def __enter__(self) -> SandboxedAgent:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
