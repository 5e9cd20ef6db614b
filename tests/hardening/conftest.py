"""Sandboxed agents for the hardening tests (see sandbox.py for what the sandbox isolates)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hardening.sandbox import SandboxedAgent, available


def _guest(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[SandboxedAgent]:
    if not available():
        pytest.skip("needs root and unshare(1) for the sandbox")
    agent = SandboxedAgent(tmp_path_factory.mktemp(name))
    agent.start()
    try:
        yield agent
    finally:
        code = agent.stop()
        assert code == 0, f"the agent did not stop cleanly ({code}):\n{agent.logs()[-3000:]}"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxedAgent]:
    """One sandboxed agent shared by a test module."""
    yield from _guest(tmp_path_factory, "guest")


@pytest.fixture
def fresh_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxedAgent]:
    """A sandboxed agent of its own, for tests that measure resources from a clean start."""
    yield from _guest(tmp_path_factory, "fresh")
