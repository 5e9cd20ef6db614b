"""Requests shaped like the Kata runtime's: the virtio-fs share, container specs, helpers.

The host side of Kata shares ``<host dir>`` with the guest over virtio-fs and
mounts it at ``/run/kata-containers/shared/containers``; each container's
rootfs is ``<share>/<id>/rootfs``. Here the share is a bind-mount storage of a
test directory (the ``virtio-fs`` driver with ``bind``), the rootfs a busybox
tree. Specs carry what the runtime sends after its own rewriting: no network
namespace (the VM's is the pod's), no PID namespace (the agent adds it).
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.protocols import agent_pb2, oci_pb2
from tests.containers.rootfs import build_rootfs

SHARED = "/run/kata-containers/shared/containers"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MiB = 1024 * 1024
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_RAW"]


def share_storage(host_dir: Path) -> agent_pb2.Storage:
    """The pod's shared directory, as a bind-mounted virtio-fs storage."""
    return agent_pb2.Storage(
        driver="virtio-fs", source=str(host_dir), fstype="virtiofs", options=["bind"], mount_point=SHARED
    )


def add_rootfs(share: Path, container_id: str) -> Path:
    """A busybox rootfs at ``<share>/<id>/rootfs``."""
    return build_rootfs(share / container_id / "rootfs")


def process(args: list[str], *, terminal: bool = False, env: list[str] | None = None) -> oci_pb2.Process:
    return oci_pb2.Process(
        Terminal=terminal,
        User=oci_pb2.User(UID=0, GID=0),
        Args=args,
        Env=[PATH_ENV, "TERM=xterm", *(env or [])],
        Cwd="/",
        Capabilities=oci_pb2.LinuxCapabilities(Bounding=CAPS, Effective=CAPS, Permitted=CAPS),
        Rlimits=[oci_pb2.POSIXRlimit(Type="RLIMIT_NOFILE", Hard=1024, Soft=1024)],
        NoNewPrivileges=True,
    )


def default_mounts() -> list[oci_pb2.Mount]:
    """The mounts every test container gets: proc, a /dev tmpfs with devpts, /tmp, read-only /sys."""
    return [
        oci_pb2.Mount(destination="/proc", type="proc", source="proc"),
        oci_pb2.Mount(destination="/dev", type="tmpfs", source="tmpfs", options=["nosuid", "mode=755"]),
        oci_pb2.Mount(
            destination="/dev/pts",
            type="devpts",
            source="devpts",
            options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        ),
        oci_pb2.Mount(destination="/tmp", type="tmpfs", source="tmpfs", options=["nosuid", "nodev"]),
        oci_pb2.Mount(
            destination="/sys", type="sysfs", source="sysfs", options=["nosuid", "noexec", "nodev", "ro"]
        ),
    ]


def container_spec(
    container_id: str,
    args: list[str],
    *,
    terminal: bool = False,
    root: str | None = None,
    memory: int = 0,
    mounts: list[oci_pb2.Mount] | None = None,
    hostname: str = "pod",
    cgroups_path: str | None = None,
) -> oci_pb2.Spec:
    resources = oci_pb2.LinuxResources(
        Devices=[oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm")],
        Pids=oci_pb2.LinuxPids(Limit=128),
        CPU=oci_pb2.LinuxCPU(Shares=512),
    )
    if memory:
        resources.Memory.CopyFrom(oci_pb2.LinuxMemory(Limit=memory, Swap=memory))
    base_mounts = default_mounts()
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=process(args, terminal=terminal),
        Root=oci_pb2.Root(Path=root or f"{SHARED}/{container_id}/rootfs", Readonly=True),
        Hostname=hostname,
        Mounts=[*base_mounts, *(mounts or [])],
        Linux=oci_pb2.Linux(
            Namespaces=[oci_pb2.LinuxNamespace(Type=t) for t in ("ipc", "uts", "mount")],
            CgroupsPath=cgroups_path if cgroups_path is not None else f"/kata-pod/{container_id}",
            Resources=resources,
            MaskedPaths=["/proc/kcore", "/proc/keys"],
            ReadonlyPaths=["/proc/sys", "/proc/sysrq-trigger"],
        ),
    )


def create_request(
    container_id: str, spec: oci_pb2.Spec, *, sandbox_pidns: bool = False
) -> agent_pb2.CreateContainerRequest:
    return agent_pb2.CreateContainerRequest(
        container_id=container_id, exec_id=container_id, OCI=spec, sandbox_pidns=sandbox_pidns
    )


def poll(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """The first truthy ``predicate()`` within ``timeout`` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Pod:
    """Typed shortcuts for the calls a test makes on one agent (``GuestAgent.call``)."""

    def __init__(self, guest) -> None:  # type: ignore[no-untyped-def]
        self.guest = guest

    def call(self, method: str, request, reply=None, timeout: float = 60):  # type: ignore[no-untyped-def]
        from google.protobuf import empty_pb2

        return self.guest.call(method, request, reply or empty_pb2.Empty, timeout=timeout)

    def read(self, cid: str, eid: str, size: int = 32768, stream: str = "stdout") -> bytes:
        method = "ReadStdout" if stream == "stdout" else "ReadStderr"
        req = agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=size)
        return self.call(method, req, agent_pb2.ReadStreamResponse, timeout=120).data

    def read_all(self, cid: str, eid: str, stream: str = "stdout") -> bytes:
        chunks = []
        while data := self.read(cid, eid, stream=stream):
            chunks.append(data)
        return b"".join(chunks)

    def read_until(
        self, cid: str, eid: str, needle: bytes, stream: str = "stdout", limit: int = 1 << 20
    ) -> bytes:
        buf = b""
        while needle not in buf:
            data = self.read(cid, eid, stream=stream)
            assert data, f"EOF before {needle!r}; got {buf[-500:]!r}"
            buf += data
            assert len(buf) < limit
        return buf

    def write(self, cid: str, eid: str, data: bytes) -> int:
        req = agent_pb2.WriteStreamRequest(container_id=cid, exec_id=eid, data=data)
        return self.call("WriteStdin", req, agent_pb2.WriteStreamResponse).len

    def wait(self, cid: str, eid: str) -> int:
        req = agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid)
        return self.call("WaitProcess", req, agent_pb2.WaitProcessResponse, timeout=120).status

    def signal(self, cid: str, eid: str, sig: int) -> None:
        self.call("SignalProcess", agent_pb2.SignalProcessRequest(container_id=cid, exec_id=eid, signal=sig))

    def exec(self, cid: str, eid: str, args: list[str], *, terminal: bool = False) -> None:
        req = agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=eid, process=process(args, terminal=terminal)
        )
        self.call("ExecProcess", req)

    def run(self, cid: str, eid: str, args: list[str]) -> tuple[int, bytes, bytes]:
        """Exec ``args`` to its end: (status, stdout, stderr)."""
        self.exec(cid, eid, args)
        out = self.read_all(cid, eid)
        err = self.read_all(cid, eid, stream="stderr")
        return self.wait(cid, eid), out, err

    def create(self, cid: str, spec: oci_pb2.Spec, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.call("CreateContainer", create_request(cid, spec, **kwargs))

    def start(self, cid: str) -> None:
        self.call("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))

    def remove(self, cid: str, timeout: int = 0) -> None:
        self.call("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid, timeout=timeout))

    def stats(self, cid: str) -> agent_pb2.StatsContainerResponse:
        req = agent_pb2.StatsContainerRequest(container_id=cid)
        return self.call("StatsContainer", req, agent_pb2.StatsContainerResponse)
