"""Bad input and failures: the right status and a message naming the field; nothing left behind.

Also storages through the RPCs: refcounted container storages, UpdateEphemeralMounts. With
crun and runc.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.protocols import agent_pb2, oci_pb2
from ttrpc.status import Code, RPCError

from .guest import GuestAgent
from .pod import SHARED, Pod, add_rootfs, container_spec, create_request, share_storage

EPHEMERAL = "/run/kata-containers/sandbox/ephemeral/scratch"


def _error(fn, *args) -> RPCError:  # type: ignore[no-untyped-def]
    with pytest.raises(RPCError) as err:
        fn(*args)
    return err.value


def test_errors_and_storages(guest: GuestAgent, pod: Pod, share: Path) -> None:
    add_rootfs(share, "ok")
    ephemeral = agent_pb2.Storage(
        driver="ephemeral", source="tmpfs", fstype="tmpfs", options=["size=1m"], mount_point=EPHEMERAL
    )
    pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share), ephemeral]))

    def create(cid: str, spec: oci_pb2.Spec | None, **kw) -> None:  # type: ignore[no-untyped-def]
        req = (
            create_request(cid, spec)
            if spec is not None
            else agent_pb2.CreateContainerRequest(container_id=cid)
        )
        for key, value in kw.items():
            getattr(req, key).extend(value) if isinstance(value, list) else setattr(req, key, value)
        pod.call("CreateContainer", req)

    spec = container_spec("ok", ["sleep", "1000"])
    for bad in ("a", "../x", "-x", "x/y"):
        err = _error(create, bad, spec)
        assert err.code == Code.INVALID_ARGUMENT and "container_id" in err.message
    err = _error(create, "ok", None)
    assert err.code == Code.INVALID_ARGUMENT and "OCI" in err.message
    no_uts = container_spec("ok", ["true"])
    del no_uts.Linux.Namespaces[1]
    err = _error(create, "ok", no_uts)
    assert err.code == Code.INVALID_ARGUMENT and "hostname" in err.message
    err = _error(create, "ok", container_spec("ok", ["true"], root="/etc"))
    assert err.code == Code.INVALID_ARGUMENT and "root.path" in err.message
    dotdot = container_spec(
        "ok", ["true"], mounts=[oci_pb2.Mount(destination="/a/../b", type="tmpfs", source="tmpfs")]
    )
    err = _error(create, "ok", dotdot)
    assert err.code == Code.INVALID_ARGUMENT and "mounts[5].destination" in err.message
    err = _error(create, "ok", container_spec("ok", ["true"], cgroups_path="/a/../b"))
    assert err.code == Code.INVALID_ARGUMENT and "cgroupsPath" in err.message

    # A runtime failure comes back with the runtime's own words, and leaves nothing behind.
    err = _error(create, "ok", container_spec("ok", ["/no/such/binary"]))
    assert "/no/such/binary" in err.message, err.message
    assert list(guest.guest_path("/run/kata-agent/bundles").iterdir()) == []
    assert list(guest.guest_path("/run/kata-agent/oci").iterdir()) == []

    # Container storages are refcounted: two users of one local volume, gone after the last.
    volume = agent_pb2.Storage(
        driver="local",
        source="local",
        fstype="local",
        options=["mode=0777"],
        mount_point="/run/kata-containers/sandbox/local/vol",
    )
    volume_mount = oci_pb2.Mount(
        destination="/vol", type="bind", source=volume.mount_point, options=["rbind"]
    )
    add_rootfs(share, "ok2")
    for cid in ("ok", "ok2"):
        create(cid, container_spec(cid, ["sleep", "1000"], mounts=[volume_mount]), storages=[volume])
    assert guest.guest_path(volume.mount_point).is_dir()
    assert _error(create, "ok", spec).code == Code.ALREADY_EXISTS
    err = _error(pod.exec, "ok", "early", ["true"])
    assert err.code == Code.FAILED_PRECONDITION and "created" in err.message
    assert _error(pod.start, "nope").code == Code.NOT_FOUND
    pod.start("ok")
    assert "ESRCH: No such process" in _error(pod.signal, "ok", "no-such-exec", 15).message
    # Concurrent waiters of an exec all get its status; then it is forgotten.
    pod.exec("ok", "waited", ["sh", "-c", "sleep 0.5; exit 3"])
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda _i: pod.wait("ok", "waited"), range(3)))
    assert codes == [3, 3, 3]
    assert _error(pod.wait, "ok", "waited").code == Code.NOT_FOUND
    pod.remove("ok", timeout=30)  # running: RemoveContainer kills it
    assert guest.guest_path(volume.mount_point).is_dir()
    pod.remove("ok2")
    assert not guest.guest_path(volume.mount_point).exists()

    # UpdateEphemeralMounts remounts a pod tmpfs with its new size.
    st = os.statvfs(guest.guest_path(EPHEMERAL))
    assert st.f_blocks * st.f_frsize == 1 << 20
    ephemeral.options[:] = ["size=2m"]
    pod.call("UpdateEphemeralMounts", agent_pb2.UpdateEphemeralMountsRequest(storages=[ephemeral]))
    st = os.statvfs(guest.guest_path(EPHEMERAL))
    assert st.f_blocks * st.f_frsize == 2 << 20
    missing = agent_pb2.Storage(
        driver="ephemeral", fstype="tmpfs", mount_point=f"{SHARED}/../nope", options=["size=1m"]
    )
    err = _error(
        pod.call, "UpdateEphemeralMounts", agent_pb2.UpdateEphemeralMountsRequest(storages=[missing])
    )
    assert err.code == Code.NOT_FOUND
