"""Hostile-client scenarios against a real agent, each returning its figures.

Shared by ``test_hostile.py`` (which asserts on the figures) and
``benchmarks/hostile.py`` (which prints them).  While each attack runs, a
:class:`Probe` -- a well-behaved client on its own connection -- keeps calling
Health.Check, so "the agent keeps serving others" is measured, not assumed.
Resources are read from the outside: open fds from /proc/PID/fd, memory from
/proc/PID/smaps_rollup.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import statistics
import struct
import threading
import time
from typing import Any

from agent.protocols import health_pb2
from tests.hardening import fuzzlib
from tests.hardening.sandbox import SandboxedAgent
from ttrpc.client import Client
from ttrpc.frame import TYPE_REQUEST, encode_frame, encode_header
from ttrpc.protocols import ttrpc_pb2
from ttrpc.status import RPCError

MAX_CONNECTIONS = 256  # ttrpc.server.DEFAULT_MAX_CONNECTIONS
WRITE_LIMIT = 8 << 20  # ttrpc.server.DEFAULT_WRITE_LIMIT


def request_frame(sid: int, method: str, payload: bytes = b"", service: str = "grpc.AgentService") -> bytes:
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
    return encode_frame(sid, TYPE_REQUEST, 0, req.SerializeToString())


def open_unix(agent: SandboxedAgent, timeout: float = 10.0) -> socket.socket:
    """Connect, waiting while the agent's accept backlog is full (a unix connect says EAGAIN)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(str(agent.socket))
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    sock.settimeout(timeout)
    return sock


