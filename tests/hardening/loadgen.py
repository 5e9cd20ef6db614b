"""A load generator for a guest agent running containers (tests/e2e/guest.py): mixed calls and a storm.

Phase 1, **mixed load**: ``conns`` connections (one ttRPC client and one thread
each) issue ``calls`` calls apiece, round-robin over Check, StatsContainer,
ReadStdout (of a container printing ``tick`` continuously) and ExecProcess
(``echo <unique token>`` with a unique exec id, then ReadStdout and ReadStderr
of that exec to EOF, as the runtime reads them, and its WaitProcess), while another connection creates, starts, kills,
waits and removes containers in a loop. Every reply is checked against its
request:

* *lost*: a request without a reply (DEADLINE_EXCEEDED on the client's generous
  deadline, or the connection gone);
* *mismatched*: a reply of the wrong content: Check not SERVING, stats without
  the container's pids, stdout of the talker that is not a run of ``tick\\n``,
  an exec's stdout that is not its own token, an exec status other than 0;
* *errors*: any other status code (the test wants none, UNKNOWN/INTERNAL above all).

Phase 2, **StatsContainer storm**: ``storm`` connections call StatsContainer
back to back on every running container while, on a connection of its own, a
SignalProcess (SIGUSR1 to a container's init, which ignores it) is sent every
100 ms and timed, then a SIGKILL to a victim container (the upstream bug: a
stats call holding a global lock starved the kill, pods stuck Terminating).
A Check prober runs meanwhile.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from agent.protocols import agent_pb2, health_pb2
from tests.e2e.pod import SHARED, add_rootfs, container_spec, process, share_storage
from ttrpc.client import Client
from ttrpc.status import Code, RPCError

SERVICE = "grpc.AgentService"
TALKER = "talker"  # prints continuously; ReadStdout target and exec host
IDLE = "idle"  # sleeps; StatsContainer and SignalProcess target
TICK = b"tick\n"
READ_LEN = 64
TIMEOUT = 30.0  # client deadline: a reply later than this counts as lost
LOST_CODES = (Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE, Code.CANCELLED)
MIXED = ("Check", "StatsContainer", "ReadStdout", "ExecProcess")


@dataclass
class Tally:
    """What the clients saw: latencies per call type, lost/mismatched replies, other errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    sent: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, client: Client, method: str, request: Any, reply: type, *, service: str = SERVICE) -> Any:
        """One call, timed and classified; None when it failed (already recorded)."""
        with self.lock:
            self.sent[method] += 1
        start = time.perf_counter()
        try:
            out = client.call(service, method, request, reply, timeout=TIMEOUT)
        except RPCError as exc:
            with self.lock:
                if exc.code in LOST_CODES:
                    self.lost.append(f"{method}: {exc}")
                else:
                    self.errors[f"{method} {getattr(exc.code, 'name', exc.code)}"] += 1
            return None
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latencies[method].append(elapsed)
        return out

    def mismatch(self, what: str) -> None:
        with self.lock:
            self.mismatched.append(what)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (as benchmarks/_common.py)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --- the pod -----------------------------------------------------------------------------


def prepare(client: Client, share: Path) -> None:
    """CreateSandbox with the share, then the talker and the idle container, started."""
    add_rootfs(share, "base")
    _ok(client, "CreateSandbox", agent_pb2.CreateSandboxRequest(storages=[share_storage(share)]))
    for cid, args in ((TALKER, ["yes", "tick"]), (IDLE, ["sleep", "100000"])):
        spec = container_spec(cid, args, root=f"{SHARED}/base/rootfs")
        _ok(
            client,
            "CreateContainer",
            agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=spec),
        )
        _ok(client, "StartContainer", agent_pb2.StartContainerRequest(container_id=cid))


def _ok(client: Client, method: str, request: Any, reply: type | None = None) -> Any:
    return client.call(SERVICE, method, request, reply or empty_pb2.Empty, timeout=60)


# --- phase 1: mixed calls while containers come and go -----------------------------------


