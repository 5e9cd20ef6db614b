"""The agent's link to its network worker, seen from outside: a stuck worker never
blocks the loop, a dead one is replaced, and every exit goes through the reaper."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from agent.protocols import agent_pb2, health_pb2
from tests.e2e_network.conftest import RunningAgent
from ttrpc.status import Code, RPCError


def list_interfaces(agent: RunningAgent, timeout: float = 30) -> agent_pb2.Interfaces:
    return agent.call("ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces, timeout)


def worker_of(agent: RunningAgent) -> int:
    [pid] = agent.children()
    return pid


def gone(pid: int, timeout: float = 10) -> bool:
    """The pid disappears (exited and reaped: a zombie would still be listed)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stuck_worker_never_blocks_the_loop(agent_factory: Callable[..., RunningAgent]) -> None:
    agent = agent_factory()
    list_interfaces(agent)
    worker = worker_of(agent)
    os.kill(worker, signal.SIGSTOP)
    try:
        outcome: list[BaseException | object] = []
        call = threading.Thread(
            target=lambda: outcome.append(_try(lambda: list_interfaces(agent, timeout=30)))
        )
        call.start()
        time.sleep(0.3)
        start = time.monotonic()  # meanwhile the agent answers everything else at once
        for _ in range(20):
            agent.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=5
            )
        assert time.monotonic() - start < 2.0
        assert call.is_alive()
        # The worker dies with a call in flight: the caller learns it, the reaper collects it.
        os.kill(worker, signal.SIGKILL)
        call.join(30)
        assert isinstance(outcome[0], RPCError) and outcome[0].code == Code.UNAVAILABLE
        assert "network worker exited before answering" in outcome[0].message
        assert gone(worker)
    finally:
        if os.path.exists(f"/proc/{worker}"):
            os.kill(worker, signal.SIGKILL)
    # The next call gets a fresh worker.
    assert any(i.name == "lo" for i in list_interfaces(agent).Interfaces)
    assert worker_of(agent) != worker


def test_abandoned_call_reply_is_dropped(agent_factory: Callable[..., RunningAgent]) -> None:
    """A call whose deadline passed while the worker was paused: its late reply is ignored
    and the same worker serves the next call."""
    agent = agent_factory()
    list_interfaces(agent)
    worker = worker_of(agent)
    os.kill(worker, signal.SIGSTOP)
    try:
        with pytest.raises(RPCError) as err:
            agent.call("ListRoutes", agent_pb2.ListRoutesRequest(), agent_pb2.Routes, timeout=0.5)
        assert err.value.code == Code.DEADLINE_EXCEEDED
    finally:
        os.kill(worker, signal.SIGCONT)
    assert any(i.name == "lo" for i in list_interfaces(agent).Interfaces)
    assert worker_of(agent) == worker


def test_idle_worker_exits_and_is_reaped(agent_factory: Callable[..., RunningAgent]) -> None:
    agent = agent_factory()
    list_interfaces(agent)
    worker = worker_of(agent)
    assert gone(worker, timeout=20)  # idle exit after a few seconds, collected by the agent
    assert agent.children() == []
    list_interfaces(agent)
    assert worker_of(agent) != worker


def _try(fn: Callable[[], object]) -> BaseException | object:
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc
