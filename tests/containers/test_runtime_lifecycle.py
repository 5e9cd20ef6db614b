"""Real containers with crun and runc: the generated config.json and argv work end to end.

Each runtime runs a busybox container through create -> state -> start -> exec ->
update -> pause/resume -> kill -> delete, inside a guest-like cgroup view (see
guestview.py), and we check the outcome in the kernel (cgroup files, process state),
not just the runtime's word.
"""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path

import pytest

from agent import cgroups
from agent.protocols import oci_pb2
from agent.runtime.bundle import write_config, write_json
from agent.runtime.cli import is_missing_container
from agent.runtime.spec import process_to_json, resources_to_json, spec_to_json
from agent.validation import validate_spec
from tests.e2e.pod import default_mounts

from .cgtree import assert_freezes
from .guestview import GuestView, require_tools
from .ocirun import OCIRunner, RuntimeFailed

RUNTIMES = ["crun", "runc"]
MiB = 1024 * 1024
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def busybox_spec(rootfs: Path, cid: str, args: list[str], *, terminal: bool = False) -> oci_pb2.Spec:
    """A protobuf Spec as the Kata runtime would send it (pods: own pid/ipc/uts/mount/net)."""
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"]
    mounts = default_mounts()
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(
            Terminal=terminal,
            User=oci_pb2.User(UID=0, GID=0),
            Args=args,
            Env=[PATH_ENV, "TERM=xterm"],
            Cwd="/",
            Capabilities=oci_pb2.LinuxCapabilities(Bounding=caps, Effective=caps, Permitted=caps),
            Rlimits=[oci_pb2.POSIXRlimit(Type="RLIMIT_NOFILE", Hard=1024, Soft=1024)],
            NoNewPrivileges=True,
        ),
        Root=oci_pb2.Root(Path=str(rootfs), Readonly=True),
        Hostname="kata-guest",
        Mounts=mounts,
        Linux=oci_pb2.Linux(
            Namespaces=[oci_pb2.LinuxNamespace(Type=t) for t in ("pid", "ipc", "uts", "mount", "network")],
            CgroupsPath=f"/{cid}",
            Resources=oci_pb2.LinuxResources(
                Devices=[oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm")],
                Memory=oci_pb2.LinuxMemory(Limit=64 * MiB),
                Pids=oci_pb2.LinuxPids(Limit=64),
                CPU=oci_pb2.LinuxCPU(Shares=512),
            ),
            MaskedPaths=["/proc/kcore", "/proc/keys"],
            ReadonlyPaths=["/proc/sys", "/proc/sysrq-trigger"],
        ),
    )


def write_bundle(rootfs: Path, cid: str, args: list[str], **kwargs) -> Path:
    config = spec_to_json(busybox_spec(rootfs, cid, args, **kwargs))
    validate_spec(config, rootfs=str(rootfs))
    bundle = rootfs.parent
    write_config(bundle, config)
    return bundle


@pytest.fixture(params=RUNTIMES)
def runner(request, guest_view: GuestView, tmp_path: Path):
    require_tools(request.param)
    r = OCIRunner(request.param, guest_view, tmp_path)
    yield r
    r.cleanup()


