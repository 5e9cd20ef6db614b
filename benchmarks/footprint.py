"""Idle footprint and startup of our agent beside a grpcio server and the Go ttRPC server.

Footprint is why this project exists, so the figures come from the same run on the same
machine: RSS and PSS (from /proc/PID/smaps_rollup) about 2 s after each server answered its
first Health.Check, the time from exec to that first answer, and the agent's import time
(from `-X importtime`, in a separate run since tracing slows imports).

Then the agent around a pod's network set-up (in a private netns): idle PSS, PSS during
the set-up (the agent, and the network worker that holds pyroute2), and PSS 10 s later,
once the worker has exited.

Usage: python3 benchmarks/footprint.py [--runs N] [--settle SECONDS] [--no-network]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, gopeer, median, smaps_rollup, table


def lean_env() -> dict[str, str]:
    """Import path for ``python3 -S``: no site processing, as the guest image starts the agent.

    Site processing runs every .pth hook of the machine's site-packages (here an
    editable-install finder and a certifi hook cost ~3 MB); a guest image has
    none, so -S with an explicit path measures what a guest would carry.
    """
    import sysconfig

    env = gopeer.agent_env()
    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def measure_agent(settle: float, lean: bool = True) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(prefix="fp-agent-"))
    addr = f"unix://{d}/agent.sock"
    flags = ["-S"] if lean else []
    # No command-line arguments, as at a guest boot (the address comes from the
    # kernel command line or the environment), so argparse is never imported.
    argv = [sys.executable, *flags, "-m", "agent"]
    env = lean_env() if lean else gopeer.agent_env()
    env["KATA_AGENT_SERVER_ADDR"] = addr
    proc = gopeer.Proc(argv, "agent", env)
    try:
        ready = proc.wait_ready(addr, timeout=60)
        time.sleep(settle)
        mem = smaps_rollup(proc.pid)
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)
    return {"ready_ms": ready * 1e3, "rss_kb": mem["Rss"], "pss_kb": mem["Pss"]}


def measure_go(peer: Path, settle: float) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(prefix="fp-go-"))
    addr = f"unix://{d}/go.sock"
    proc = gopeer.Proc([str(peer), "server", addr], "go server")
    try:
        ready = proc.wait_ready(addr, timeout=60)
        time.sleep(settle)
        mem = smaps_rollup(proc.pid)
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)
    return {"ready_ms": ready * 1e3, "rss_kb": mem["Rss"], "pss_kb": mem["Pss"]}


def measure_grpcio(settle: float, lean: bool = True) -> dict[str, float]:
    """grpcio has its own connection backoff, so wait for READY before the first Check."""
    import grpc

    from agent.protocols import health_pb2

    d = Path(tempfile.mkdtemp(prefix="fp-grpc-"))
    target = f"unix:{d}/grpc.sock"
    script = ROOT / "benchmarks" / "grpc_health_server.py"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *(["-S"] if lean else []), str(script), target],
        stdout=subprocess.PIPE,
        text=True,
        env=lean_env() if lean else gopeer.agent_env(),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"grpcio server did not start: {line!r}")
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_unary(
                "/grpc.Health/Check",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            resp = call(health_pb2.CheckRequest(), timeout=60, wait_for_ready=True)
            ready = time.monotonic() - t0
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(settle)
        mem = smaps_rollup(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    return {"ready_ms": ready * 1e3, "rss_kb": mem["Rss"], "pss_kb": mem["Pss"]}


def interpreter_startup_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.monotonic() - t0) * 1e3)
    return median(times)


def agent_imports() -> tuple[float, list[tuple[str, float]], list[tuple[str, float]]]:
    """Import time of a serving agent: total, heaviest top-level imports, heaviest modules (ms)."""
    d = Path(tempfile.mkdtemp(prefix="fp-imp-"))
    addr = f"unix://{d}/agent.sock"
    argv = [sys.executable, "-X", "importtime", "-m", "agent", "--server-addr", addr]
    proc = gopeer.Proc(argv, "agent", gopeer.agent_env())
    try:
        proc.wait_ready(addr, timeout=60)
        log = proc.output()
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)
    top: list[tuple[str, float]] = []
    own: list[tuple[str, float]] = []
    for line in log.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line[len("import time:") :].split("|")
        own.append((name.strip(), int(self_us) / 1e3))
        if not name.startswith("  ") and name.strip():  # one space: a top-level import
            top.append((name.strip(), int(cumulative) / 1e3))
    heaviest = sorted(top, key=lambda x: -x[1])[:8]
    return sum(t for _, t in top), heaviest, sorted(own, key=lambda x: -x[1])[:10]


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


def compiled_image(dest: Path) -> Path:
    """The agent's packages copied and byte-compiled, as a guest image ships them.

    (This machine sets PYTHONDONTWRITEBYTECODE, so a checkout is compiled at every
    import and the compiler's leftovers would show in the agent's heap.)
    """
    for package in ("agent", "ttrpc"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=True, capture_output=True)
    return dest


def measure_network(settle: float, guest_like: bool, later: float = 10.0) -> dict[str, float]:
    """Agent PSS idle, during a pod's network set-up (plus the worker's), and ``later`` s after.

    ``guest_like``: the agent is PID 1 of fresh namespaces (init mode, reaper from the
    start) and runs compiled bytecode; otherwise it runs like the rows above.
    """
    from netsetup import children, make_netns, plan, setup_through_agent

    from ttrpc.client import Client

    ns = make_netns(1)
    d = Path(tempfile.mkdtemp(prefix="fp-net-"))
    addr = f"unix://{d}/agent.sock"
    env = lean_env()
    env.update({"KATA_AGENT_SERVER_ADDR": addr, "KATA_AGENT_LOG_LEVEL": "warn"})
    prefix = ["ip", "netns", "exec", ns]
    if guest_like:
        image = compiled_image(d / "image")
        env["PYTHONPATH"] = os.pathsep.join([str(image), env["PYTHONPATH"]])
        env["PYTHONSAFEPATH"] = "1"
        prefix += GUEST_NS
    proc = gopeer.Proc([*prefix, sys.executable, "-S", "-m", "agent"], "agent", env)
    pid = proc.pid
    try:
        proc.wait_ready(addr, timeout=60)
        if guest_like:
            [pid] = children(proc.pid)
        time.sleep(settle)
        idle = smaps_rollup(pid)
        with Client(addr) as client:
            setup_through_agent(client, plan(1, 0))
            [worker] = children(pid)
            during, during_worker = smaps_rollup(pid)["Pss"], smaps_rollup(worker)["Pss"]
        time.sleep(later)
        after = smaps_rollup(pid)
        worker_left = len(children(pid))
    finally:
        if guest_like and pid != proc.pid:
            os.kill(pid, 15)
        proc.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(d, ignore_errors=True)
    return {
        "idle": idle["Pss"],
        "during": during,
        "worker": during_worker,
        "after": after["Pss"],
        "anon_delta": after["Pss_Anon"] - idle["Pss_Anon"],
        "left": worker_left,
    }


def print_network(runs: int, settle: float) -> None:
    rows = []
    for name, guest_like in (("as above (-S, not PID 1)", False), ("guest-like (PID 1, compiled)", True)):
        res = [measure_network(settle, guest_like) for _ in range(runs)]
        m = {k: median([r[k] for r in res]) for k in res[0]}
        rows.append(
            [
                name,
                m["idle"] / 1024,
                m["during"] / 1024,
                m["worker"] / 1024,
                m["after"] / 1024,
                (m["after"] - m["idle"]) / 1024,
                m["anon_delta"] / 1024,
                int(m["left"]),
            ]
        )
    print()
    print(f"kata-agent around a pod's network set-up, private netns (median of {runs} runs)")
    print(
        table(
            [
                "agent",
                "idle PSS MB",
                "during MB",
                "+ worker MB",
                "10 s later MB",
                "later - idle MB",
                "of it anon MB",
                "workers left",
            ],
            rows,
        )
    )
    print("The first network call also loads the agent-side code (service, worker link, reaper):")
    print("in the guest-like row the reaper is already there from boot, as in a real guest.")
    print("PSS also moves with how many other processes share the interpreter's pages; the")
    print("anonymous part (the agent's own heap) does not.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per server; medians are printed")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle after the first Check")
    ap.add_argument("--no-network", action="store_true", help="skip the network set-up figures")
    args = ap.parse_args()

    peer = gopeer.build_peer()
    results: dict[str, list[dict[str, float]]] = {
        "kata-agent (python)": [],
        "grpcio server": [],
        "go ttrpc server": [],
        "kata-agent, site hooks": [],
        "grpcio server, site hooks": [],
    }
    for _ in range(args.runs):  # interleaved, so drift on the machine hits all alike
        results["kata-agent (python)"].append(measure_agent(args.settle))
        results["grpcio server"].append(measure_grpcio(args.settle))
        results["go ttrpc server"].append(measure_go(peer, args.settle))
        results["kata-agent, site hooks"].append(measure_agent(args.settle, lean=False))
        results["grpcio server, site hooks"].append(measure_grpcio(args.settle, lean=False))

    med = {name: {k: median([r[k] for r in rs]) for k in rs[0]} for name, rs in results.items()}
    rows = [[n, m["rss_kb"] / 1024, m["pss_kb"] / 1024, m["ready_ms"]] for n, m in med.items()]
    print(f"Idle footprint, {args.settle:g} s after the first Check (median of {args.runs} runs)")
    print("Python servers run with -S (no site hooks, as in the guest image) unless marked 'site hooks'.")
    print(table(["server", "RSS MB", "PSS MB", "exec -> first Check ms"], rows))
    agent, grpcio = med["kata-agent (python)"], med["grpcio server"]
    print()
    pss, rss = grpcio["pss_kb"] / agent["pss_kb"], grpcio["rss_kb"] / agent["rss_kb"]
    print(f"grpcio / kata-agent: PSS x{pss:.2f}, RSS x{rss:.2f}")
    print(f"bare interpreter startup (python3 -c pass): {interpreter_startup_ms(5):.1f} ms")

    total, top, own = agent_imports()
    print(f"agent imports before its first Check (-X importtime): {total:.1f} ms")
    print(table(["top-level import", "cumulative ms"], [[n, t] for n, t in top]))
    print(table(["module", "self ms"], [[n, t] for n, t in own]))
    if not args.no_network:
        print_network(args.runs, args.settle)


if __name__ == "__main__":
    main()
