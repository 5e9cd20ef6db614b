"""Faults over the wire, on a real agent (PID 1 of fresh namespaces, crun): each gives a clear
error with the right status, rolls back what it did, and leaves the agent healthy.

- the OCI runtime binary missing (no ``crun`` on the agent's PATH);
- the runtime failing (a ``crun`` wrapper on PATH that exits 1 with a message on ``create``);
- a storage list failing half-way (the first storage is unmounted again);
- a container whose process exits before StartContainer (no hang; WaitProcess completes);
- a full disk under CopyFile (a 1 MiB tmpfs as the shared directory).

"Rolled back" is checked from the host through ``/proc/<agent>/``: the agent's mount table,
its bundle and runtime-state directories, its children.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.protocols import agent_pb2, health_pb2
from tests.e2e.conftest import require_guest_tools
from tests.e2e.guest import GuestAgent, children, process_state
from tests.e2e.pod import Pod, add_rootfs, container_spec, share_storage
from ttrpc.status import Code, RPCError

# Runs the agent with PATH taken from FAULT_PATH (the launcher itself keeps the host's PATH).
_WITH_PATH = (
    "-c",
    "import os, runpy; os.environ['PATH'] = os.environ['FAULT_PATH']; "
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)",
)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_guest_tools("crun")


def _start(workdir: Path, *, path: str | None = None, env: dict[str, str] | None = None) -> GuestAgent:
    workdir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(env or {})
    if path is not None:
        os.environ["FAULT_PATH"] = path
    try:
        return GuestAgent(workdir, python_args=_WITH_PATH if path is not None else ("-m", "agent"))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _error(fn, *args, **kwargs) -> RPCError:  # type: ignore[no-untyped-def]
    with pytest.raises(RPCError) as err:
        fn(*args, **kwargs)
    return err.value


def _mount_points(guest: GuestAgent) -> set[str]:
    lines = Path(f"/proc/{guest.pid}/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines}


def _bundles(guest: GuestAgent) -> list[str]:
    out = []
    for d in ("/run/kata-agent/bundles", "/run/kata-agent/oci"):
        p = guest.guest_path(d)
        out += [x.name for x in p.iterdir()] if p.is_dir() else []
    return out


def _check(guest: GuestAgent) -> None:
    reply = guest.client.call(
        "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _run_normal(pod: Pod, share: Path, cid: str) -> None:
    """A normal container runs to its end and is removed."""
    if not (share / cid).exists():
        add_rootfs(share, cid)
    pod.create(cid, container_spec(cid, ["sh", "-c", "echo ok"]))
    pod.start(cid)
    assert pod.read_all(cid, cid) == b"ok\n"
    assert pod.wait(cid, cid) == 0
    pod.remove(cid)


def _no_leftovers(guest: GuestAgent, before: set[str]) -> None:
    assert _bundles(guest) == []
    assert _mount_points(guest) - before == set()
    live = [c for c in children(guest.pid) if process_state(c) not in ("Z", "?")]
    assert live == [], live


@pytest.fixture
def share(tmp_path: Path) -> Path:
    path = tmp_path / "share"
    path.mkdir()
    return path


def test_runtime_binary_missing(tmp_path: Path, share: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    guest = _start(tmp_path / "g", path=str(empty))
    try:
        pod = Pod(guest)
        pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
        before = _mount_points(guest)
        add_rootfs(share, "c1")
        err = _error(pod.create, "c1", container_spec("c1", ["true"]))
        # The spawn's ENOENT, named: "cannot start crun: No such file or directory".
        assert err.code == Code.NOT_FOUND, err
        assert "cannot start crun" in err.message, err.message
        _no_leftovers(guest, before)
        _check(guest)
        assert _error(pod.start, "c1").code == Code.NOT_FOUND
    finally:
        guest.stop()


def test_runtime_failing(tmp_path: Path, share: Path) -> None:
    crun = shutil.which("crun")
    wrapper_dir = tmp_path / "wrapper-bin"
    wrapper_dir.mkdir()
    flag = tmp_path / "fail"
    flag.touch()
    wrapper = wrapper_dir / "crun"
    wrapper.write_text(
        "#!/bin/sh\n"  # fails `create` as runc/crun do: an error line in the --log file, exit 1
        f"if [ -e {flag} ]; then log=; prev=; for a; do\n"
        '  if [ "$prev" = --log ]; then log=$a; fi; prev=$a\n'
        '  if [ "$a" = create ]; then\n'
        '    echo \'{"level":"error","msg":"wrapper: injected failure"}\' >> "${log:-/dev/stderr}"; exit 1\n'
        "  fi; done; fi\n"
        f'exec {crun} "$@"\n'
    )
    wrapper.chmod(0o755)
    guest = _start(tmp_path / "g", path=f"{wrapper_dir}:{os.environ['PATH']}")
    try:
        pod = Pod(guest)
        pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
        before = _mount_points(guest)
        add_rootfs(share, "c1")
        err = _error(pod.create, "c1", container_spec("c1", ["true"]))
        assert err.code == Code.INTERNAL, err
        assert "injected failure" in err.message, err.message
        _no_leftovers(guest, before)
        _check(guest)
        flag.unlink()  # the runtime recovers: the same id is free again
        _run_normal(pod, share, "c1")
        _no_leftovers(guest, before)
    finally:
        guest.stop()


def test_storage_failing_half_way(tmp_path: Path, share: Path) -> None:
    guest = _start(tmp_path / "g")
    try:
        pod = Pod(guest)
        good = agent_pb2.Storage(
            driver="ephemeral",
            source="tmpfs",
            fstype="tmpfs",
            options=["size=1m"],
            mount_point="/run/kata-containers/sandbox/ephemeral/first",
        )
        bad = agent_pb2.Storage(
            driver="virtio-fs",
            source=str(tmp_path / "does-not-exist"),
            fstype="virtiofs",
            options=["bind"],
            mount_point="/run/kata-containers/sandbox/ephemeral/second",
        )
        before = _mount_points(guest)
        # At sandbox creation: the share and the first storage are mounted, then undone.
        err = _error(
            pod.call,
            "CreateSandbox",
            agent_pb2.CreateSandboxRequest(storages=[share_storage(share), good, bad]),
        )
        assert err.code == Code.NOT_FOUND and "does-not-exist" in err.message, err
        assert _mount_points(guest) == before
        assert not guest.guest_path(good.mount_point).exists()
        _check(guest)
        # Again at container creation, with the sandbox up.
        pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
        before = _mount_points(guest)
        add_rootfs(share, "c1")
        req = agent_pb2.CreateContainerRequest(
            container_id="c1", exec_id="c1", OCI=container_spec("c1", ["true"]), storages=[good, bad]
        )
        err = _error(pod.call, "CreateContainer", req)
        assert err.code == Code.NOT_FOUND and "does-not-exist" in err.message, err
        assert _mount_points(guest) == before
        assert not guest.guest_path(good.mount_point).exists()
        _no_leftovers(guest, before)
        _run_normal(pod, share, "c2")
    finally:
        guest.stop()


def test_container_exits_before_start(tmp_path: Path, share: Path) -> None:
    guest = _start(tmp_path / "g")
    try:
        pod = Pod(guest)
        pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
        before = _mount_points(guest)
        add_rootfs(share, "c1")
        # The init is `true`; StartContainer's exec fifo is opened after a pause: no hang either way.
        pod.create("c1", container_spec("c1", ["true"]))
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            pod.call("StartContainer", agent_pb2.StartContainerRequest(container_id="c1"), timeout=15)
        except RPCError as err:
            assert err.code in (Code.FAILED_PRECONDITION, Code.INTERNAL), err
        assert (
            pod.call(
                "WaitProcess",
                agent_pb2.WaitProcessRequest(container_id="c1", exec_id="c1"),
                agent_pb2.WaitProcessResponse,
                timeout=15,
            ).status
            == 0
        )
        assert time.monotonic() - t0 < 15
        pod.remove("c1")
        _no_leftovers(guest, before)
        _check(guest)
        _run_normal(pod, share, "c2")
    finally:
        guest.stop()


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tiny", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_copyfile_on_a_full_disk(tmp_path: Path, tiny: Path) -> None:
    guest = _start(tmp_path / "g", env={"KATA_AGENT_SHARED_DIR": str(tiny)})
    try:
        pod = Pod(guest)
        size, chunk = 4 << 20, 256 << 10
        target = f"{tiny}/big"
        err = None
        for offset in range(0, size, chunk):
            req = agent_pb2.CopyFileRequest(
                path=target, file_size=size, file_mode=0o100644, offset=offset, data=b"x" * chunk
            )
            try:
                pod.call("CopyFile", req)
            except RPCError as e:
                err = e
                break
        assert err is not None, "4 MiB fitted in a 1 MiB tmpfs"
        assert err.code == Code.RESOURCE_EXHAUSTED, err
        assert "No space left" in err.message, err.message
        # The partial temporary file is removed: the disk is free again.
        assert os.listdir(guest.guest_path(str(tiny))) == []
        pod.call("CopyFile", agent_pb2.CopyFileRequest(path=f"{tiny}/small", file_size=3, data=b"abc"))
        assert guest.guest_path(f"{tiny}/small").read_bytes() == b"abc"
        _check(guest)
    finally:
        guest.stop()
