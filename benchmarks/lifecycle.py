"""Container lifecycle cost: through the agent vs ``crun run`` of the same bundle, and 8 pods at once.

1. One agent (PID 1 of its own namespaces, as in tests/e2e) runs N lifecycles of a
   ``true`` container the way the Kata runtime drives one: CreateContainer,
   StartContainer, WaitProcess, RemoveContainer, over its socket. In the same run,
   ``crun run`` runs the very config.json the agent wrote (copied from its bundle),
   N times, inside the agent's namespaces (``nsenter``, same cgroup view, same
   rootfs), from a shell loop so no Python sits in the baseline. Ratio = agent / crun.
   The agent must call the CLI three times (create, start, delete: the runtime
   reads output between them) where ``crun run`` is one process; each crun exec
   costs ~4.5 ms here (dynamic linking), so the split itself is also shown.
2. 8 agents, one pod each, driven in parallel: CreateSandbox, two containers
   (create, start, exec, wait, kill, remove), DestroySandbox; against one pod alone.
3. The agent's PSS before and after the lifecycles.

Usage: python3 benchmarks/lifecycle.py [--runs N] [--pods P]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, median, smaps_rollup, table  # noqa: F401 - ROOT puts the repo on sys.path

from agent.protocols import agent_pb2
from tests.e2e.guest import GuestAgent
from tests.e2e.pod import SHARED, Pod, add_rootfs, container_spec, share_storage

RUNTIME = "crun"


def lifecycle(pod: Pod, cid: str) -> None:
    pod.create(cid, container_spec(cid, ["true"], root=f"{SHARED}/base/rootfs"))
    pod.start(cid)
    pod.wait(cid, cid)
    pod.remove(cid)


def agent_lifecycles(pod: Pod, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        t = time.perf_counter()
        lifecycle(pod, f"bench-{i}")
        times.append(time.perf_counter() - t)
    return times


def copy_agent_bundle(guest: GuestAgent, pod: Pod, dest: Path) -> Path:
    """The config.json the agent writes for the benchmark's container, as a bundle of our own."""
    cid = "bundle-src"
    pod.create(cid, container_spec(cid, ["true"], root=f"{SHARED}/base/rootfs"))
    config = json.loads(guest.guest_path(f"/run/kata-agent/bundles/{cid}/config.json").read_text())
    pod.start(cid)
    pod.wait(cid, cid)
    pod.remove(cid)
    config["linux"]["cgroupsPath"] = "/kata-pod/crun-run"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def crun_loop(guest: GuestAgent, bundle: Path, runs: int, *, split: bool = False) -> float:
    """Seconds per ``crun run`` of ``bundle`` (or ``create``+``start``+``delete``, as the agent
    must call it), timed around a shell loop in the agent's namespaces."""
    state = bundle / "state"
    state.mkdir(exist_ok=True)
    rt = f"{RUNTIME} --root {state}"
    if split:
        step = (
            f"{rt} create --bundle {bundle} cli-$i </dev/null >/dev/null 2>&1 && {rt} start cli-$i"
            f" && {rt} delete --force cli-$i"
        )
    else:
        step = f"{rt} run --bundle {bundle} run-$i </dev/null >/dev/null 2>&1"
    script = f"i=0; while [ $i -lt {runs} ]; do {step} || exit 1; i=$((i+1)); done"
    argv = ["nsenter", "-a", "-t", str(guest.pid), "sh", "-c", script]
    subprocess.run(["nsenter", "-a", "-t", str(guest.pid), "true"], check=True)  # warm the page cache
    t = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - t) / runs


def pod_life(pod: Pod, share: Path) -> float:
    t = time.perf_counter()
    pod.call(
        "CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="bench", storages=[share_storage(share)])
    )
    for cid in ("c1", "c2"):
        pod.create(cid, container_spec(cid, ["sleep", "1000"], root=f"{SHARED}/base/rootfs"))
        pod.start(cid)
    for cid in ("c1", "c2"):
        status, _out, _err = pod.run(cid, "probe", ["true"])
        assert status == 0
        pod.signal(cid, "", 9)
        pod.wait(cid, cid)
        pod.remove(cid)
    pod.call("DestroySandbox", agent_pb2.DestroySandboxRequest())
    return time.perf_counter() - t


def parallel_pods(work: Path, share: Path, count: int) -> tuple[float, float, list[float]]:
    """(one pod alone, wall time of ``count`` pods at once, each pod's own time)."""
    guests = []
    try:
        for i in range(count + 1):
            d = work / f"pod-{i}"
            d.mkdir()
            guests.append(GuestAgent(d, runtime=RUNTIME))
        alone = pod_life(Pod(guests[0]), share)
        results: list[float] = [0.0] * count
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, pod_life(Pod(guests[i + 1]), share)))
            for i in range(count)
        ]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return alone, time.perf_counter() - t, results
    finally:
        for g in guests:
            g.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--pods", type=int, default=8)
    args = parser.parse_args()
    for tool in (RUNTIME, "nsenter", "unshare", "busybox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}")
    work = Path(tempfile.mkdtemp(prefix="kata-bench-"))
    try:
        share = work / "share"
        share.mkdir()
        add_rootfs(share, "base")
        (work / "agent").mkdir()
        guest = GuestAgent(work / "agent", "--log-level", "warn", runtime=RUNTIME)
        try:
            pod = Pod(guest)
            pod.call("CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
            bundle = copy_agent_bundle(guest, pod, work / "bundle")
            agent_lifecycles(pod, 10)  # warm-up: first-use imports, thread pool
            pss_before = smaps_rollup(guest.pid)
            baseline = max(10, args.runs // 4)
            crun_before = crun_loop(guest, bundle, baseline)
            split_before = crun_loop(guest, bundle, baseline, split=True)
            times = agent_lifecycles(pod, args.runs)
            pss_after = smaps_rollup(guest.pid)
            crun_after = crun_loop(guest, bundle, baseline)
            split_after = crun_loop(guest, bundle, baseline, split=True)
        finally:
            guest.stop()
        crun_per = min(crun_before, crun_after)
        split_per = min(split_before, split_after)
        agent_per = median(times)
        print(f"{args.runs} lifecycles of a `true` container ({RUNTIME}), per lifecycle:")
        print(
            table(
                ["path", "ms (median)", "ms (mean)", "ratio to crun run"],
                [
                    [
                        "agent: Create+Start+Wait+Remove",
                        agent_per * 1e3,
                        sum(times) / len(times) * 1e3,
                        agent_per / crun_per,
                    ],
                    [
                        f"{RUNTIME} create+start+delete (3 CLI calls)",
                        split_per * 1e3,
                        split_per * 1e3,
                        split_per / crun_per,
                    ],
                    [f"{RUNTIME} run, same config.json", crun_per * 1e3, crun_per * 1e3, 1.0],
                ],
            )
        )
        print(f"agent overhead over the same 3 CLI calls: x{agent_per / split_per:.2f}")
        print(
            f"agent PSS: {pss_before['Pss']} -> {pss_after['Pss']} kB over {args.runs} lifecycles"
            f" (anonymous {pss_before['Pss_Anon']} -> {pss_after['Pss_Anon']} kB)"
        )
        print()
        alone, wall, each = parallel_pods(work, share, args.pods)
        print(f"pod life (sandbox, 2 containers, exec, kill, remove, destroy), {RUNTIME}:")
        print(
            table(
                ["case", "wall s", "per pod s (median)", "pods/s"],
                [
                    ["1 pod alone", alone, alone, 1 / alone],
                    [f"{args.pods} pods in parallel", wall, median(each), args.pods / wall],
                ],
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
