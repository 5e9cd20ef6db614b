"""Hostile clients against a real agent (in the hardening sandbox): what each costs it.

For each attack (tests/hardening/hostile.py): open fds and PSS before, during/at
peak and after, and the latency a well-behaved client saw meanwhile (Health.Check
every 20 ms on its own connection).  Then what an agent policy costs per call:
a cheap AgentService call with no policy, with an allow-all policy, and with the
policy refusing it.

Usage: python3 benchmarks/hostile.py [--scale N] [--calls N]
(``--scale`` multiplies the attack sizes; needs root for the sandbox namespaces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import table

from agent.protocols import agent_pb2
from tests.hardening import hostile
from tests.hardening.sandbox import SandboxedAgent
from ttrpc.client import Client
from ttrpc.status import RPCError


def attacks(scale: int) -> dict[str, dict]:
    return {
        "slowloris": {"conns": min(250, 100 * scale), "hold": 2.0},
        "huge_header": {"body_mib": 256 * scale},
        "garbage": {"conns": 200 * scale},
        "churn": {"total": 2000 * scale, "batch": 200},
        "disconnect_blocking": {"rounds": 100 * scale, "per_call": 8},
        "non_readers": {"clients": 4 * scale},
        "connection_limit": {},
    }


def run_attacks(work: Path, scale: int) -> tuple[float, list[list[object]]]:
    rows = []
    with SandboxedAgent(work / "guest") as agent:
        hostile.warm_up(agent)
        idle = hostile.mb(agent.memory_kb()["Pss"])
        for name, kwargs in attacks(scale).items():
            print(f"== {name} {kwargs}", file=sys.stderr)
            f = hostile.SCENARIOS[name](agent, **kwargs)
            during = f.get("pss_peak_mb", f.get("pss_during_mb", ""))
            served = f.get("newcomer_served", f.get("probe_failures", 0) == 0)
            rows.append(
                [
                    name,
                    _size(name, f),
                    f["fds_before"],
                    f.get("fds_during", f.get("fds_peak", "")),
                    f["fds_after"],
                    f["pss_before_mb"],
                    during,
                    f["pss_after_mb"],
                    "yes" if served else "NO",
                    f.get("probe_p50_ms", ""),
                    f.get("probe_p99_ms", ""),
                    f.get("probe_max_ms", ""),
                ]
            )
    return idle, rows


def _size(name: str, f: dict) -> str:
    if name == "huge_header":
        return f"{f['sent_mib']} MiB of a 4 GiB frame, skipped at {f['skip_mib_per_s']} MiB/s"
    if name == "disconnect_blocking":
        return f"{f['abandoned_calls']} calls ({', '.join(f['blocking_methods'])})"
    if name == "non_readers":
        return f"{f['clients']} clients, {f['pss_per_client_mb']} MB each"
    if name == "connection_limit":
        return f"{f['idle_connections']} idle connections"
    return f"{f.get('connections', '')} connections"


def policy_cost(work: Path, calls: int) -> list[list[object]]:
    """Latency of GetGuestDetails (a cheap call) without a policy, allowed by one, refused by one."""
    from agent.policy import rule_names

    rules = [r for r in rule_names() if r != "AllowRequestsFailingPolicy"]
    allow_all = "package agent_policy\n" + "".join(f"default {r} := true\n" for r in rules)
    refuse = allow_all.replace("default GuestDetailsRequest := true", "default GuestDetailsRequest := false")
    rows = []
    for label, text in (("no policy", None), ("allow-all policy", allow_all), ("refused by policy", refuse)):
        scratch = work / label.replace(" ", "-")
        scratch.mkdir()
        env = {}
        if text is not None:
            (scratch / "policy.rego").write_text(text)
            env["KATA_AGENT_POLICY_FILE"] = str(scratch / "policy.rego")
        with SandboxedAgent(scratch, env=env, module="tests.hardening.policy_agent") as agent:
            idle = hostile.mb(agent.memory_kb()["Pss"])
            client = Client(agent.address)
            req = agent_pb2.GuestDetailsRequest(mem_block_size=True)
            lat = []
            for _ in range(calls):
                start = time.perf_counter()
                try:
                    client.call("grpc.AgentService", "GetGuestDetails", req, agent_pb2.GuestDetailsResponse)
                except RPCError:
                    pass
                lat.append(time.perf_counter() - start)
            client.close()
            lat.sort()
            pss = hostile.mb(agent.memory_kb()["Pss"])
        rows.append(
            [label, round(statistics.median(lat) * 1e6), round(lat[int(len(lat) * 0.99)] * 1e6), idle, pss]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kata-hostile-") as tmp:
        work = Path(tmp)
        idle, rows = run_attacks(work, args.scale)
        print(f"agent PSS after warm-up (the reference): {idle} MB")
        headers = ["attack", "size", "fds", "during", "after", "PSS MB", "peak", "after", "served"]
        headers += ["p50 ms", "p99 ms", "max ms"]
        print(table(headers, rows))
        print()
        headers = ["GetGuestDetails", "p50 µs", "p99 µs", "PSS MB at start", f"after {args.calls} calls"]
        print(table(headers, policy_cost(work, args.calls)))


if __name__ == "__main__":
    main()