def test_lifecycle(runner: OCIRunner, rootfs: Path, v1_tree) -> None:
    cid = f"lifecycle-{runner.cli.flavor}"
    bundle = write_bundle(rootfs, cid, ["sh", "-c", "while :; do :; done"])
    cli = runner.cli

    pid = runner.create(cid, bundle)
    st = runner.state(cid)
    assert (st.id, st.status, st.pid) == (cid, "created", pid)
    assert os.path.realpath(st.bundle) == os.path.realpath(bundle)

    # The container's cgroup is inside our test parent, with the spec's limits applied.
    cg = cgroups.cgroup_of_pid(pid)
    assert isinstance(cg, cgroups.CgroupV1)
    assert cg.dir("memory") == v1_tree.parents["memory"] / cid
    assert (cg.dir("memory") / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
    assert (cg.dir("pids") / "pids.max").read_text().strip() == "64"
    assert (cg.dir("cpu") / "cpu.shares").read_text().strip() == "512"

    runner.check(cli.start(cid))
    assert runner.wait_status(cid, "running").status == "running"

    # exec: a process.json from a protobuf Process, output through the runtime's stdio.
    proc = oci_pb2.Process(
        User=oci_pb2.User(UID=0, GID=0),
        Args=["sh", "-c", "hostname; cat /proc/1/comm"],
        Env=[PATH_ENV],
        Cwd="/",
    )
    process_file = write_json(bundle / "exec.json", process_to_json(proc))
    out = runner.check(cli.exec(cid, str(process_file), str(bundle / "exec.pid"), detach=False))
    assert out.split() == ["kata-guest", "sh"]
    assert int((bundle / "exec.pid").read_text()) > 0

    stats = cgroups.read_stats(cg)
    assert stats.pids_stats.current >= 1 and stats.pids_stats.limit == 64
    assert stats.memory_stats.usage.limit == 64 * MiB and stats.memory_stats.usage.usage > 0

    # update: a resources document from protobuf.
    res = oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=96 * MiB), Pids=oci_pb2.LinuxPids(Limit=80))
    res_file = write_json(bundle / "resources.json", resources_to_json(res))
    runner.check(cli.update(cid, str(res_file)))
    assert (cg.dir("memory") / "memory.limit_in_bytes").read_text().strip() == str(96 * MiB)
    assert (cg.dir("pids") / "pids.max").read_text().strip() == "80"

    # pause: the busy loop stops burning CPU; resume: it runs again.
    def pause() -> None:
        runner.check(cli.pause(cid))
        assert runner.state(cid).status == "paused"
        assert cgroups.freezer_state(cg) == cgroups.FROZEN

    def resume() -> None:
        runner.check(cli.resume(cid))
        assert runner.state(cid).status == "running"

    assert_freezes(pid, pause, resume)

    runner.check(cli.kill(cid, 9))
    assert runner.wait_status(cid, "stopped").status == "stopped"
    runner.check(cli.delete(cid))
    rc, _out, err = runner.call(cli.state(cid))
    assert rc != 0 and is_missing_container(cli, cid, err), err
    assert not (v1_tree.parents["memory"] / cid).exists()


def test_kill_all_and_force_delete(runner: OCIRunner, rootfs: Path) -> None:
    cid = f"killall-{runner.cli.flavor}"
    bundle = write_bundle(rootfs, cid, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    pid = runner.create(cid, bundle)
    runner.check(runner.cli.start(cid))
    cg = cgroups.cgroup_of_pid(pid)
    deadline = time.monotonic() + 10
    while cgroups.read_stats(cg).pids_stats.current < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cgroups.read_stats(cg).pids_stats.current == 3
    runner.check(runner.cli.kill(cid, 15, all_processes=True))
    assert runner.wait_status(cid, "stopped").status == "stopped"
    # A running container needs --force to be deleted.
    cid2 = f"force-{runner.cli.flavor}"
    write_bundle(rootfs, cid2, ["sleep", "1000"])
    runner.create(cid2, bundle)
    runner.check(runner.cli.start(cid2))
    with pytest.raises(RuntimeFailed):
        runner.check(runner.cli.delete(cid2))
    runner.check(runner.cli.delete(cid2, force=True))
    runner.check(runner.cli.delete(cid))


def test_console_socket(runner: OCIRunner, rootfs: Path, tmp_path: Path) -> None:
    """With terminal=true the runtime hands the pty master over the console socket."""
    cid = f"tty-{runner.cli.flavor}"
    bundle = write_bundle(
        rootfs, cid, ["sh", "-c", "stty size; echo hello-from-tty; sleep 1000"], terminal=True
    )
    sock_path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)
    server.settimeout(30)
    try:
        runner.create(cid, bundle, console_socket=str(sock_path))
        conn, _ = server.accept()
        with conn:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        assert len(fds) == 1
        master = fds[0]
        try:
            runner.check(runner.cli.start(cid))
            data = b""
            deadline = time.monotonic() + 20
            while b"hello-from-tty" not in data and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    data += os.read(master, 4096)
            assert b"hello-from-tty" in data, data
        finally:
            os.close(master)
    finally:
        server.close()
    runner.check(runner.cli.kill(cid, 9))
    runner.wait_status(cid, "stopped")
    runner.check(runner.cli.delete(cid))


def test_create_failure_message(runner: OCIRunner, rootfs: Path) -> None:
    """A missing executable fails (crun at create, runc at start) with a message naming it."""
    cid = f"broken-{runner.cli.flavor}"
    bundle = write_bundle(rootfs, cid, ["/no/such/binary"])
    with pytest.raises(RuntimeFailed) as failure:
        runner.create(cid, bundle)
        runner.check(runner.cli.start(cid))
    assert "/no/such/binary" in str(failure.value)
    assert not is_missing_container(runner.cli, cid, str(failure.value))
