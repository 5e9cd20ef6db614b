"""Fixtures for the Go interop tests: the peer binary, our agent and the Go server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gopeer
import pytest


@pytest.fixture(scope="session")
def peer() -> Path:
    """The Go peer, built once per session (offline, from Debian's Go packages)."""
    return gopeer.build_peer()


@pytest.fixture(scope="session")
def peer_msgs(peer: Path) -> dict:
    return gopeer.peer_messages(peer.parent)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory for sockets (unix paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="kata-interop-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_addr() -> Iterator[str]:
    """Our agent serving on a unix socket for the whole module."""
    d = Path(tempfile.mkdtemp(prefix="kata-agent-"))
    addr = f"unix://{d}/agent.sock"
    proc = gopeer.start_agent(addr)
    yield addr
    proc.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def go_addr(peer: Path) -> Iterator[str]:
    """The Go reference server serving grpc.Health and ttrpcpeer.Test."""
    d = Path(tempfile.mkdtemp(prefix="kata-goserver-"))
    addr = f"unix://{d}/go.sock"
    proc = gopeer.start_go_server(peer, addr)
    yield addr
    proc.stop()
    shutil.rmtree(d, ignore_errors=True)
