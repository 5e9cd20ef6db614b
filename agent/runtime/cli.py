"""Argument vectors for the OCI runtime CLI (crun by default, runc as alternative).

Pure functions: nothing here spawns, waits or reads a pipe. The agent's event loop spawns
the argv these build and hands each exit to the one reaper (see DESIGN.md), the way
go-runc lets containerd's shim plug in its own process monitor.

Both runtimes take the same command line for everything we use; global options go before
the subcommand, subcommand options before the container id (runc's CLI parser stops at
the first positional argument). Signals are passed as numbers, which both accept.

What we learned running both on a cgroup v1 machine (crun 1.8.1, runc 1.1.5), with
``tests/containers/test_runtime_lifecycle.py`` as the proof:

* Hybrid cgroups: the host mounts v1 controllers under /sys/fs/cgroup *and* a cgroup2
  hierarchy at /sys/fs/cgroup/unified holding a controller (hugetlb). crun refuses that
  ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2") for every
  container; runc accepts it. A Kata guest mounts its own cgroups, so the agent must
  mount either pure v1 or pure v2 (no controller-bearing ``unified``) for crun to work.
  The tests reproduce a guest's view in a private mount namespace: a fresh tmpfs on
  /sys/fs/cgroup with each v1 controller bind-mounted from a per-test parent cgroup.
* ``cgroupsPath``: use an absolute path (``/kata/<sandbox>/<container>``). crun resolves
  any path, relative or absolute, from the root of each mounted hierarchy; runc resolves a
  *relative* path from its own cgroup in each hierarchy, so the two disagree on relative
  paths and agree on absolute ones. An empty cgroupsPath means "the container id" to
  both, with the same disagreement, so the agent must always set an absolute one.
* cgroupfs, not systemd: a guest has no systemd, so ``--systemd-cgroup`` stays off and a
  ``slice:prefix:name`` cgroupsPath from the host must be rewritten before use.
* A container created without a terminal inherits the stdio of ``create``; whoever spawns
  it must hand over the pipes meant for the container (and never wait for EOF on the
  ``create`` process's own output, which the container holds open).
* ``crun state`` reports ``rootfs`` as written in config.json (possibly relative);
  ``runc state`` reports it absolute. A stopped container has ``pid`` 0 under runc.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from agent.errors import Internal

STATUSES = frozenset({"creating", "created", "running", "paused", "stopped"})
DEFAULT_STATE_ROOT = "/run/kata-agent/oci"


@dataclass(frozen=True)
class RuntimeCLI:
    """How to call one OCI runtime binary; every method returns an argv list."""

    binary: str = "crun"
    root: str = DEFAULT_STATE_ROOT
    log: str | None = None
    log_format: str = "json"
    systemd_cgroup: bool = False

    @property
    def flavor(self) -> str:
        """'crun' or 'runc' (or the binary's name for anything else)."""
        return os.path.basename(self.binary)

    def _base(self) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if self.log:
            argv += ["--log", self.log, "--log-format", self.log_format]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return argv

    def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        *,
        console_socket: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
    ) -> list[str]:
        """``create``: set the container up, its init waiting for ``start``."""
        argv = [*self._base(), "create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            argv += ["--console-socket", console_socket]
        if no_pivot:
            argv.append("--no-pivot")
        if preserve_fds:
            argv += ["--preserve-fds", str(preserve_fds)]
        return [*argv, container_id]

    def start(self, container_id: str) -> list[str]:
        """``start``: let the created init run the user's process."""
        return [*self._base(), "start", container_id]

    def exec(
        self,
        container_id: str,
        process_file: str,
        pid_file: str,
        *,
        detach: bool = True,
        console_socket: str | None = None,
        preserve_fds: int = 0,
    ) -> list[str]:
        """``exec --process``: run another process (a process.json) in the container."""
        argv = [*self._base(), "exec", "--process", process_file, "--pid-file", pid_file]
        if detach:
            argv.append("--detach")
        if console_socket:
            argv += ["--console-socket", console_socket]
        if preserve_fds:
            argv += ["--preserve-fds", str(preserve_fds)]
        return [*argv, container_id]

    def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> list[str]:
        """``kill``: signal the init (or, with ``all_processes``, every process)."""
        argv = [*self._base(), "kill"]
        if all_processes:
            argv.append("--all")
        return [*argv, container_id, str(int(signal))]

    def delete(self, container_id: str, *, force: bool = False) -> list[str]:
        """``delete``: drop the runtime's state and cgroups (``force`` kills first)."""
        argv = [*self._base(), "delete"]
        if force:
            argv.append("--force")
        return [*argv, container_id]

    def pause(self, container_id: str) -> list[str]:
        """``pause``: freeze every process of the container."""
        return [*self._base(), "pause", container_id]

    def resume(self, container_id: str) -> list[str]:
        """``resume``: thaw a paused container."""
        return [*self._base(), "resume", container_id]

    def update(self, container_id: str, resources_file: str) -> list[str]:
        """``update --resources``: apply a linux.resources JSON document."""
        return [*self._base(), "update", "--resources", resources_file, container_id]

    def state(self, container_id: str) -> list[str]:
        """``state``: print the container's state JSON on stdout."""
        return [*self._base(), "state", container_id]

    def ps(self, container_id: str) -> list[str]:
        """``ps --format json``: print the container's pids as a JSON array."""
        return [*self._base(), "ps", "--format", "json", container_id]


@dataclass(frozen=True)
class ContainerState:
    """The runtime's ``state`` answer (runtime-spec "State")."""

    id: str
    status: str
    pid: int
    bundle: str
    oci_version: str = ""
    rootfs: str = ""
    created: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


def parse_state(output: str | bytes) -> ContainerState:
    """Parse ``state`` output; a malformed answer is an Internal error naming the field."""
    try:
        doc: Any = json.loads(output)
    except ValueError as e:
        raise Internal(f"runtime state output is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Internal("runtime state output is not a JSON object")
    for key, kind in (("id", str), ("status", str), ("pid", int), ("bundle", str)):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise Internal(f"runtime state output: {key!r} missing or not a {kind.__name__}")
    if doc["status"] not in STATUSES:
        raise Internal(f"runtime state output: unknown status {doc['status']!r}")
    annotations = doc.get("annotations")
    annotations = {} if annotations is None else annotations
    if not isinstance(annotations, dict):
        raise Internal("runtime state output: 'annotations' is not an object")
    return ContainerState(
        id=doc["id"],
        status=doc["status"],
        pid=doc["pid"],
        bundle=doc["bundle"],
        oci_version=str(doc.get("ociVersion", "")),
        rootfs=str(doc.get("rootfs", "")),
        created=str(doc.get("created", "")),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def parse_ps(output: str | bytes) -> list[int]:
    """Parse ``ps --format json`` output (a JSON array of pids)."""
    try:
        doc = json.loads(output)
    except ValueError as e:
        raise Internal(f"runtime ps output is not JSON: {e}") from None
    if not isinstance(doc, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in doc):
        raise Internal("runtime ps output is not a JSON array of pids")
    return doc


def error_message(stderr: bytes | str, log_text: str | None = None) -> str:
    """The most useful line of a failed invocation: the last error of the JSON log, else stderr.

    Both runtimes write ``{"level": "error", "msg": "..."}`` lines to ``--log`` with
    ``--log-format json``; crun also prints plain text on stderr.
    """
    if log_text:
        for line in reversed(log_text.splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
                return str(entry["msg"])
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "the OCI runtime failed without a message"


def is_missing_container(cli: RuntimeCLI, container_id: str, message: str) -> bool:
    """Whether a runtime error says the container itself does not exist.

    runc says "container does not exist"; crun names its state path with ENOENT
    ("error opening file `<root>/<id>/status`: No such file or directory"). A missing
    executable inside the container also says "not found", which is not this.
    """
    text = message.lower()
    if "container does not exist" in text or f"container `{container_id.lower()}` does not exist" in text:
        return True
    state_dir = os.path.join(cli.root, container_id).lower()
    return "no such file or directory" in text and any(
        state_dir + end in text for end in ("/", "`", "'", '"')
    )
