"""What the fuzzers and hostile clients found, one test each (all fixed now: regression tests).

Each was an xfail(strict) test until its fix landed: guest services map stray
OS and value errors to statuses; OnlineCPUMem no longer sleeps in a pool
thread; an unknown fs_group policy is INVALID_ARGUMENT; a failed create ends
the waits on its init; the ttRPC server evicts an idle connection at its limit
and caps unsent replies across connections.

Each test states the correct behaviour; ``strict=True`` makes the fix visible
(the test then passes and the marker must go, with its KNOWN_UNKNOWN entry in
fuzzlib).  The proposed fixes are in tests/hardening/README.md.
"""

from __future__ import annotations

import time

from google.protobuf import json_format

from agent.protocols import agent_pb2
from tests.hardening import fuzzlib, hostile, seeds
from tests.hardening.sandbox import SandboxedAgent
from ttrpc.status import Code

METHODS = {m.name: m for m in fuzzlib.agent_methods()}


def call(agent: SandboxedAgent, *requests: tuple[str, object], deadline: float = 10.0) -> list[fuzzlib.Reply]:
    """Send the requests pipelined on one connection; the replies in arrival order."""
    with fuzzlib.WireClient(agent.address) as client:
        for method, request in requests:
            client.send(METHODS[method], request.SerializeToString(), deadline)  # type: ignore[attr-defined]
        return sorted(client.drain(grace=30))  # by stream id: in the order sent


def test_add_swap_path_on_a_directory(guest: SandboxedAgent) -> None:
    (reply,) = call(guest, ("AddSwapPath", agent_pb2.AddSwapPathRequest(path="/run")))
    assert reply.code == Code.INVALID_ARGUMENT, reply


def test_nul_in_volume_paths(guest: SandboxedAgent) -> None:
    replies = call(
        guest,
        ("GetVolumeStats", agent_pb2.VolumeStatsRequest(volume_guest_path="/run\0x")),
        ("ResizeVolume", agent_pb2.ResizeVolumeRequest(volume_guest_path="/run\0x")),
    )
    assert [r.code for r in replies] == [Code.INVALID_ARGUMENT] * 2, replies


def test_unknown_fs_group_policy(guest: SandboxedAgent) -> None:
    storage = agent_pb2.Storage(
        driver="ephemeral",
        source="tmpfs",
        fstype="tmpfs",
        mount_point="/run/kata-containers/sandbox/ephemeral/f",
    )
    storage.fs_group.group_id = 1
    storage.fs_group.group_change_policy = 7  # open enum: any int32 decodes
    replies = call(
        guest,
        ("UpdateEphemeralMounts", agent_pb2.UpdateEphemeralMountsRequest(storages=[storage])),
        (
            "CreateSandbox",
            agent_pb2.CreateSandboxRequest(hostname="pod", sandbox_id="fsg", storages=[storage]),
        ),
    )
    assert [r.code for r in replies] == [Code.INVALID_ARGUMENT] * 2, replies


def test_wait_process_during_a_failed_create(fresh_guest: SandboxedAgent) -> None:
    create = json_format.ParseDict(
        {"container_id": "c9", "exec_id": "c9", "OCI": seeds.SPEC}, agent_pb2.CreateContainerRequest()
    )  # fails: its rootfs does not exist
    replies = call(
        fresh_guest,
        ("CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="pod", sandbox_id="p9")),
        ("CreateContainer", create),
        ("WaitProcess", agent_pb2.WaitProcessRequest(container_id="c9")),
        deadline=2.0,
    )
    wait = next(r for r in replies if r.method == "WaitProcess")
    assert wait.code == Code.NOT_FOUND, wait  # was DEADLINE_EXCEEDED, and without a deadline: never


def test_connection_limit_does_not_lock_out_newcomers(fresh_guest: SandboxedAgent) -> None:
    figures = hostile.connection_limit(fresh_guest)
    assert figures["alive"]
    assert figures["newcomer_served"], figures


def test_clients_that_never_read_pin_bounded_memory(fresh_guest: SandboxedAgent) -> None:
    hostile.warm_up(fresh_guest)
    figures = hostile.non_readers(fresh_guest, clients=4)
    assert figures["alive"] and figures["probe_failures"] == 0
    assert figures["pss_peak_mb"] - figures["pss_before_mb"] < 32, figures  # one budget for all: was +50 MB


def test_offloaded_calls_are_not_starved_by_online_cpu_retries(fresh_guest: SandboxedAgent) -> None:
    with fuzzlib.WireClient(fresh_guest.address) as client:
        stuck = agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=1000).SerializeToString()
        for _ in range(4):  # the pool's size
            client.send(METHODS["OnlineCPUMem"], stuck, 60)
        time.sleep(0.3)
        stats = agent_pb2.VolumeStatsRequest(volume_guest_path="/run").SerializeToString()
        sid = client.send(METHODS["GetVolumeStats"], stats, 60)
        replies: list[fuzzlib.Reply] = []
        while sid in client.pending:
            replies += client.poll(0.1, grace=60)
    reply = next(r for r in replies if r.stream_id == sid)
    assert reply.code == Code.OK and reply.latency < 2.0, reply  # was ~5 s, the retries' length
