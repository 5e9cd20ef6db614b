"""The agent's uevent component with real kernel uevents, in this process's loop.

Loop devices give real kernel events without touching anything of the host's:
writing ``add`` to ``/sys/block/loopN/uevent`` makes the kernel re-announce our
own loop device, so a waiter can see its event arrive before it started or
after. Memory-block onlining uses a fake sysfs tree (never the machine's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import AgentConfig
from agent.devices.uevent import Uevent
from agent.errors import DeadlineExceeded
from agent.uevents import Uevents, install
from tests.e2e_network.conftest import run
from ttrpc.loop import Future


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    (tmp_path / "sys/devices/system/memory/memory7").mkdir(parents=True)
    (tmp_path / "sys/devices/system/memory/memory7/online").write_text("0\n")
    a = Agent(AgentConfig(sysfs_root=str(tmp_path / "sys"), hotplug_timeout=5.0))
    yield a
    a.close()


def run_until(agent: Agent, cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        agent.loop.run_once(0.05)


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[list[str]]:
    """Two loop devices of our own (names like loop7), detached afterwards."""
    names = []
    try:
        for i in range(2):
            img = tmp_path / f"disk{i}.img"
            with open(img, "wb") as f:
                f.truncate(1 << 20)
            names.append(run("losetup", "--find", "--show", str(img)).stdout.strip().removeprefix("/dev/"))
        yield names
    finally:
        for name in names:
            run("losetup", "-d", f"/dev/{name}", check=False)


def announce(name: str) -> None:
    Path(f"/sys/block/{name}/uevent").write_text("add")


def block(name: str):  # type: ignore[no-untyped-def]
    def start(watcher):  # type: ignore[no-untyped-def]
        return watcher.watch(
            lambda ev: ev.subsystem == "block" and ev.devpath.endswith(f"/block/{name}"),
            description=f"block device {name}",
            transform=lambda ev: ev.devname,
        )

    return start


def test_real_uevent_before_and_after_the_waiter(agent: Agent, loop_devices: list[str]) -> None:
    early, late = loop_devices
    ue = install(agent)
    assert install(agent) is ue and ue.sock is not None

    announce(early)  # the event arrives before anyone waits for it...
    run_until(agent, lambda: any(p.endswith(f"/block/{early}") for p in ue.watcher.seen))
    fut = ue.wait(block(early))
    assert fut.done() and fut.result() == early  # ...and the seen map answers at once

    fut = ue.wait(block(late))  # this one waits first, then the kernel speaks
    agent.loop.run_once(0.05)
    assert not fut.done()
    announce(late)
    run_until(agent, fut.done)
    assert fut.result() == late and ue.watcher.pending == 0


def test_waits_expire_on_loop_timers_never_early(agent: Agent) -> None:
    ue = install(agent)
    started = time.monotonic()
    done_at: dict[float, float] = {}
    futures: list[Future[Any]] = []
    for timeout in (0.4, 0.2, 0.3):

        def start(watcher, timeout=timeout):  # type: ignore[no-untyped-def]
            return watcher.watch(lambda ev: False, timeout, f"nothing in {timeout}s")

        fut = ue.wait(start)
        fut.add_done_callback(lambda f, t=timeout: done_at.setdefault(t, time.monotonic() - started))
        futures.append(fut)
    run_until(agent, lambda: all(f.done() for f in futures))
    for timeout, fut in zip((0.4, 0.2, 0.3), futures, strict=True):
        with pytest.raises(
            DeadlineExceeded, match=f"timeout after {timeout:g}s waiting for uevent of nothing"
        ):
            fut.result()
        assert done_at[timeout] >= timeout - 0.01
    assert ue.watcher.pending == 0


def test_cancelled_wait_is_dropped(agent: Agent) -> None:
    ue = install(agent)
    fut = ue.wait(lambda w: w.watch(lambda ev: False, 30, "never"))
    assert ue.watcher.pending == 1
    fut.cancel()
    assert ue.watcher.pending == 0


def test_start_error_fails_the_future(agent: Agent) -> None:
    from agent.devices.net import watch_pci_net_interface
    from agent.errors import InvalidArgument

    fut = install(agent).wait(lambda w: watch_pci_net_interface(w, "zz/01"))
    assert fut.done() and isinstance(fut.exception(), InvalidArgument)


def test_hot_added_memory_block_is_onlined(agent: Agent, tmp_path: Path) -> None:
    ue: Uevents = install(agent)
    online = tmp_path / "sys/devices/system/memory/memory7/online"
    ue.dispatch([Uevent("add", "/devices/system/memory/memory7", {"ACTION": "add", "SUBSYSTEM": "memory"})])
    run_until(agent, lambda: ue.memory_onlined == 1)
    assert online.read_text() == "1"
    assert not ue.watcher.seen  # memory blocks are handled, not remembered
