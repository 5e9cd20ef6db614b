"""Hostile clients against one long-lived sandboxed agent (see hostile.py for each attack).

After every attack: a well-behaved client was served throughout, the agent
holds no more fds than before, and it still answers Check.  Memory: the idle
agent's PSS is the reference; the bounds below are the ones stated in
tests/hardening/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hardening import hostile
from tests.hardening.sandbox import SandboxedAgent

#: PSS an attack may add while it runs (other than clients that never read)
DURING_MB = 8.0
#: PSS an agent may keep after an attack ended: malloc arenas of the pool threads that built
#: replies keep their pages (once: repeating an attack adds nothing, see test_client_that_never_reads)
AFTER_MB = 8.0
#: PSS one client that never reads its replies may pin: the 8 MiB write limit, grown by copying, one reply
NON_READER_MB = 24.0


@pytest.fixture(scope="module")
def idle_pss(guest: SandboxedAgent) -> float:
    hostile.warm_up(guest)
    return hostile.mb(guest.memory_kb()["Pss"])


@pytest.fixture(autouse=True)
def healthy_after(guest: SandboxedAgent, idle_pss: float) -> Iterator[None]:
    yield
    assert guest.alive(), guest.logs()[-3000:]
    assert hostile.mb(guest.memory_kb()["Pss"]) - idle_pss < AFTER_MB


def served_and_freed(figures: dict) -> None:
    assert figures["alive"], figures
    assert figures["probe_failures"] == 0, figures
    assert figures["fds_after"] <= figures["fds_before"], figures


def test_slowloris(guest: SandboxedAgent, idle_pss: float) -> None:
    figures = hostile.slowloris(guest, conns=200, hold=1.0)
    served_and_freed(figures)
    assert figures["fds_during"] >= figures["fds_before"] + 200  # they were all connected
    assert figures["pss_during_mb"] - idle_pss < DURING_MB, figures


def test_header_claiming_4_gib(guest: SandboxedAgent, idle_pss: float) -> None:
    figures = hostile.huge_header(guest, body_mib=64)
    served_and_freed(figures)
    assert figures["pss_peak_mb"] - idle_pss < DURING_MB, figures  # skipped, never buffered


def test_garbage_bytes(guest: SandboxedAgent) -> None:
    served_and_freed(hostile.garbage(guest, conns=60))


def test_thousand_connections_opened_and_dropped(guest: SandboxedAgent) -> None:
    figures = hostile.churn(guest, total=1000, batch=100)
    served_and_freed(figures)
    assert figures["fds_peak"] > figures["fds_before"]


def test_disconnect_in_the_middle_of_blocking_calls(guest: SandboxedAgent) -> None:
    figures = hostile.disconnect_blocking(guest, rounds=30, per_call=4)
    served_and_freed(figures)
    assert "GetOOMEvent" in figures["blocking_methods"], figures
    assert figures["threads_after"] <= figures["threads_before"], figures


def test_client_that_never_reads(guest: SandboxedAgent) -> None:
    first = hostile.non_readers(guest, clients=1)
    served_and_freed(first)
    assert first["pss_per_client_mb"] < NON_READER_MB, first
    again = hostile.non_readers(guest, clients=1)  # what the first kept is reused, not added to
    served_and_freed(again)
    assert again["pss_after_mb"] - first["pss_after_mb"] < 2.0, (first, again)
