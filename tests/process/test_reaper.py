"""The one reaper: exit codes, signals, early exits, orphans, bounds (real children)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from agent.errors import NotFound
from agent.reaper import Reaper, is_child_subreaper
from tests.process.helpers import gone, state, wait_for
from ttrpc.loop import Loop


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def start(*argv: str) -> int:
    """A bare child (posix_spawn): the reaper alone collects it."""
    return os.posix_spawn(argv[0], list(argv), dict(os.environ))


def test_install_makes_us_a_subreaper(reaper: Reaper) -> None:
    assert reaper.installed and is_child_subreaper()


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_codes(loop: Loop, reaper: Reaper, code: int) -> None:
    pid = start("/bin/sh", "-c", f"exit {code}")
    status = loop.run_until(reaper.watch(pid), timeout=30)
    assert (status.pid, status.code, status.signal) == (pid, code, None)
    assert os.WIFEXITED(status.status)
    assert gone(pid)


def test_signals_are_128_plus_signal(loop: Loop, reaper: Reaper) -> None:
    term = start("/bin/sh", "-c", "kill -TERM $$")
    sleeper = start("/bin/sleep", "30")
    killed = reaper.watch(sleeper)
    os.kill(sleeper, signal.SIGKILL)
    status = loop.run_until(reaper.watch(term), timeout=30)
    assert (status.code, status.signal) == (128 + signal.SIGTERM, signal.SIGTERM)
    status = loop.run_until(killed, timeout=30)
    assert (status.code, status.signal) == (137, signal.SIGKILL)


def test_exit_before_watch_is_remembered(loop: Loop, reaper: Reaper) -> None:
    pid = start("/bin/sh", "-c", "exit 42")
    wait_for(loop, lambda: gone(pid))  # the reaper collected it: nobody had asked yet
    assert reaper.unclaimed() >= 1
    fut = reaper.watch(pid)
    assert fut.done() and fut.result().code == 42
    # Handed out once: the pid is free now, so asking again is NotFound, not a stale code.
    with pytest.raises(NotFound, match="not found"):
        reaper.watch(pid).result()


def test_exit_before_the_reaper_runs_at_all(loop: Loop) -> None:
    """A child that exited while nothing handled SIGCHLD is collected by install()."""
    pid = start("/bin/sh", "-c", "exit 3")
    deadline = time.monotonic() + 30
    while state(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    reaper = Reaper(loop)
    reaper.install()
    try:
        assert reaper.watch(pid).result().code == 3
    finally:
        reaper.uninstall()


def test_since_ignores_an_earlier_process_with_the_same_pid(loop: Loop, reaper: Reaper) -> None:
    pid = start("/bin/sh", "-c", "exit 9")
    wait_for(loop, lambda: gone(pid))
    mark = reaper.mark()  # "a new process with this pid starts now"
    with pytest.raises(NotFound):
        reaper.watch(pid, since=mark).result()
    assert reaper.unclaimed() == 0  # the stale exit was discarded


def test_orphaned_grandchildren_are_reaped(loop: Loop, reaper: Reaper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shell exits at once; its background children are reparented to us and reaped."""
    pids = tmp_path / "pids"
    sh = start(
        "/bin/sh",
        "-c",
        f"(sleep 0.3; exit 5) & echo $! > {pids}; (sleep 0.3; exit 6) & echo $! >> {pids}",
    )
    assert loop.run_until(reaper.watch(sh), timeout=30).code == 0
    watched, unwatched = (int(line) for line in pids.read_text().split())
    assert parent(watched) == os.getpid()  # reparented to us, the subreaper
    # The pid is learned late (like a pid file): the watch still gets the exit.
    assert loop.run_until(reaper.watch(watched), timeout=30).code == 5
    wait_for(loop, lambda: gone(unwatched))  # nobody asked: reaped anyway, no zombie
    assert reaper.watch(unwatched).result().code == 6


def test_many_children_at_once(loop: Loop, reaper: Reaper) -> None:
    """SIGCHLDs coalesce; one waitpid loop per signal still collects every exit."""
    futs = {code: reaper.watch(start("/bin/sh", "-c", f"exit {code}")) for code in range(60)}
    for code, fut in futs.items():
        assert loop.run_until(fut, timeout=60).code == code


def test_cancelled_watch_is_dropped_and_exit_kept(loop: Loop, reaper: Reaper) -> None:
    pid = start("/bin/sleep", "30")
    fut = reaper.watch(pid)
    assert reaper.pending() == 1
    fut.cancel()
    assert reaper.pending() == 0
    os.kill(pid, signal.SIGKILL)
    wait_for(loop, lambda: gone(pid))
    assert reaper.watch(pid).result().code == 137


def test_two_watchers_of_one_pid(loop: Loop, reaper: Reaper) -> None:
    pid = start("/bin/sh", "-c", "sleep 0.1; exit 4")
    a, b = reaper.watch(pid), reaper.watch(pid)
    loop.run_until(a, timeout=30)
    assert b.done() and a.result() == b.result()


def test_unclaimed_exits_are_bounded(loop: Loop) -> None:
    reaper = Reaper(loop, unclaimed_limit=3)
    reaper.install()
    try:
        pids = [start("/bin/true") for _ in range(6)]
        wait_for(loop, lambda: all(gone(p) for p in pids))
        assert reaper.unclaimed() == 3
        # The newest are kept, the oldest forgotten.
        assert reaper.watch(pids[-1]).result().code == 0
        with pytest.raises(NotFound):
            reaper.watch(pids[0]).result()
    finally:
        reaper.uninstall()


def test_the_sweep_collects_an_exit_whose_signal_was_lost(loop: Loop) -> None:
    reaper = Reaper(loop, sweep_interval=0.2)
    reaper.install()
    try:
        loop.remove_signal_handler(signal.SIGCHLD)  # SIGCHLD no longer reaches the loop
        fut = reaper.watch(start("/bin/sh", "-c", "exit 12"))
        assert loop.run_until(fut, timeout=30).code == 12
    finally:
        loop.add_signal_handler(signal.SIGCHLD, lambda _s: None)
        reaper.uninstall()
