"""Load: N connections of mixed calls while containers come and go, then a StatsContainer storm.

One agent, PID 1 of its own namespaces with crun (as in tests/e2e), a talker
container printing continuously and an idle one (tests/hardening/loadgen.py):

1. ``--conns`` connections × ``--calls`` calls each, round-robin over Check,
   StatsContainer, ReadStdout (len 64) and ExecProcess (+ ReadStdout of the exec
   and ReadStderr to EOF + WaitProcess), while containers are created, started, killed, waited
   and removed in a loop. Every reply is checked against its request: lost,
   mismatched and error counts (all should be 0), p50/p99 per call type.
2. ``--storm`` connections calling StatsContainer back to back; meanwhile a
   SignalProcess every 100 ms (``--samples`` of them) and a final SIGKILL to a
   container, timed: the upstream starvation bug (target ≤ 100 ms).

Usage: python3 benchmarks/load.py [--conns 64] [--calls 100] [--storm 64] [--samples 30]
(needs root, crun, busybox).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT, table  # noqa: F401 - ROOT puts the repo on sys.path

from tests.e2e.guest import GuestAgent
from tests.hardening import loadgen
from ttrpc.client import Client

TARGET_MS = 100.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--storm", type=int, default=64)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kata-load-") as tmp:
        work = Path(tmp)
        (work / "share").mkdir()
        (work / "guest").mkdir()
        guest = GuestAgent(work / "guest", runtime="crun")
        try:
            address = f"unix://{guest.sock}"
            with Client(address, timeout=30) as client:
                loadgen.prepare(client, work / "share")
            mixed = loadgen.mixed_load(address, args.conns, args.calls)
            storm = loadgen.stats_storm(address, args.storm, args.samples)
        finally:
            guest.stop()
    ok = report(args, mixed, storm)
    return 0 if ok else 1


def report(args: argparse.Namespace, mixed: dict, storm: dict) -> bool:
    tally = mixed["tally"]
    print(
        f"== mixed load: {args.conns} connections x {args.calls} calls, {mixed['calls']} calls in"
        f" {mixed['elapsed_s']} s, {mixed['churn_cycles']} container lifecycles meanwhile"
    )
    rows = [[m, f["count"], f["p50_ms"], f["p99_ms"], f["max_ms"]] for m, f in loadgen.summary(tally).items()]
    print(table(["call", "count", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"lost {len(tally.lost)}, mismatched {len(tally.mismatched)}, errors {dict(tally.errors)}")
    for line in (tally.lost + tally.mismatched)[:10]:
        print("  ", line)

    st = storm["tally"]
    sig = storm["signal_s"]
    print(f"\n== StatsContainer storm: {args.storm} connections, {storm['stats_calls']} StatsContainer calls")
    rows = [[m, f["count"], f["p50_ms"], f["p99_ms"], f["max_ms"]] for m, f in loadgen.summary(st).items()]
    print(table(["call", "count", "p50 ms", "p99 ms", "max ms"], rows))
    sig_p50, sig_max = loadgen.ms(loadgen.percentile(sig, 0.5)), loadgen.ms(max(sig, default=0.0))
    kill_ms = loadgen.ms(storm["kill_s"]) if storm["kill_s"] is not None else None
    print(
        f"SignalProcess under storm: p50 {sig_p50} ms, max {sig_max} ms over {len(sig)};"
        f" SIGKILL answered in {kill_ms} ms, exit seen after {loadgen.ms(storm['kill_to_exit_s'])} ms"
        f" (target <= {TARGET_MS:.0f} ms)"
    )
    print(f"lost {len(st.lost)}, mismatched {len(st.mismatched)}, errors {dict(st.errors)}")
    clean = not (tally.lost or tally.mismatched or tally.errors or st.lost or st.mismatched or st.errors)
    fast = kill_ms is not None and sig_max <= TARGET_MS and kill_ms <= TARGET_MS
    print(
        f"\nreplies: {'all matched' if clean else 'FAILURES'}; signal latency: {'ok' if fast else 'ABOVE TARGET'}"
    )
    sys.stdout.flush()
    return clean


if __name__ == "__main__":
    sys.exit(main())
