"""Security cases over the wire, as one table: every hostile request is refused with its status,
and nothing appears outside where it should.

One real agent (PID 1 of fresh namespaces, crun; ``tests/e2e/guest.py``) with a sandbox, the
pod's share and one running container ("victim", for exec ids). Each row names the attack,
the RPC and request, and the status expected:

- INVALID_ARGUMENT: the request is malformed by itself (``..``, ``/`` in ids, oversized fields);
- PERMISSION_DENIED: well formed, but it would reach what the agent must not touch (outside the
  share, the rootfs or the storage directories; the guest's root disk);
- NOT_FOUND only where it is the honest answer and is said so in the row (e.g. an exec id that
  names no process).

Every ``..`` payload aims at a file named ``ESCAPE``; after the table no such name exists in the
guest's /, /tmp, /run, /etc, the share, nor in the host's /tmp. Unit-level cases (path
resolution, id shapes, CopyFile symlink races) live in tests/containers and tests/guest; this
file checks that the same refusals reach the wire with the right status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.protocols import agent_pb2, health_pb2, oci_pb2
from tests.e2e.conftest import require_guest_tools
from tests.e2e.guest import GuestAgent
from tests.e2e.pod import SHARED, Pod, add_rootfs, container_spec, create_request, share_storage
from ttrpc.status import Code, RPCError

ESCAPE = "ESCAPE"
UP = "../" * 12
INVALID, DENIED, NOT_FOUND = Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED, Code.NOT_FOUND


@dataclass
class Env:
    guest: GuestAgent
    pod: Pod
    share: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_guest_tools("crun")
    work = tmp_path_factory.mktemp("security")
    share = work / "share"
    share.mkdir()
    (work / "guest").mkdir()
    guest = GuestAgent(work / "guest", runtime="crun")
    try:
        pod = Pod(guest)
        pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
        add_rootfs(share, "victim")
        pod.create("victim", container_spec("victim", ["sleep", "1000"]))
        pod.start("victim")
        rootfs = add_rootfs(share, "evil")
        # Symlinks in a hostile rootfs, aimed out of it.
        (rootfs / "up").symlink_to(UP + "tmp")
        (rootfs / "abs").symlink_to("/tmp")
        (rootfs / "proc-root").symlink_to("/proc/1/root/tmp")
        yield Env(guest, pod, share)
    finally:
        guest.stop()


# --- requests --------------------------------------------------------------------------------


def _spec(cid: str = "evil", **kw: Any) -> oci_pb2.Spec:
    return container_spec(cid, ["true"], **kw)


def create(cid: str = "evil", spec: oci_pb2.Spec | None = None, **fields: Any) -> tuple[str, Any]:
    req = create_request(cid, spec if spec is not None else _spec())
    for key, value in fields.items():
        field = getattr(req, key)
        field.extend(value) if isinstance(value, list) else setattr(req, key, value)
    return "CreateContainer", req


def with_spec(mutate: Callable[[oci_pb2.Spec], None], **fields: Any) -> tuple[str, Any]:
    spec = _spec()
    mutate(spec)
    return create("evil", spec, **fields)


def mount(dest: str, **kw: Any) -> Callable[[oci_pb2.Spec], None]:
    def m(spec: oci_pb2.Spec) -> None:
        spec.Mounts.append(oci_pb2.Mount(destination=dest, type="tmpfs", source="tmpfs", **kw))

    return m


def hook(kind: str, path: str) -> Callable[[oci_pb2.Spec], None]:
    def m(spec: oci_pb2.Spec) -> None:
        getattr(spec.Hooks, kind).append(oci_pb2.Hook(Path=path, Args=[path]))

    return m


def field(name: str, value: Any) -> Callable[[oci_pb2.Spec], None]:
    def m(spec: oci_pb2.Spec) -> None:
        target = spec
        *parents, leaf = name.split(".")
        for p in parents:
            target = getattr(target, p)
        attr = getattr(target, leaf)
        if isinstance(value, dict):
            attr.update(value)
        elif isinstance(value, list):
            del attr[:]
            attr.extend(value)
        else:
            setattr(target, leaf, value)

    return m


def storage(mount_point: str, driver: str = "ephemeral", source: str = "tmpfs", fstype: str = "tmpfs"):  # type: ignore[no-untyped-def]
    return agent_pb2.Storage(
        driver=driver, source=source, fstype=fstype, options=["size=1m"], mount_point=mount_point
    )


def exec_(eid: str, cid: str = "victim") -> tuple[str, Any]:
    proc = container_spec(cid, ["true"]).Process
    return "ExecProcess", agent_pb2.ExecProcessRequest(container_id=cid, exec_id=eid, process=proc)


def copy(path: str) -> tuple[str, Any]:
    return "CopyFile", agent_pb2.CopyFileRequest(path=path, file_size=1, file_mode=0o100644, data=b"x")


def _root_disk() -> tuple[str, int, int] | None:
    """The guest's (here: the host's) root block device: (node, major, minor), if it has one."""
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        uevent = Path(f"/sys/dev/block/{major}:{minor}/uevent").read_text()
    except OSError:
        return None
    names = [line[8:] for line in uevent.splitlines() if line.startswith("DEVNAME=")]
    return (f"/dev/{names[0]}", major, minor) if names else None


ROOT_DISK = _root_disk()


def root_disk_device() -> tuple[str, Any]:
    node, major, minor = ROOT_DISK or ("/dev/vda", 254, 0)

    def m(spec: oci_pb2.Spec) -> None:
        spec.Linux.Devices.append(oci_pb2.LinuxDevice(Path="/dev/xvda", Type="b", Major=major, Minor=minor))

    device = agent_pb2.Device(type="blk", vm_path=node, container_path="/dev/xvda")
    return with_spec(m, devices=[device])


def root_disk_storage() -> tuple[str, Any]:
    node = (ROOT_DISK or ("/dev/vda",))[0]
    return create(storages=[storage("/run/kata-containers/sandbox/rootdisk", "blk", node, "ext4")])


BIG = "A=" + "x" * (1 << 20)
CASES: list[tuple[str, Callable[[], tuple[str, Any]], set[Code]]] = [
    # container ids: `..`, `/`, absolute
    ("container_id ..", lambda: create(f"{UP}{ESCAPE}"), {INVALID}),
    ("container_id a/b", lambda: create("evil/x"), {INVALID}),
    ("container_id /abs", lambda: create(f"/tmp/{ESCAPE}"), {INVALID}),
    ("container_id ..", lambda: create(".."), {INVALID}),
    ("exec_id .. at create", lambda: create(exec_id=f"{UP}{ESCAPE}"), {INVALID}),
    ("exec_id .. at exec", lambda: exec_(f"{UP}{ESCAPE}"), {INVALID}),
    ("exec_id a/b at exec", lambda: exec_("a/b"), {INVALID}),
    (
        "container_id .. at exec",
        lambda: exec_("e1", cid=f"{UP}{ESCAPE}"),
        {INVALID},
    ),
    # storages
    (
        "storage mount_point ..",
        lambda: create(storages=[storage(f"/run/kata-containers/sandbox/{UP}tmp/{ESCAPE}")]),
        {INVALID, DENIED},
    ),
    ("storage mount_point outside", lambda: create(storages=[storage(f"/tmp/{ESCAPE}")]), {DENIED, INVALID}),
    # CopyFile
    ("CopyFile ..", lambda: copy(f"{SHARED}/{UP}tmp/{ESCAPE}"), {DENIED}),
    ("CopyFile relative", lambda: copy(f"{UP}tmp/{ESCAPE}"), {DENIED}),
    ("CopyFile outside", lambda: copy(f"/tmp/{ESCAPE}"), {DENIED}),
    # volumes and swap
    (
        "GetVolumeStats ..",
        lambda: ("GetVolumeStats", agent_pb2.VolumeStatsRequest(volume_guest_path=f"{SHARED}/{UP}etc")),
        {INVALID},
    ),
    (
        "ResizeVolume ..",
        lambda: ("ResizeVolume", agent_pb2.ResizeVolumeRequest(volume_guest_path=f"{SHARED}/{UP}")),
        {INVALID},
    ),
    (
        "AddSwapPath ..",
        lambda: ("AddSwapPath", agent_pb2.AddSwapPathRequest(path=f"{SHARED}/{UP}run/swap-{ESCAPE}")),
        {INVALID},
    ),
    # the spec's paths
    ("hook path ..", lambda: with_spec(hook("Prestart", f"/bin/{UP}tmp/{ESCAPE}")), {INVALID}),
    ("hook path relative", lambda: with_spec(hook("Poststart", "bin/sh")), {INVALID}),
    ("createRuntime hook ..", lambda: with_spec(hook("CreateRuntime", f"/usr/{UP}bin/sh")), {INVALID}),
    ("cgroupsPath ..", lambda: create(spec=_spec(cgroups_path=f"/kata/{UP}{ESCAPE}")), {INVALID}),
    ("root.path ..", lambda: create(spec=_spec(root=f"{SHARED}/evil/{UP}tmp")), {INVALID, DENIED}),
    ("root.path outside", lambda: create(spec=_spec(root="/etc")), {INVALID, DENIED}),
    ("mount destination ..", lambda: with_spec(mount(f"/tmp/{UP}{ESCAPE}")), {INVALID}),
    ("mount destination relative ..", lambda: with_spec(mount(f"{UP}{ESCAPE}")), {INVALID}),
    # A destination through a symlink into /proc, resolved once /proc is mounted: the agent's
    # check sees the rootfs's empty /proc; crun's openat2 refuses the crossing (EXDEV), INTERNAL.
    (
        "mount through /proc/1/root symlink",
        lambda: with_spec(mount(f"/proc-root/{ESCAPE}")),
        {DENIED, INVALID, Code.INTERNAL},
    ),
    # the guest's root disk
    ("device: root disk", root_disk_device, {DENIED}),
    ("storage: root disk", root_disk_storage, {DENIED}),
    # oversized fields
    (
        "env: 100k entries",
        lambda: with_spec(field("Process.Env", [f"V{i}=1" for i in range(100_000)])),
        {INVALID},
    ),
    ("env: a 1 MiB string", lambda: with_spec(field("Process.Env", [BIG])), {INVALID}),
    ("args: 100k entries", lambda: with_spec(field("Process.Args", ["true"] * 100_000)), {INVALID}),
    ("args: a 1 MiB string", lambda: with_spec(field("Process.Args", ["x" * (1 << 20)])), {INVALID}),
    (
        "annotations: 100k entries",
        lambda: with_spec(field("Annotations", {f"k{i}": "v" for i in range(100_000)})),
        {INVALID},
    ),
    ("annotations: 1 MiB value", lambda: with_spec(field("Annotations", {"k": "x" * (1 << 20)})), {INVALID}),
    (
        "exec env: 100k entries",
        lambda: (
            "ExecProcess",
            agent_pb2.ExecProcessRequest(
                container_id="victim",
                exec_id="big",
                process=oci_pb2.Process(Args=["true"], Cwd="/", Env=[f"V{i}=1" for i in range(100_000)]),
            ),
        ),
        {INVALID},
    ),
]


@pytest.mark.parametrize(("name", "build", "codes"), CASES, ids=[c[0] for c in CASES])
def test_refused(env: Env, name: str, build: Callable[[], tuple[str, Any]], codes: set[Code]) -> None:
    if "root disk" in name and ROOT_DISK is None:
        pytest.skip("/ is not on a block device here")
    method, request = build()
    try:
        env.pod.call(method, request, timeout=30)
    except RPCError as e:
        err = e
    else:
        if method == "CreateContainer":  # keep the next rows meaningful
            env.pod.remove(request.container_id)
        pytest.fail(f"{name}: {method} was accepted")
    assert err.code in codes, f"{name}: {err.code.name}: {err.message}"


# Symlinks in the rootfs are resolved *in* the rootfs (as the runtime resolves them): a relative
# link climbing out and an absolute link both land inside it. Accepted, and confined.
CONFINED = [("relative ../ link", "up"), ("absolute link", "abs")]


@pytest.mark.parametrize(("name", "link"), CONFINED, ids=[c[0] for c in CONFINED])
def test_mount_through_symlinks_is_confined(env: Env, name: str, link: str) -> None:
    spec = container_spec("evil", ["sleep", "1000"])
    mount(f"/{link}/{ESCAPE}")(spec)
    env.pod.create("evil", spec)
    try:
        env.pod.start("evil")
        status, out, _err = env.pod.run("evil", "look", ["grep", ESCAPE, "/proc/self/mountinfo"])
        assert status == 0 and f" /tmp/{ESCAPE} ".encode() in out, out
        assert not os.path.exists(f"/tmp/{ESCAPE}")
        assert not env.guest.guest_path(f"/tmp/{ESCAPE}").exists()
    finally:
        env.pod.remove("evil", timeout=10)


def test_nothing_escaped(env: Env) -> None:
    """Runs after the table: no ESCAPE anywhere, no stray container, and the agent still serves."""
    guest = env.guest
    for where in ("/", "/tmp", "/run", "/etc", "/run/kata-containers", SHARED):
        found = [p for p in os.listdir(guest.guest_path(where)) if ESCAPE in p]
        assert found == [], (where, found)
    assert [p for p in os.listdir("/tmp") if ESCAPE in p] == []
    assert sorted(os.listdir(guest.guest_path("/run/kata-agent/bundles"))) == ["victim"]
    reply = guest.client.call(
        "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert env.pod.run("victim", "after", ["echo", "ok"]) == (0, b"ok\n", b"")
