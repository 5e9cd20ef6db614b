"""The agent-side modules must stay light: pyroute2 belongs to the worker only."""

from __future__ import annotations

import subprocess
import sys

AGENT_SIDE = [
    "agent.network",
    "agent.network.client",
    "agent.network.protocol",
    "agent.network.iptables",
    "agent.devices.uevent",
    "agent.devices.watcher",
    "agent.devices.pci",
    "agent.devices.block",
    "agent.devices.net",
    "agent.guest.copyfile",
    "agent.guest.cpumem",
    "agent.guest.details",
    "agent.guest.entropy",
    "agent.guest.clock",
    "agent.guest.swap",
    "agent.guest.volume",
    "agent.guest.metrics",
]


def test_agent_side_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in AGENT_SIDE)
        + "heavy = [m for m in ('pyroute2', 'asyncio', 'sqlite3', 'ssl', 'multiprocessing', 'dataclasses')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_worker_side_does_import_pyroute2() -> None:
    code = "import sys, agent.network.ops; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
