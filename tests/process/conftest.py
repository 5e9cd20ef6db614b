"""Fixtures: a real loop with the one reaper installed, and leak checks around every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.reaper import Reaper
from ttrpc.loop import Loop


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def loop() -> Iterator[Loop]:
    before = open_fds()
    loop = Loop()
    yield loop
    assert loop.watched_fds() == 1, "a test left an fd registered in the loop"
    loop.close()
    leaked = open_fds() - before
    # listdir's own fd may appear in the second listing only
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)}"


@pytest.fixture
def reaper(loop: Loop) -> Iterator[Reaper]:
    reaper = Reaper(loop)
    reaper.install()
    yield reaper
    # Let stragglers (killed grandchildren) be collected before the handler goes.
    deadline = loop.time() + 10
    while reaper.pending() and loop.time() < deadline:
        loop.run_once(0.05)
    assert reaper.pending() == 0, "a test left a watcher waiting"
    reaper.uninstall()
