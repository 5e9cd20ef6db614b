"""Private network namespaces for the network worker tests.

Every namespace is created with ``ip netns add`` under a unique name and
deleted afterwards; nothing here touches the host's own links or routes.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from agent.network.client import NetworkWorker
from tests.network.nsutil import need


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = f"kt-{uuid.uuid4().hex[:10]}"
        subprocess.run([need("ip"), "netns", "add", name], check=True, timeout=30)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run([need("ip"), "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def worker(netns: str) -> Iterator[NetworkWorker]:
    w = NetworkWorker(idle_timeout=30, netns=f"/run/netns/{netns}")
    yield w
    w.shutdown()
