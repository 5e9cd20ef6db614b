"""A pod's whole life through the agent, in the Kata runtime's order, with crun and with runc.

CreateSandbox -> CreateContainer x2 -> StartContainer -> ReadStdout/ReadStderr ->
ExecProcess (pipes, then a tty) -> WriteStdin/CloseStdin/TtyWinResize ->
StatsContainer -> Pause/Resume -> UpdateContainer -> SignalProcess(SIGTERM),
SIGKILL to all -> WaitProcess -> RemoveContainer -> RemoveStaleVirtiofsShareMounts
-> DestroySandbox. Meanwhile a GetOOMEvent and a WaitProcess stay pending on the
same connection, as the runtime's would, and must delay nothing. Outcomes are
checked in the kernel (cgroup files, namespaces, processes), not only in replies.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from agent.protocols import agent_pb2, oci_pb2
from ttrpc.status import Code, RPCError

from .guest import GuestAgent
from .pod import MiB, Pod, add_rootfs, container_spec, share_storage

HOSTNAME = "e2e-pod"


def _background(fn) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    box: list = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_pod_lifecycle(guest: GuestAgent, pod: Pod, share: Path) -> None:
    for cid in ("infra", "app"):
        add_rootfs(share, cid)
    # The runtime's sandbox-wide OOM loop: a call that blocks for the pod's whole life.
    oom_thread, oom_box = _background(
        lambda: guest.call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent, timeout=None)
    )
    pod.call(
        "CreateSandbox",
        agent_pb2.CreateSandboxRequest(
            hostname=HOSTNAME,
            dns=["nameserver 192.0.2.53", "search pod.test"],
            storages=[share_storage(share)],
            sandbox_pidns=True,
            sandbox_id="e2e-sandbox",
        ),
    )
    assert "nameserver 192.0.2.53" in guest.guest_path("/etc/resolv.conf").read_text()

    infra = [
        "sh",
        "-c",
        "trap 'echo term-received' TERM; echo ready; echo warming-up >&2; while :; do sleep 1; done",
    ]
    pod.create("infra", container_spec("infra", infra, hostname=HOSTNAME))
    pod.create(
        "app",
        container_spec("app", ["sh", "-c", "echo app-up; exec sleep 1000"], hostname=HOSTNAME),
        sandbox_pidns=True,
    )
    waiter, wait_box = _background(lambda: pod.wait("infra", "infra"))
    pod.start("infra")
    pod.start("app")
    assert pod.read_until("infra", "infra", b"ready\n") == b"ready\n"
    assert pod.read_until("infra", "infra", b"warming-up\n", stream="stderr") == b"warming-up\n"
    assert pod.read_until("app", "app", b"app-up\n") == b"app-up\n"

    # exec with pipes: stdin in, stdout and stderr apart, exit code; then the process is forgotten.
    pod.exec("app", "e1", ["sh", "-c", 'read first; echo "got:$first"; cat; echo done-err >&2; exit 4'])
    blob = bytes(range(256)) * 400
    assert pod.write("app", "e1", b"hello\n") == 6
    assert pod.write("app", "e1", blob) == len(blob)
    pod.call("CloseStdin", agent_pb2.CloseStdinRequest(container_id="app", exec_id="e1"))
    assert pod.read_all("app", "e1") == b"got:hello\n" + blob
    assert pod.read_all("app", "e1", stream="stderr") == b"done-err\n"
    assert pod.wait("app", "e1") == 4
    with pytest.raises(RPCError) as gone:
        pod.signal("app", "e1", signal.SIGTERM)
    assert "ESRCH: No such process" in gone.value.message
    with pytest.raises(RPCError) as gone:
        pod.wait("app", "e1")
    assert gone.value.code == Code.NOT_FOUND

    # exec with a terminal: window size, shared UTS/IPC/PID namespaces seen from inside.
    status, ns_infra, _ = pod.run(
        "infra", "ns", ["sh", "-c", "readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc"]
    )
    assert status == 0
    pod.exec("app", "t1", ["sh"], terminal=True)
    pod.call(
        "TtyWinResize", agent_pb2.TtyWinResizeRequest(container_id="app", exec_id="t1", row=40, column=120)
    )
    script = "stty size; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; readlink /proc/self/ns/uts; readlink /proc/self/ns/ipc; exit 5\n"
    pod.write("app", "t1", script.encode())
    tty_out = pod.read_all("app", "t1").replace(b"\r\n", b"\n")
    assert pod.wait("app", "t1") == 5
    assert b"40 120\n" in tty_out
    assert f"\n{HOSTNAME}\n".encode() in tty_out
    assert b"trap 'echo term-received' TERM" in tty_out  # PID 1 of app's namespace is infra's init
    assert ns_infra in tty_out

    # Stats from the container's cgroup.
    stats = pod.stats("infra").cgroup_stats
    assert stats.cpu_stats.cpu_usage.total_usage > 0
    assert stats.memory_stats.usage.usage > 0
    assert stats.pids_stats.current >= 2 and stats.pids_stats.limit == 128

    # Pause and resume: the freezer state in the kernel.
    freezer = guest.cgroup_dir("freezer", "/kata-pod/infra") / "freezer.state"
    pod.call("PauseContainer", agent_pb2.PauseContainerRequest(container_id="infra"))
    assert freezer.read_text().strip() == "FROZEN"
    pod.call("ResumeContainer", agent_pb2.ResumeContainerRequest(container_id="infra"))
    assert freezer.read_text().strip() == "THAWED"

    # UpdateContainer: limits land in the cgroup.
    resources = oci_pb2.LinuxResources(
        Memory=oci_pb2.LinuxMemory(Limit=256 * MiB, Swap=256 * MiB), Pids=oci_pb2.LinuxPids(Limit=64)
    )
    pod.call("UpdateContainer", agent_pb2.UpdateContainerRequest(container_id="app", resources=resources))
    memory = guest.cgroup_dir("memory", "/kata-pod/app")
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(256 * MiB)
    assert (guest.cgroup_dir("pids", "/kata-pod/app") / "pids.max").read_text().strip() == "64"

    # Teardown as the runtime does it: SIGTERM, then SIGKILL to all, WaitProcess, RemoveContainer.
    pod.exec("infra", "bg", ["sleep", "1000"])
    pod.signal("app", "", signal.SIGTERM)  # no handler in app's init: the agent makes it SIGKILL
    assert pod.wait("app", "app") == 128 + signal.SIGKILL
    pod.signal("app", "", signal.SIGKILL)  # init gone already: still fine
    pod.signal("infra", "", signal.SIGTERM)
    assert pod.read_until("infra", "infra", b"term-received\n").endswith(b"term-received\n")
    pod.signal("infra", "", signal.SIGKILL)
    assert pod.wait("infra", "infra") == 128 + signal.SIGKILL
    assert pod.wait("infra", "bg") == 128 + signal.SIGKILL
    waiter.join(30)
    assert wait_box == [128 + signal.SIGKILL]
    assert pod.read_all("infra", "infra") == b""
    for cid in ("app", "infra"):
        pod.remove(cid)
        assert not guest.cgroup_dir("memory", f"/kata-pod/{cid}").exists()
    with pytest.raises(RPCError) as missing:
        pod.stats("infra")
    assert missing.value.code == Code.NOT_FOUND
    assert list(guest.guest_path("/run/kata-agent/oci").iterdir()) == []
    assert list(guest.guest_path("/run/kata-agent/bundles").iterdir()) == []
    pod.call("RemoveStaleVirtiofsShareMounts", agent_pb2.RemoveStaleVirtiofsShareMountsRequest())

    assert oom_thread.is_alive() and not oom_box  # still pending, delayed nothing
    pod.call("DestroySandbox", agent_pb2.DestroySandboxRequest())
    guest.proc.wait(30)  # PID 1 powers its "VM" off after DestroySandbox
    oom_thread.join(10)
    assert len(oom_box) == 1 and isinstance(oom_box[0], RPCError)
