"""Run kata-agent as a guest would: PID 1 of fresh namespaces, with a guest's cgroups and /run.

What the namespaces get before the agent starts (a shell as PID 1 prepares it,
then ``exec``\\s the agent, which does its own PID-1 duties on top):

* pid, mount, net, uts, ipc and **cgroup** namespaces, a fresh /proc;
* a fresh tmpfs on /run (a guest's /run is empty: bundles, runtime state and
  storages never touch the host's);
* /sys/fs/cgroup as a guest mounts it: a tmpfs with one v1 hierarchy per host
  hierarchy and no cgroup2 ``unified`` mount (crun refuses that hybrid). The
  launcher first moves itself into a per-test parent cgroup (``V1Tree``) and
  the cgroup namespace makes that parent the root the guest sees, so every
  container cgroup lands inside the test's tree and is removed with it.

The agent is driven over its unix socket with the project's ttRPC client.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from tests.agent.harness import wait_ready
from tests.containers.cgtree import V1Tree

REPO = Path(__file__).resolve().parents[2]
SERVICE = "grpc.AgentService"

_INNER = """
set -e
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
umount -l /sys/fs/cgroup
mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup /sys/fs/cgroup
{cgroups}
exec "$@"
"""


def v1_hierarchies() -> list[tuple[str, str]]:
    """(directory name, mount options) of each cgroup v1 hierarchy mounted on this host."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if tail[0] != "cgroup":
            continue
        opts = [
            o
            for o in tail[2].split(",")
            if o not in ("rw", "ro", "xattr") and not o.startswith("release_agent")
        ]
        if any(o.startswith("name=") for o in opts):
            opts = ["none", *opts]
        out.append((os.path.basename(fields[4]), ",".join(opts)))
    return out


class GuestAgent:
    """One agent in its own "VM"; ``stop()`` (or the agent's own power-off) ends it."""

    def __init__(
        self, workdir: Path, *args: str, runtime: str = "crun", python_args: tuple[str, ...] = ("-m", "agent")
    ) -> None:
        self.workdir = workdir
        self.runtime = runtime
        self.sock = workdir / "agent.sock"
        self.log_path = workdir / "agent.log"
        self.tree = V1Tree(prefix="kata-e2e")
        mounts = []
        for name, opts in v1_hierarchies():
            target = shlex.quote(f"/sys/fs/cgroup/{name}")
            mounts.append(f"mkdir -p {target} && mount -t cgroup -o {shlex.quote(opts)} cgroup {target}")
        inner = _INNER.format(cgroups="\n".join(mounts))
        procs = sorted({str(d / "cgroup.procs") for d in self.tree.parents.values()})
        outer = (
            f'for f in {" ".join(shlex.quote(p) for p in procs)}; do echo $$ > "$f"; done; '
            "exec unshare --fork --kill-child=SIGKILL --pid --mount --net --uts --ipc --cgroup "
            '--mount-proc --propagation private sh -c "$INNER" guest-init "$@"'
        )
        agent_argv = [
            sys.executable,
            *python_args,
            "--server-addr",
            f"unix://{self.sock}",
            "--oci-runtime",
            runtime,
            "--log-level",
            "debug",
            *args,
        ]
        env = dict(os.environ, INNER=inner, PYTHONPATH=str(REPO))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                ["sh", "-c", outer, "guest-launcher", *agent_argv],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            self.client = wait_ready(f"unix://{self.sock}", self.proc, timeout=30)
        except BaseException:
            self._cleanup()
            raise

    @property
    def pid(self) -> int:
        """The agent's pid as the host sees it (PID 1 inside)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def call(self, method: str, request: Message, reply_type: type[Message], timeout: float = 60) -> Any:
        return self.client.call(SERVICE, method, request, reply_type, timeout=timeout)

    def guest_path(self, path: str) -> Path:
        """``path`` as the agent sees it (through its root, from the host)."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def cgroup_dir(self, controller: str, cgroup_path: str) -> Path:
        """A guest cgroup (``cgroupsPath``) in the host's ``controller`` hierarchy."""
        return self.tree.parents[controller] / cgroup_path.lstrip("/")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM the agent (its namespaces die with it); returns the launcher's status."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except (OSError, IndexError, ValueError):
                self.proc.kill()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()
        return self.proc.returncode

    def _thaw_all(self) -> None:
        freezer = self.tree.parents.get("freezer")
        if freezer is None:
            return
        for d, _dirs, files in os.walk(freezer):
            if "freezer.state" in files:
                try:
                    Path(d, "freezer.state").write_text("THAWED")
                except OSError:
                    pass

    def _cleanup(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._log.close()
        self._thaw_all()  # a frozen task cannot die, and its cgroups cannot go
        deadline = time.monotonic() + 10
        while True:
            try:
                self.tree.cleanup()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "?"


def pss_kb(pid: int, field: str = "Pss") -> int:
    """``field`` (Pss, Pss_Anon, Rss...) of /proc/<pid>/smaps_rollup, in kB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in smaps_rollup")


def footprint(guest: GuestAgent) -> dict[str, Any]:
    """What a container could leak, measured from the host: fds, mounts, cgroups, zombies, files."""
    pid = guest.pid
    cgroups = []
    for parent in sorted(set(guest.tree.parents.values())):
        cgroups += [os.path.relpath(d, parent) for d, _dirs, _files in os.walk(parent)]
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "mounts": len(Path(f"/proc/{pid}/mountinfo").read_text().splitlines()),
        "cgroups": len(cgroups),
        "zombies": [c for c in children(pid) if process_state(c) == "Z"],
        "children": len(children(pid)),
        "bundles": sorted(p.name for p in guest.guest_path("/run/kata-agent/bundles").iterdir()),
        "runtime_state": sorted(p.name for p in guest.guest_path("/run/kata-agent/oci").iterdir()),
        "pss_kb": pss_kb(pid),
        "pss_anon_kb": pss_kb(pid, "Pss_Anon"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python3 -m tests.e2e.guest --workdir DIR``: start a guest agent, print its address, and
    keep it until SIGTERM/SIGINT or until it powers itself off (examples/demo.sh uses this)."""
    import argparse
    import threading

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--runtime", default="crun", choices=("crun", "runc"))
    args, agent_args = parser.parse_known_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    guest = GuestAgent(args.workdir, *agent_args, runtime=args.runtime)
    try:
        print(f"unix://{guest.sock}", flush=True)
        while not stop.wait(0.2) and guest.proc.poll() is None:
            pass
    finally:
        guest.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
