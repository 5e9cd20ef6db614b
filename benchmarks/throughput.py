"""Health.Check throughput and latency: our agent beside the Go ttRPC server, same run.

Load comes from the Go reference client (`ttrpcpeer bench`), at 1 connection x 1 call in
flight and 4 connections x 32 in flight, against our agent and against the Go server; then
our own Python client against both servers; then the frame header codecs of ttrpc.frame
(the construct declaration and the precompiled struct codec). The load generator shares the
machine's cores with the server, so compare ratios from one run, not figures across machines.

Usage: python3 benchmarks/throughput.py [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
import timeit
from pathlib import Path

from _common import gopeer, percentile, table

from agent.protocols import health_pb2

SHAPES = [(1, 1), (4, 32)]


def go_load(peer: Path, addr: str, conns: int, inflight: int, seconds: float) -> dict:
    out = subprocess.run(
        [str(peer), "bench", addr, str(conns), str(inflight), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def python_load(addr: str, threads: int, seconds: float) -> dict:
    """Our Client: `threads` threads sharing one connection, Check in a loop."""
    from ttrpc.client import Client

    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0]
    measuring, stop = threading.Event(), threading.Event()

    def worker(i: int, client: Client) -> None:
        req = health_pb2.CheckRequest()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.call("grpc.Health", "Check", req, health_pb2.HealthCheckResponse)
            except Exception:
                if measuring.is_set():
                    errors[0] += 1
                continue
            if measuring.is_set():
                lat[i].append(time.perf_counter() - t0)

    with Client(addr) as client:
        ts = [threading.Thread(target=worker, args=(i, client)) for i in range(threads)]
        for t in ts:
            t.start()
        time.sleep(0.5)
        measuring.set()
        start = time.perf_counter()
        time.sleep(seconds)
        measuring.clear()
        elapsed = time.perf_counter() - start
        stop.set()
        for t in ts:
            t.join()
    all_lat = sorted(x for xs in lat for x in xs)
    return {
        "calls_per_s": len(all_lat) / elapsed,
        "p50_us": percentile(all_lat, 0.5) * 1e6,
        "p99_us": percentile(all_lat, 0.99) * 1e6,
        "errors": errors[0],
    }


def frame_codecs(number: int = 200_000) -> list[list[object]]:
    from ttrpc import frame

    header = frame.reference_header()
    fields = dict(length=1234, stream_id=77, type=1, flags=0)
    raw = frame.encode_header(1234, 77, 1, 0)
    assert header.build(fields) == raw and frame.decode_header(raw) == (1234, 77, 1, 0)
    cases = [
        ("precompiled", "encode_header", lambda: frame.encode_header(1234, 77, 1, 0)),
        ("precompiled", "decode_header", lambda: frame.decode_header(raw)),
        ("construct", "HEADER.build", lambda: header.build(fields)),
        ("construct", "HEADER.parse", lambda: header.parse(raw)),
    ]
    rows = []
    for codec, op, fn in cases:
        n = number if codec == "precompiled" else number // 20
        best = min(timeit.repeat(fn, number=n, repeat=3))
        rows.append([codec, op, n / best, best / n * 1e9])
    return rows


def row(client: str, server: str, load: str, r: dict) -> list[object]:
    return [client, server, load, r["calls_per_s"], r["p50_us"], r["p99_us"], r["errors"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load point")
    args = ap.parse_args()

    peer = gopeer.build_peer()
    d = Path(tempfile.mkdtemp(prefix="bench-"))
    agent_addr, go_addr = f"unix://{d}/agent.sock", f"unix://{d}/go.sock"
    agent = gopeer.start_agent(agent_addr)
    go = gopeer.start_go_server(peer, go_addr)
    try:
        rows, ratios = [], []
        for conns, inflight in SHAPES:
            ours = go_load(peer, agent_addr, conns, inflight, args.seconds)
            ref = go_load(peer, go_addr, conns, inflight, args.seconds)
            rows.append(row("go client", "kata-agent (python)", f"{conns}x{inflight}", ours))
            rows.append(row("go client", "go ttrpc server", f"{conns}x{inflight}", ref))
            ratio = ref["calls_per_s"] / ours["calls_per_s"]
            ratios.append(f"{conns}x{inflight}: go server / kata-agent = x{ratio:.1f}")
        for threads in (1, 8):
            for name, addr in (("kata-agent (python)", agent_addr), ("go ttrpc server", go_addr)):
                rows.append(
                    row("python client", name, f"1x{threads}", python_load(addr, threads, args.seconds))
                )
    finally:
        agent.stop()
        go.stop()
        shutil.rmtree(d, ignore_errors=True)

    print(f"Health.Check over unix sockets, {args.seconds:g} s per point (conns x in flight)")
    print(table(["client", "server", "load", "calls/s", "p50 us", "p99 us", "errors"], rows))
    print("calls/s ratio, " + "; ".join(ratios))
    print()
    print("ttrpc.frame header codecs")
    print(table(["codec", "operation", "ops/s", "ns/op"], frame_codecs()))


if __name__ == "__main__":
    main()
