"""Load on a guest agent running real containers (crun): every reply matches, kills are not starved.

The CI-sized run of benchmarks/load.py (tests/hardening/loadgen.py says what
each phase does): 16 connections × 80 mixed calls while containers are
created, started, killed and removed, then a StatsContainer storm from 16
connections with SignalProcess timed meanwhile. Bounds are lenient for a
loaded 2-core machine; the benchmark reports the figures against the 100 ms
target.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.guest import GuestAgent
from tests.hardening import loadgen
from ttrpc.client import Client

CONNS = 16
CALLS = 80
STORM = 16
SAMPLES = 20
#: a SignalProcess (and the SIGKILL) during the storm is answered within this (benchmark target: 0.1 s)
SIGNAL_BOUND_S = 2.0
#: Check p99 while the mixed load runs, and while the storm runs
CHECK_P99_S = 2.0


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, cgroups)")
    missing = [t for t in ("crun", "unshare", "mount", "busybox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing tools: {', '.join(missing)} (see .ci/install)")
    work = tmp_path_factory.mktemp("load")
    (work / "share").mkdir()
    (work / "guest").mkdir()
    guest = GuestAgent(work / "guest", runtime="crun")
    try:
        address = f"unix://{guest.sock}"
        with Client(address, timeout=30) as client:
            loadgen.prepare(client, Path(work / "share"))
        yield address
        assert guest.proc.poll() is None, guest.log()[-3000:]
    finally:
        guest.stop()


def assert_clean(tally: loadgen.Tally) -> None:
    assert tally.lost == [], tally.lost[:10]
    assert tally.mismatched == [], tally.mismatched[:10]
    assert not tally.errors, dict(tally.errors)


def test_mixed_load_while_containers_come_and_go(address: str) -> None:
    figures = loadgen.mixed_load(address, CONNS, CALLS)
    tally = figures["tally"]
    print(figures["elapsed_s"], "s", figures["churn_cycles"], "cycles", loadgen.summary(tally))
    assert_clean(tally)
    for method in loadgen.MIXED:
        assert tally.latencies[method], method
    assert len(tally.latencies["ExecProcess"]) == CONNS * CALLS // len(loadgen.MIXED)
    assert len(tally.latencies["WaitProcess"]) >= len(tally.latencies["ExecProcess"])
    assert figures["churn_cycles"] >= 1
    assert loadgen.percentile(tally.latencies["Check"], 0.99) < CHECK_P99_S, loadgen.summary(tally)


def test_signal_is_not_starved_by_a_stats_storm(address: str) -> None:
    figures = loadgen.stats_storm(address, STORM, SAMPLES)
    tally = figures["tally"]
    print(figures["signal_s"], figures["kill_s"], figures["stats_calls"], loadgen.summary(tally))
    assert_clean(tally)
    assert figures["stats_calls"] >= STORM  # it was a storm
    assert len(figures["signal_s"]) == SAMPLES
    assert max(figures["signal_s"]) < SIGNAL_BOUND_S, figures["signal_s"]
    assert figures["kill_s"] is not None and figures["kill_s"] < SIGNAL_BOUND_S, figures["kill_s"]
    assert loadgen.percentile(tally.latencies["Check"], 0.99) < CHECK_P99_S, loadgen.summary(tally)
