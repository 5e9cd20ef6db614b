"""The small pure pieces under the container RPCs, without namespaces (kept beside the e2e tests
that exercise them whole): generator tasks, the OOM queue, cgroup paths, hooks, /proc parsing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.container import handles_signal, net_dev
from agent.errors import InvalidArgument, NotFound
from agent.oomevents import OomEvents
from agent.sandbox import cgroups_path, find_hooks
from agent.tasks import run, task, then, with_timeout
from ttrpc.loop import CancelledError, Future, Loop


@pytest.fixture
def loop():  # type: ignore[no-untyped-def]
    lp = Loop()
    yield lp
    lp.close()


def test_task_yields_results_and_raises_at_the_yield(loop: Loop) -> None:
    later: Future[int] = Future()

    @task
    def steps(x: int):  # type: ignore[no-untyped-def]
        a = yield loop.run_in_thread(lambda: x * 2)
        try:
            yield _failed(NotFound("nope"))
        except NotFound as exc:
            b = exc.message
        c = yield later
        return a, b, c

    fut = steps(21)
    loop.call_later(0.01, later.set_result, 7)
    assert loop.run_until(fut, timeout=10) == (42, "nope", 7)


def _failed(exc: BaseException) -> Future[None]:
    fut: Future[None] = Future()
    fut.set_exception(exc)
    return fut


def test_task_done_futures_do_not_recurse(loop: Loop) -> None:
    def many():  # type: ignore[no-untyped-def]
        total = 0
        for i in range(20000):  # far past the recursion limit if each step recursed
            done: Future[int] = Future()
            done.set_result(i)
            total += yield done
        return total

    fut = run(many())
    assert fut.done() and fut.result() == sum(range(20000))


def test_task_errors_before_the_first_yield_and_cancelled_steps(loop: Loop) -> None:
    @task
    def early():  # type: ignore[no-untyped-def]
        raise InvalidArgument("bad")
        yield  # pragma: no cover

    assert isinstance(early().exception(), InvalidArgument)
    pending: Future[None] = Future()

    def waits():  # type: ignore[no-untyped-def]
        yield pending

    fut = run(waits())
    pending.cancel()
    assert isinstance(fut.exception(), CancelledError)


def test_then_and_with_timeout(loop: Loop) -> None:
    src: Future[int] = Future()
    doubled = then(src, lambda v: v * 2)
    src.set_result(4)
    assert doubled.result() == 8
    never: Future[int] = Future()
    timed = with_timeout(loop, never, 0.01, lambda: NotFound("late"))
    with pytest.raises(NotFound):
        loop.run_until(timed, timeout=10)
    assert not never.done()  # the work itself carries on


class _Watch:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.events: list[str] = []
        self.closed = False

    @property
    def fd(self) -> int:
        return self.r

    def fire(self, event: str) -> None:
        self.events.append(event)
        os.write(self.w, b"x")

    def check(self):  # type: ignore[no-untyped-def]
        os.read(self.r, 64)

        class E:
            value = self.events.pop(0) if self.events else "none"

        return E

    def close(self) -> None:
        self.closed = True
        os.close(self.r)
        os.close(self.w)


def test_oom_queue_long_poll_order_bound_and_gone(loop: Loop) -> None:
    oom = OomEvents(loop, limit=3)
    watch = _Watch()
    oom.watch("c1", watch)
    waiter = oom.get()
    cancelled = oom.get()
    cancelled.cancel()
    watch.fire("oom")
    loop.run_until(waiter, timeout=10)
    assert waiter.result() == "c1"
    for cid in ("a", "b", "c", "d"):
        oom.push(cid)
    assert [oom.get().result() for _ in range(3)] == ["b", "c", "d"] and oom.dropped == 1
    watch.fire("gone")
    for _ in range(20):
        loop.run_once(0.01)
    assert watch.closed and oom.watching() == 0
    oom.close()


def test_cgroups_path() -> None:
    assert cgroups_path("", "c1") == "/kata/c1"
    assert cgroups_path("kubepods/pod1/c1", "c1") == "/kubepods/pod1/c1"
    assert cgroups_path("system.slice:kata:c1", "c1") == "/system.slice/kata-c1"
    for bad in ("/a/../b", "/", "a\0b"):
        with pytest.raises(InvalidArgument):
            cgroups_path(bad, "c1")


def test_find_hooks_takes_regular_executables_only(tmp_path: Path) -> None:
    pre = tmp_path / "prestart"
    pre.mkdir()
    for name, mode in (("b.sh", 0o755), ("a.sh", 0o700), ("plain", 0o644)):
        (pre / name).write_text("#!/bin/sh\n")
        (pre / name).chmod(mode)
    os.symlink("a.sh", pre / "link")
    (pre / "dir").mkdir()
    hooks = find_hooks(str(tmp_path))
    assert hooks == {
        "prestart": [
            {"path": str(pre / "a.sh"), "args": ["a.sh", "prestart"]},
            {"path": str(pre / "b.sh"), "args": ["b.sh", "prestart"]},
        ]
    }
    assert find_hooks(str(tmp_path / "missing")) == {}


def test_handles_signal_reads_sigcgt() -> None:
    trapping = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,sys; signal.signal(signal.SIGTERM, lambda *a: None); print(1, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    plain = subprocess.Popen(["sleep", "30"])
    try:
        assert trapping.stdout is not None and trapping.stdout.readline() == b"1\n"
        assert handles_signal(trapping.pid, signal.SIGTERM)
        assert not handles_signal(plain.pid, signal.SIGTERM)
        assert not handles_signal(2**22 + 12345, signal.SIGTERM)  # no such process
    finally:
        for p in (trapping, plain):
            p.kill()
            p.wait()


def test_net_dev(tmp_path: Path) -> None:
    sample = tmp_path / "dev"
    sample.write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:  100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n"
        "  eth0: 5000      40    1    2    0     0          0         0     6000      50    3    4    0     0       0          0\n"
    )
    stats = net_dev(str(sample))
    assert stats[1] == {
        "name": "eth0",
        "rx_bytes": 5000,
        "rx_packets": 40,
        "rx_errors": 1,
        "rx_dropped": 2,
        "tx_bytes": 6000,
        "tx_packets": 50,
        "tx_errors": 3,
        "tx_dropped": 4,
    }
    assert net_dev(str(tmp_path / "missing")) == []
