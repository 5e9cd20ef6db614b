"""A real kata-agent inside a private network namespace, driven over its unix socket.

Every namespace gets a unique ``ip netns add`` name and is always deleted;
the agent runs under ``ip netns exec`` so nothing it does to links, routes,
neighbours or iptables can reach the host's own network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.harness import start_agent, stop_agent, wait_ready
from ttrpc.client import Client

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
AGENT = "grpc.AgentService"


def run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ip(ns: str, *args: str) -> str:
    return run(IP, "-n", ns, *args).stdout


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(ip(ns, "-j", *args) or "[]")


class Netns:
    """Creates uniquely named namespaces and deletes every one of them."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self) -> str:
        name = f"kt4-{uuid.uuid4().hex[:10]}"
        run(IP, "netns", "add", name)
        self.names.append(name)
        return name

    def delete_all(self) -> None:
        for name in self.names:
            run(IP, "netns", "del", name, check=False)
        self.names.clear()


class RunningAgent:
    """One agent process in namespace ``ns``, its socket, a client and the ctl."""

    def __init__(
        self, ns: str, workdir: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ):
        self.ns = ns
        self.workdir = workdir
        self.sock = workdir / "agent.sock"
        self.addr = f"unix://{self.sock}"
        full_env = {"KATA_AGENT_LOG_LEVEL": "warn", **(env or {})}
        self.proc = start_agent(self.sock, env=full_env, prefix=[IP, "netns", "exec", ns, *(prefix or [])])
        try:
            self.client: Client = wait_ready(self.addr, self.proc, timeout=30)
        except BaseException:
            stop_agent(self.proc)
            raise

    @property
    def pid(self) -> int:
        """The agent's pid (``ip netns exec`` execs the agent in place)."""
        return self.proc.pid

    def call(self, method: str, request: Any, reply_type: type, timeout: float = 30) -> Any:
        return self.client.call(AGENT, method, request, reply_type, timeout=timeout)

    def ctl(self, method: str, body: dict[str, Any] | str = "{}", timeout: float = 60) -> tuple[int, Any]:
        """``kata-agent-ctl call METHOD JSON``: (exit code, parsed stdout or stderr JSON)."""
        text = body if isinstance(body, str) else json.dumps(body)
        argv = [sys.executable, "-m", "agent.ctl", "--addr", self.addr, "call", method, text]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        out = proc.stdout if proc.returncode == 0 else proc.stderr
        try:
            return proc.returncode, json.loads(out)
        except ValueError:
            return proc.returncode, out

    def children(self) -> list[int]:
        """Live child processes of the agent (the network worker, while it runs)."""
        pids: list[int] = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        return pids

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        stop_agent(self.proc)


@pytest.fixture
def netns() -> Iterator[Netns]:
    spaces = Netns()
    yield spaces
    spaces.delete_all()


@pytest.fixture
def agent_factory(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """``make(env=..., ns=...)`` starts an agent (in a fresh namespace unless one is given)."""
    agents: list[RunningAgent] = []

    def make(
        env: dict[str, str] | None = None, ns: str | None = None, prefix: list[str] | None = None
    ) -> RunningAgent:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        agent = RunningAgent(ns or netns.new(), workdir, env, prefix)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()