def _mixed_worker(address: str, conn: int, calls: int, tally: Tally) -> None:
    with Client(address, timeout=30) as client:
        for n in range(calls):
            op = MIXED[(conn + n) % len(MIXED)]
            if op == "Check":
                r = tally.call(
                    client,
                    "Check",
                    health_pb2.CheckRequest(),
                    health_pb2.HealthCheckResponse,
                    service="grpc.Health",
                )
                if r is not None and r.status != health_pb2.HealthCheckResponse.SERVING:
                    tally.mismatch(f"Check status {r.status}")
            elif op == "StatsContainer":
                cid = (TALKER, IDLE)[n % 2]
                req = agent_pb2.StatsContainerRequest(container_id=cid)
                r = tally.call(client, "StatsContainer", req, agent_pb2.StatsContainerResponse)
                if r is not None and not r.cgroup_stats.pids_stats.current >= 1:
                    tally.mismatch(f"StatsContainer {cid}: no pids in {r.cgroup_stats}")
            elif op == "ReadStdout":
                req = agent_pb2.ReadStreamRequest(container_id=TALKER, exec_id=TALKER, len=READ_LEN)
                r = tally.call(client, "ReadStdout", req, agent_pb2.ReadStreamResponse)
                if r is not None and not (
                    0 < len(r.data) <= READ_LEN and r.data in TICK * (READ_LEN // 5 + 2)
                ):
                    tally.mismatch(f"ReadStdout {TALKER}: {r.data!r}")
            else:
                _exec(client, conn, n, tally)


def _exec(client: Client, conn: int, n: int, tally: Tally) -> None:
    eid = f"x-{conn}-{n}"
    token = f"{eid}-{time.monotonic_ns()}".encode()
    req = agent_pb2.ExecProcessRequest(
        container_id=TALKER, exec_id=eid, process=process(["echo", token.decode()])
    )
    if tally.call(client, "ExecProcess", req, empty_pb2.Empty) is None:
        return
    out = _drain(client, "ReadStdout", eid, tally)
    err = _drain(client, "ReadStderr", eid, tally)
    if err:
        tally.mismatch(f"exec {eid}: stderr {err!r}")
    if out != token + b"\n":
        tally.mismatch(f"exec {eid}: stdout {out!r}, expected {token!r}")
    wait = agent_pb2.WaitProcessRequest(container_id=TALKER, exec_id=eid)
    r = tally.call(client, "WaitProcess", wait, agent_pb2.WaitProcessResponse)
    if r is not None and r.status != 0:
        tally.mismatch(f"exec {eid}: status {r.status}")


def _drain(client: Client, method: str, eid: str, tally: Tally) -> bytes:
    """An exec's stdout or stderr to EOF (as the runtime reads both: the agent then forgets it)."""
    out = b""
    while True:
        read = agent_pb2.ReadStreamRequest(container_id=TALKER, exec_id=eid, len=4096)
        r = tally.call(client, method, read, agent_pb2.ReadStreamResponse)
        if r is None or not r.data:
            return out
        out += r.data


def _churn(address: str, stop: threading.Event, tally: Tally, prefix: str, least: int = 1) -> int:
    """Create, start, kill, wait and remove containers until ``stop`` (and ``least`` cycles)."""
    cycles = 0
    with Client(address, timeout=30) as client:
        for i in itertools.count():
            if stop.is_set() and cycles >= least:
                return cycles
            cid = f"{prefix}-{i}"
            spec = container_spec(cid, ["sleep", "1000"], root=f"{SHARED}/base/rootfs")
            steps = [
                (
                    "CreateContainer",
                    agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=spec),
                ),
                ("StartContainer", agent_pb2.StartContainerRequest(container_id=cid)),
                ("SignalProcess", agent_pb2.SignalProcessRequest(container_id=cid, signal=signal.SIGKILL)),
            ]
            if not all(tally.call(client, m, r, empty_pb2.Empty) is not None for m, r in steps):
                return cycles
            r = tally.call(
                client,
                "WaitProcess",
                agent_pb2.WaitProcessRequest(container_id=cid),
                agent_pb2.WaitProcessResponse,
            )
            if r is not None and r.status != 128 + signal.SIGKILL:
                tally.mismatch(f"churn {cid}: status {r.status}")
            if (
                tally.call(
                    client,
                    "RemoveContainer",
                    agent_pb2.RemoveContainerRequest(container_id=cid),
                    empty_pb2.Empty,
                )
                is None
            ):
                return cycles
            cycles += 1
    return cycles