def abort(sock: socket.socket) -> None:
    """Close with an RST-like abort where the socket type allows, else plainly."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def settle_fds(agent: SandboxedAgent, baseline: int, timeout: float = 15.0) -> int:
    """Wait until the agent holds no more fds than ``baseline``; returns the last count."""
    deadline = time.monotonic() + timeout
    count = agent.fd_count()
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
        count = agent.fd_count()
    return count


def mb(kb: int) -> float:
    return round(kb / 1024, 1)


class Probe:
    """A good client calling Health.Check in a loop; collects latencies and failures."""

    def __init__(self, agent: SandboxedAgent, interval: float = 0.02) -> None:
        self.agent = agent
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._client = Client(self.agent.address, timeout=10)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()

    def _run(self) -> None:
        req = health_pb2.CheckRequest()
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self._client.call("grpc.Health", "Check", req, health_pb2.HealthCheckResponse, timeout=10)
                self.latencies.append(time.monotonic() - start)
            except RPCError as exc:
                self.failures.append(str(exc))
                return
            self._stop.wait(self.interval)

    def figures(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [float("nan")]
        return {
            "probe_calls": len(self.latencies),
            "probe_failures": len(self.failures),
            "probe_p50_ms": round(statistics.median(lat) * 1000, 2),
            "probe_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
            "probe_max_ms": round(lat[-1] * 1000, 2),
        }


def warm_up(agent: SandboxedAgent) -> None:
    """Call once each method the scenarios use, so the handlers' lazy imports are not
    counted as memory an attack left behind."""
    from agent.protocols import agent_pb2

    methods = {m.name: m for m in fuzzlib.agent_methods()}
    with fuzzlib.WireClient(agent.address) as client:
        for name, req in (
            ("GetMetrics", agent_pb2.GetMetricsRequest()),
            ("GetGuestDetails", agent_pb2.GuestDetailsRequest(mem_block_size=True)),
            ("WaitProcess", agent_pb2.WaitProcessRequest(container_id="warm-up")),
            ("GetOOMEvent", agent_pb2.GetOOMEventRequest()),
        ):
            client.send(methods[name], req.SerializeToString(), 0.2)
        client.drain(grace=30)


def _base(agent: SandboxedAgent) -> tuple[int, int]:
    fuzzlib.raw_check(agent.address)
    return settle_fds(agent, agent.fd_count()), agent.memory_kb()["Pss"]


def _after(agent: SandboxedAgent, fds: int, pss: int, out: dict[str, Any]) -> dict[str, Any]:
    out["fds_before"] = fds
    out["fds_after"] = settle_fds(agent, fds)  # first: at the connection limit a check is refused
    fuzzlib.raw_check(agent.address)
    out["pss_before_mb"] = mb(pss)
    out["pss_after_mb"] = mb(agent.memory_kb()["Pss"])
    out["alive"] = agent.alive()
    return out


# --- the scenarios -----------------------------------------------------------------------------


def slowloris(agent: SandboxedAgent, conns: int = 200, hold: float = 2.0) -> dict[str, Any]:
    """``conns`` clients each send part of a frame (a few header bytes, or a header and part of
    its body) and then nothing, while a good client keeps calling."""
    fds, pss = _base(agent)
    frame = request_frame(1, "GetGuestDetails", b"\x08\x01")
    rng = random.Random(7)
    socks = []
    with Probe(agent) as probe:
        for _ in range(conns):
            sock = open_unix(agent)
            sock.sendall(frame[: rng.randint(1, len(frame) - 1)])
            socks.append(sock)
        time.sleep(hold)
        during = {"fds_during": agent.fd_count(), "pss_during_mb": mb(agent.memory_kb()["Pss"])}
        for sock in socks:
            sock.close()
    return _after(agent, fds, pss, {"connections": conns, **during, **probe.figures()})


def connection_limit(agent: SandboxedAgent, idle: int = MAX_CONNECTIONS) -> dict[str, Any]:
    """``idle`` connections that never complete a frame: is a newcomer still served?"""
    fds, pss = _base(agent)
    socks = [open_unix(agent) for _ in range(idle)]
    for sock in socks:
        sock.sendall(b"\0\0\0")
    deadline = time.monotonic() + 15
    while agent.fd_count() < fds + idle and time.monotonic() < deadline:
        time.sleep(0.05)  # until the agent has accepted them all
    try:
        fuzzlib.raw_check(agent.address, timeout=5)
        served = True
    except (OSError, fuzzlib.Violation, RPCError):
        served = False
    for sock in socks:
        sock.close()
    return _after(agent, fds, pss, {"idle_connections": idle, "newcomer_served": served})


def huge_header(agent: SandboxedAgent, body_mib: int = 64) -> dict[str, Any]:
    """A frame header claiming 4 GiB, then ``body_mib`` MiB of its body: nothing may be buffered."""
    fds, pss = _base(agent)
    sock = open_unix(agent)
    with Probe(agent) as probe:
        sock.sendall(encode_header(0xFFFF_FFFF, 1, TYPE_REQUEST, 0))
        chunk = bytes(1 << 20)
        start = time.monotonic()
        for _ in range(body_mib):
            sock.sendall(chunk)
        seconds = time.monotonic() - start
        peak = agent.memory_kb()["Pss"]
    sock.close()
    out = {"claimed_bytes": 0xFFFF_FFFF, "sent_mib": body_mib, "skip_mib_per_s": round(body_mib / seconds)}
    out["pss_peak_mb"] = mb(peak)
    return _after(agent, fds, pss, {**out, **probe.figures()})


def garbage(agent: SandboxedAgent, conns: int = 100, size: int = 64 << 10, seed: int = 11) -> dict[str, Any]:
    """Random bytes, and valid frames with random bytes spliced in, on fresh connections.
    Whatever comes back must be whole, well-formed response frames."""
    fds, pss = _base(agent)
    rng = random.Random(seed)
    src = fuzzlib.RandomSource(rng)
    frames = fuzzlib.load_corpus("frames")
    replies = 0
    with Probe(agent) as probe:
        for i in range(conns):
            data = (
                rng.randbytes(rng.randint(1, size))
                if i % 2
                else fuzzlib.mutate(rng.choice(frames), src, frames)
            )
            with fuzzlib.WireClient(agent.address) as client:
                client.sock.setblocking(True)
                client.sock.settimeout(10)
                client.sock.sendall(data)
                replies += len(read_frames(client, 0.02))
    return _after(agent, fds, pss, {"connections": conns, "replies_checked": replies, **probe.figures()})


def read_frames(client: fuzzlib.WireClient, wait: float) -> list[Any]:
    """Read for ``wait`` seconds; every frame must be a well-formed response (raises otherwise)."""
    client.sock.settimeout(wait)
    out = []
    try:
        while True:
            data = client.sock.recv(1 << 16)
            if not data:
                raise fuzzlib.Violation("the agent closed a connection that sent it garbage")
            for frame in client.decoder.feed(data):
                if frame.msg_type != 2:
                    raise fuzzlib.Violation(f"a frame of type {frame.msg_type} from the server")
                ttrpc_pb2.Response.FromString(frame.data)
                out.append(frame)
    except TimeoutError:
        return out


def churn(agent: SandboxedAgent, total: int = 1000, batch: int = 100) -> dict[str, Any]:
    """``total`` connections opened and dropped, ``batch`` at a time: some idle, some mid-frame,
    some mid-call (a request sent, the reply never read), half of them aborted with RST."""
    fds, pss = _base(agent)
    frame = request_frame(1, "GetGuestDetails", b"\x08\x01")
    peak = fds
    with Probe(agent) as probe:
        for start in range(0, total, batch):
            socks = [open_unix(agent) for _ in range(batch)]
            for i, sock in enumerate(socks):
                if i % 3 == 1:
                    sock.sendall(frame[:7])
                elif i % 3 == 2:
                    sock.sendall(frame)
            peak = max(peak, agent.fd_count())
            for i, sock in enumerate(socks):
                (abort if (start + i) % 2 else socket.socket.close)(sock)
    return _after(agent, fds, pss, {"connections": total, "fds_peak": peak, **probe.figures()})


def blocking_calls(agent: SandboxedAgent, wait: float = 1.0) -> list[tuple[fuzzlib.MethodInfo, bytes]]:
    """The seed requests that are still unanswered after ``wait`` seconds (no deadline sent)."""
    from tests.hardening import seeds

    methods = {m.name: m for m in fuzzlib.fuzzed_methods()}
    skip = {"DestroySandbox", "RemoveContainer"}  # would undo what other seeds set up
    candidates = [(methods[n], p) for n, p in seeds.dispatch_seeds() if n not in skip]
    with fuzzlib.WireClient(agent.address) as client:
        sids = {client.send(m, p, deadline=3600): (m, p) for m, p in candidates}
        end = time.monotonic() + wait
        while client.pending and time.monotonic() < end:
            client.poll(0.05, grace=3600)
        return [sids[sid] for sid in client.pending]


def disconnect_blocking(agent: SandboxedAgent, rounds: int = 50, per_call: int = 4) -> dict[str, Any]:
    """Clients that start every call that blocks today and vanish while the calls are pending."""
    blockers = blocking_calls(agent)
    fds, pss = _base(agent)
    threads = agent.threads()
    with Probe(agent) as probe:
        for r in range(rounds):
            client = fuzzlib.WireClient(agent.address)
            for method, payload in blockers:
                for _ in range(per_call):
                    client.send(method, payload, deadline=3600)
            client.poll(0.01, grace=3600)
            (abort if r % 2 else socket.socket.close)(client.sock)
    out = {
        "blocking_methods": sorted({m.name for m, _ in blockers}),
        "abandoned_calls": rounds * per_call * len(blockers),
        "threads_before": threads,
        "threads_after": agent.threads(),
    }
    return _after(agent, fds, pss, {**out, **probe.figures()})


def non_readers(agent: SandboxedAgent, clients: int = 4, method: str = "GetMetrics") -> dict[str, Any]:
    """Clients that send calls as fast as they can and never read a reply.

    The server stops reading a client once WRITE_LIMIT bytes of its replies are
    unsent; the figure to watch is the memory each such client pins."""
    fds, pss = _base(agent)
    frames = b"".join(request_frame(2 * i + 1, method) for i in range(20000))
    socks, sent = [], []
    with Probe(agent) as probe:
        for _ in range(clients):
            sock = open_unix(agent)
            sock.setblocking(False)
            n = 0
            deadline = time.monotonic() + 20
            while n < len(frames) and time.monotonic() < deadline:
                try:
                    n += sock.send(frames[n : n + (1 << 16)])
                except BlockingIOError:
                    if _plateau(agent):
                        break
            socks.append(sock)
            sent.append(n)
        peak = agent.memory_kb()["Pss"]
        fuzzlib.raw_check(agent.address)
    for sock in socks:
        abort(sock)
    time.sleep(0.5)
    out = {
        "clients": clients,
        "request_bytes_accepted": sent,
        "pss_peak_mb": mb(peak),
        "pss_per_client_mb": round((peak - pss) / 1024 / clients, 1),
    }
    return _after(agent, fds, pss, {**out, **probe.figures()})


def _plateau(agent: SandboxedAgent, wait: float = 0.3) -> bool:
    """True when the agent's memory stopped growing (it stopped reading us)."""
    first = agent.memory_kb()["Pss"]
    time.sleep(wait)
    return agent.memory_kb()["Pss"] - first < 256


SCENARIOS = {
    "slowloris": slowloris,
    "huge_header": huge_header,
    "garbage": garbage,
    "churn": churn,
    "disconnect_blocking": disconnect_blocking,
    "non_readers": non_readers,
    "connection_limit": connection_limit,
}


def run_all(agent: SandboxedAgent, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: fn(agent, **overrides.get(name, {})) for name, fn in SCENARIOS.items()}


if __name__ == "__main__":  # a quick look: python -m tests.hardening.hostile SCRATCH
    import json
    import sys
    from pathlib import Path

    with SandboxedAgent(Path(sys.argv[1])) as guest:
        warm_up(guest)
        print(json.dumps(run_all(guest), indent=1))
    os._exit(0)
