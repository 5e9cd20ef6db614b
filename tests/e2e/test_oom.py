"""A memory-limited container that is OOM-killed produces a GetOOMEvent with its id."""

from __future__ import annotations

from pathlib import Path

from agent.protocols import agent_pb2

from .guest import GuestAgent
from .pod import MiB, Pod, add_rootfs, container_spec, share_storage


def test_oom_event(crun_guest: GuestAgent, share: Path) -> None:
    pod = Pod(crun_guest)
    add_rootfs(share, "hog")
    pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
    # dd touches its whole 256 MiB buffer while reading /dev/zero: far above the 32 MiB limit.
    args = ["sh", "-c", "echo before; dd if=/dev/zero of=/dev/null bs=256M count=1; echo after-$?"]
    pod.create("hog", container_spec("hog", args, memory=32 * MiB))
    pod.start("hog")
    event = crun_guest.call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent, timeout=60)
    assert event.container_id == "hog"
    assert pod.read_all("hog", "hog") == b"before\nafter-137\n"
    assert pod.wait("hog", "hog") == 0
    pod.remove("hog")