def mixed_load(address: str, conns: int, calls: int) -> dict[str, Any]:
    """Phase 1; figures and the tally (``tally`` key)."""
    tally, stop = Tally(), threading.Event()
    churned: list[int] = []
    churner = threading.Thread(target=lambda: churned.append(_churn(address, stop, tally, "churn")))
    workers = [
        threading.Thread(target=_mixed_worker, args=(address, c, calls, tally), name=f"load-{c}")
        for c in range(conns)
    ]
    start = time.monotonic()
    churner.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    stop.set()
    churner.join()
    return {
        "tally": tally,
        "elapsed_s": round(elapsed, 1),
        "calls": sum(tally.sent.values()),
        "churn_cycles": churned[0] if churned else 0,
    }


# --- phase 2: a StatsContainer storm and SignalProcess ----------------------------------


def stats_storm(address: str, storm: int, samples: int, interval: float = 0.1) -> dict[str, Any]:
    """Phase 2; SignalProcess latencies under the storm (``signal_s``), the kill, Check under storm."""
    tally, stop = Tally(), threading.Event()
    with Client(address, timeout=30) as control:
        victim = "victim"
        spec = container_spec(victim, ["sleep", "100000"], root=f"{SHARED}/base/rootfs")
        _ok(
            control,
            "CreateContainer",
            agent_pb2.CreateContainerRequest(container_id=victim, exec_id=victim, OCI=spec),
        )
        _ok(control, "StartContainer", agent_pb2.StartContainerRequest(container_id=victim))
        targets = (TALKER, IDLE, victim)

        def hammer(k: int) -> None:
            with Client(address, timeout=30) as client:
                for n in itertools.count(k):
                    if stop.is_set():
                        return
                    req = agent_pb2.StatsContainerRequest(container_id=targets[n % len(targets)])
                    tally.call(client, "StatsContainer", req, agent_pb2.StatsContainerResponse)

        def probe() -> None:
            with Client(address, timeout=30) as client:
                while not stop.wait(0.02):
                    tally.call(
                        client,
                        "Check",
                        health_pb2.CheckRequest(),
                        health_pb2.HealthCheckResponse,
                        service="grpc.Health",
                    )

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(storm)]
        threads.append(threading.Thread(target=probe))
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)  # let the storm build up
            signals: list[float] = []
            for _ in range(samples):
                req = agent_pb2.SignalProcessRequest(container_id=IDLE, signal=signal.SIGUSR1)
                t0 = time.perf_counter()
                if tally.call(control, "SignalProcess", req, empty_pb2.Empty) is not None:
                    signals.append(time.perf_counter() - t0)
                time.sleep(interval)
            kill = agent_pb2.SignalProcessRequest(container_id=victim, signal=signal.SIGKILL)
            t0 = time.perf_counter()
            killed = tally.call(control, "SignalProcess", kill, empty_pb2.Empty) is not None
            kill_s = time.perf_counter() - t0
            r = tally.call(
                control,
                "WaitProcess",
                agent_pb2.WaitProcessRequest(container_id=victim),
                agent_pb2.WaitProcessResponse,
            )
            kill_to_exit_s = time.perf_counter() - t0
            if r is not None and r.status != 128 + signal.SIGKILL:
                tally.mismatch(f"victim status {r.status}")
        finally:
            stop.set()
            for t in threads:
                t.join()
        stats_calls = tally.sent["StatsContainer"]
        tally.call(
            control, "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=victim), empty_pb2.Empty
        )
    return {
        "tally": tally,
        "signal_s": signals,
        "kill_s": kill_s if killed else None,
        "kill_to_exit_s": kill_to_exit_s,
        "stats_calls": stats_calls,
    }


def summary(tally: Tally) -> dict[str, dict[str, float]]:
    """count, p50, p99, max (ms) per call type."""
    return {
        m: {
            "count": len(v),
            "p50_ms": ms(percentile(v, 0.5)),
            "p99_ms": ms(percentile(v, 0.99)),
            "max_ms": ms(max(v)),
        }
        for m, v in sorted(tally.latencies.items())
    }
