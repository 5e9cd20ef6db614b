"""200 sequential container lifecycles leave nothing behind in the agent or the kernel.

Each lifecycle is what the runtime does for a short-lived container: create,
start, WaitProcess, RemoveContainer. Afterwards the agent holds the same fds
and mounts, no cgroup, zombie, bundle or runtime state is left, and its PSS
grew by less than 1 MB. Measured after a warm-up (first-use imports, the
thread pool, the runtime's intermediate cgroup are created once).

PSS is asserted on its anonymous part (the agent's own heap): the file-backed
part is libc and the interpreter shared with every other process on the
machine, whose share of it moves by a megabyte as test processes come and go.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.protocols import agent_pb2

from .guest import GuestAgent, footprint
from .pod import SHARED, Pod, add_rootfs, container_spec, share_storage

LIFECYCLES = int(os.environ.get("KATA_E2E_LIFECYCLES", "200"))
WARMUP = 10


def lifecycle(pod: Pod, cid: str) -> None:
    pod.create(cid, container_spec(cid, ["true"], root=f"{SHARED}/base/rootfs"))
    pod.start(cid)
    assert pod.wait(cid, cid) == 0
    pod.remove(cid)


@pytest.mark.slow
def test_lifecycles_leave_nothing(crun_guest: GuestAgent, share: Path) -> None:
    pod = Pod(crun_guest)
    add_rootfs(share, "base")
    pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
    for i in range(WARMUP):
        lifecycle(pod, f"warm-{i}")
    before = footprint(crun_guest)
    started = time.monotonic()
    for i in range(LIFECYCLES):
        lifecycle(pod, f"life-{i}")
    elapsed = time.monotonic() - started
    after = footprint(crun_guest)
    print(
        f"{LIFECYCLES} lifecycles in {elapsed:.1f}s; PSS {before['pss_kb']} -> {after['pss_kb']} kB,"
        f" anonymous {before['pss_anon_kb']} -> {after['pss_anon_kb']} kB"
    )
    for key in ("fds", "mounts", "cgroups", "children"):
        assert after[key] == before[key], (key, before, after)
    assert after["zombies"] == [] and after["bundles"] == [] and after["runtime_state"] == []
    assert after["pss_anon_kb"] - before["pss_anon_kb"] < 1024, (before, after)
