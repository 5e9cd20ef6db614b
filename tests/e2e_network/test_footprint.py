"""pyroute2 never stays resident: a few seconds after the last network call the
agent's memory is back within 1 MB of its idle figure, and the worker is gone.

The agent runs as a guest runs it: PID 1 of fresh pid/mount/uts/ipc/cgroup
namespaces (inside a private netns), so its idle figure already includes what
init mode loads (the reaper among it). The bound is checked on the anonymous
part of PSS (the agent's own heap, where imported code and pyroute2 would
live); the file-backed part is shared with every other Python process on this
machine and moves with them, so it is reported but not asserted.

A guest image ships compiled bytecode; this machine sets PYTHONDONTWRITEBYTECODE,
so the agent would compile every module of ours at first import and keep the
compiler's garbage in its heap. The agent therefore runs from a copy of its
packages compiled beforehand, as it would from a guest image.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.protocols import agent_pb2, types_pb2
from tests.agent.harness import start_agent, wait_ready
from tests.e2e_network.conftest import IP, Netns, ip
from ttrpc.client import Client

GUEST_NS = [
    "unshare",
    "--fork",
    "--pid",
    "--mount",
    "--uts",
    "--ipc",
    "--mount-proc",
    "--cgroup",
    "--kill-child",
]
MAC = "02:00:5e:00:54:01"
REPO = Path(__file__).resolve().parents[2]


def memory(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def network_setup(client: Client, n: int) -> None:
    call = client.call
    iface = types_pb2.Interface(
        name="eth0",
        hwAddr=MAC,
        mtu=1450,
        IPAddresses=[types_pb2.IPAddress(address=f"10.210.{n}.2", mask="24")],
    )
    call(
        "grpc.AgentService",
        "UpdateInterface",
        agent_pb2.UpdateInterfaceRequest(interface=iface),
        types_pb2.Interface,
    )
    routes = agent_pb2.Routes(
        Routes=[types_pb2.Route(dest="10.211.0.0/16", gateway=f"10.210.{n}.1", device="eth0")]
    )
    call("grpc.AgentService", "UpdateRoutes", agent_pb2.UpdateRoutesRequest(routes=routes), agent_pb2.Routes)
    neigh = types_pb2.ARPNeighbor(
        toIPAddress=types_pb2.IPAddress(address=f"10.210.{n}.1"),
        device="eth0",
        lladdr="02:00:5e:00:54:02",
        state=0x80,
    )
    call(
        "grpc.AgentService",
        "AddARPNeighbors",
        agent_pb2.AddARPNeighborsRequest(neighbors=agent_pb2.ARPNeighbors(ARPNeighbors=[neigh])),
        types_pb2.Interface,
    )


def wait_no_children(pid: int, timeout: float = 30) -> float:
    start = time.monotonic()
    while children(pid):
        assert time.monotonic() - start < timeout, "the network worker did not exit"
        time.sleep(0.1)
    return time.monotonic() - start


def compiled_copy(dest: Path) -> Path:
    """The agent's packages, copied and byte-compiled like an installed image."""
    for package in ("agent", "ttrpc"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(dest)], check=True, capture_output=True, timeout=120
    )
    return dest


def test_memory_returns_to_idle_after_network_setup(netns: Netns, tmp_path: Path) -> None:
    ns = netns.new()
    ip(ns, "link", "add", "v0", "address", MAC, "type", "veth", "peer", "name", "v1")
    sock = tmp_path / "agent.sock"
    env = {
        "KATA_AGENT_LOG_LEVEL": "warn",
        "PYTHONPATH": str(compiled_copy(tmp_path / "image")),
        "PYTHONSAFEPATH": "1",  # not the current directory: the compiled copy
    }
    where = subprocess.run(
        [sys.executable, "-c", "import agent, ttrpc; print(agent.__file__, ttrpc.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.count(str(tmp_path / "image")) == 2, where.stdout  # the copy is what runs
    proc = start_agent(sock, env=env, prefix=[IP, "netns", "exec", ns, *GUEST_NS])
    agent_pid = None
    try:
        client = wait_ready(f"unix://{sock}", proc, timeout=30)
        [agent_pid] = children(proc.pid)  # the agent is PID 1 of its namespace, unshare's child
        time.sleep(1.0)
        idle = memory(agent_pid)

        figures = []
        for n in range(2):  # the second round shows nothing accumulates
            network_setup(client, n)
            [worker] = children(agent_pid)
            during, worker_mem = memory(agent_pid), memory(worker)
            waited = wait_no_children(agent_pid)
            time.sleep(0.5)
            after = memory(agent_pid)
            figures.append((during, worker_mem, waited, after))
            # The worker was reaped by the agent (no zombie left behind).
            assert (
                not os.path.exists(f"/proc/{worker}")
                or "Z" not in Path(f"/proc/{worker}/stat").read_text().split()[2]
            )

        report = [f"idle: Pss {idle['Pss']} kB (anon {idle['Pss_Anon']})"]
        for during, worker_mem, waited, after in figures:
            report.append(
                f"during: agent Pss {during['Pss']} + worker Pss {worker_mem['Pss']} kB; "
                f"worker gone after {waited:.1f} s; after: Pss {after['Pss']} kB (anon {after['Pss_Anon']})"
            )
        print("\n".join(report))
        assert figures[0][1]["Pss"] > 15_000  # pyroute2 was really loaded, in the worker
        for _, _, _, after in figures:
            assert after["Pss_Anon"] - idle["Pss_Anon"] < 1024, "\n".join(report)
        client.close()
    finally:
        if agent_pid is not None:
            os.kill(agent_pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
