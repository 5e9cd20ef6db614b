"""Latency of a sandbox's network set-up through the agent, cold and warm.

The runtime configures a pod's network with UpdateInterface for each NIC, then
UpdateRoutes, then AddARPNeighbors. The agent does the netlink work in an
on-demand worker process (pyroute2 stays out of the agent), so the first
set-up after the worker went idle pays for spawning it ("cold"); set-ups while
it is up ("warm") pay only the socketpair round trips. For reference, the same
operations run directly in one process with pyroute2 already imported.

Everything happens in a private network namespace (``ip netns add``), on veth
pairs created there; the host's network is never touched.

Usage: python3 benchmarks/netsetup.py [--nics N] [--runs N] [--warm N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import ROOT, gopeer, median, table

from agent.protocols import agent_pb2, types_pb2
from ttrpc.client import Client

IP = "ip"
DIRECT = r"""
import json, sys, time
t0 = time.monotonic()
from agent.network.ops import NetOps
imported = time.monotonic() - t0
ops = NetOps()
plan = json.loads(sys.argv[1])
times = []
for n in range(int(sys.argv[2])):
    t = time.monotonic()
    for iface in plan["ifaces"]:
        ops.update_interface(iface)
    ops.update_routes(plan["routes"])
    ops.add_arp_neighbors(plan["neighbors"])
    times.append(time.monotonic() - t)
ops.close()
print(json.dumps({"import": imported, "times": times}))
"""


def mac(i: int) -> str:
    return f"02:00:5e:10:{i // 256:02x}:{i % 256:02x}"


def plan(nics: int, variant: int) -> dict[str, list[dict[str, object]]]:
    """The JSON forms of the requests (alternating addresses, so each set-up changes something)."""
    ifaces = [
        {
            "name": f"eth{i}",
            "hwAddr": mac(i),
            "mtu": 1400 + variant % 2,
            "IPAddresses": [{"address": f"10.{100 + i}.{variant % 2}.2", "mask": "24"}],
        }
        for i in range(nics)
    ]
    routes = [
        {"dest": f"10.{200 + i}.0.0/16", "gateway": f"10.{100 + i}.{variant % 2}.1", "device": f"eth{i}"}
        for i in range(nics)
    ]
    neighbors = [
        {
            "toIPAddress": {"address": f"10.{100 + i}.{variant % 2}.1"},
            "device": f"eth{i}",
            "lladdr": mac(1000 + i),
            "state": 128,
        }
        for i in range(nics)
    ]
    return {"ifaces": ifaces, "routes": routes, "neighbors": neighbors}


def setup_through_agent(client: Client, p: dict[str, list[dict[str, object]]]) -> list[float]:
    """One pod's set-up; returns the time of each call (seconds)."""
    from google.protobuf import json_format

    times = []
    for iface in p["ifaces"]:
        req = agent_pb2.UpdateInterfaceRequest(interface=json_format.ParseDict(iface, types_pb2.Interface()))
        t = time.monotonic()
        client.call("grpc.AgentService", "UpdateInterface", req, types_pb2.Interface, timeout=60)
        times.append(time.monotonic() - t)
    routes = json_format.ParseDict({"Routes": p["routes"]}, agent_pb2.Routes())
    neighbors = json_format.ParseDict({"ARPNeighbors": p["neighbors"]}, agent_pb2.ARPNeighbors())
    t = time.monotonic()
    client.call(
        "grpc.AgentService", "UpdateRoutes", agent_pb2.UpdateRoutesRequest(routes=routes), agent_pb2.Routes
    )
    times.append(time.monotonic() - t)
    t = time.monotonic()
    client.call(
        "grpc.AgentService",
        "AddARPNeighbors",
        agent_pb2.AddARPNeighborsRequest(neighbors=neighbors),
        agent_pb2.Routes,  # Empty on the wire; any message type decodes it
    )
    times.append(time.monotonic() - t)
    return times


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def wait_worker_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while children(pid):
        if time.monotonic() > deadline:
            raise TimeoutError("the network worker did not exit")
        time.sleep(0.05)


def make_netns(nics: int) -> str:
    ns = f"kbench-{uuid.uuid4().hex[:8]}"
    subprocess.run([IP, "netns", "add", ns], check=True)
    for i in range(nics):
        subprocess.run(
            [
                IP,
                "-n",
                ns,
                "link",
                "add",
                f"v{i}",
                "address",
                mac(i),
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
            ],
            check=True,
        )
        subprocess.run([IP, "-n", ns, "link", "set", f"p{i}", "up"], check=True)
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nics", type=int, default=4, help="interfaces per pod (UpdateInterface calls)")
    ap.add_argument(
        "--runs", type=int, default=5, help="cold set-ups (each waits for the worker's idle exit)"
    )
    ap.add_argument("--warm", type=int, default=20, help="warm set-ups")
    args = ap.parse_args()

    ns = make_netns(args.nics)
    d = Path(tempfile.mkdtemp(prefix="netsetup-"))
    addr = f"unix://{d}/agent.sock"
    env = gopeer.agent_env()
    env.update({"KATA_AGENT_SERVER_ADDR": addr, "KATA_AGENT_LOG_LEVEL": "warn"})
    proc = gopeer.Proc([IP, "netns", "exec", ns, sys.executable, "-m", "agent"], "agent", env)
    try:
        proc.wait_ready(addr, timeout=60)
        client = Client(addr)
        cold: list[list[float]] = []
        warm: list[list[float]] = []
        variant = 0
        for _ in range(args.runs):
            wait_worker_gone(proc.pid)
            cold.append(setup_through_agent(client, plan(args.nics, variant)))
            variant += 1
            for _ in range(max(1, args.warm // args.runs)):
                warm.append(setup_through_agent(client, plan(args.nics, variant)))
                variant += 1
        client.close()

        direct_out = subprocess.run(
            [
                IP,
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                DIRECT,
                json.dumps(plan(args.nics, 1)),
                str(args.warm),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=gopeer.agent_env(),
        ).stdout
        direct = json.loads(direct_out)
    finally:
        proc.stop()
        subprocess.run([IP, "netns", "del", ns], check=False)

    ms = 1e3
    rows = []
    for name, samples in (("cold (worker spawned)", cold), ("warm (worker up)", warm)):
        totals = sorted(sum(s) for s in samples)
        rows.append([name, len(totals), median(totals) * ms, totals[0] * ms, totals[-1] * ms])
    d_times = sorted(direct["times"])
    rows.append(
        ["direct pyroute2, in-process", len(d_times), median(d_times) * ms, d_times[0] * ms, d_times[-1] * ms]
    )
    print(
        f"Network set-up of a pod: {args.nics} x UpdateInterface + UpdateRoutes + AddARPNeighbors"
        f" ({args.nics} routes, {args.nics} neighbours), private netns"
    )
    print(table(["scenario", "runs", "median ms", "min ms", "max ms"], rows))
    calls = [f"UpdateInterface #{i + 1}" for i in range(args.nics)] + ["UpdateRoutes", "AddARPNeighbors"]
    per_call = [
        [c, median([s[i] for s in cold]) * ms, median([s[i] for s in warm]) * ms] for i, c in enumerate(calls)
    ]
    print()
    print(table(["call", "cold median ms", "warm median ms"], per_call))
    print()
    added = (median([sum(s) for s in cold]) - median([sum(s) for s in warm])) * ms
    print(
        f"cold start adds {added:.0f} ms to the pod's network set-up; importing pyroute2 alone: {direct['import'] * ms:.0f} ms"
    )
    print(f"(agent: {ROOT})")


if __name__ == "__main__":
    main()
