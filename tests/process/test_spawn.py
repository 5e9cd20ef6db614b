"""spawn(): children started from the loop, output captured, exits from the reaper."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agent.errors import DeadlineExceeded, Internal, NotFound
from agent.process import DEVNULL, CompletedRun, run_from_thread, spawn
from agent.reaper import Reaper
from tests.process.helpers import PY, gone, wait_for
from ttrpc.loop import Future, Loop


def run(loop: Loop, reaper: Reaper, argv: list[str], **kwargs) -> CompletedRun:  # type: ignore[no-untyped-def]
    return loop.run_until(spawn(loop, reaper, argv, **kwargs), timeout=60)


def test_captures_output_and_exit_code(loop: Loop, reaper: Reaper) -> None:
    res = run(loop, reaper, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (res.stdout, res.stderr, res.returncode) == (b"out\n", b"err\n", 4)
    assert res.pid > 0 and gone(res.pid)
    with pytest.raises(Internal, match="exited with 4: err"):
        res.check()


def test_stdin_bytes_reach_the_child(loop: Loop, reaper: Reaper) -> None:
    data = os.urandom(300_000)  # more than a pipe holds: written as the child reads
    res = run(loop, reaper, ["cat"], stdin=data)
    assert res.check().stdout == data


def test_capture_is_bounded_and_the_child_never_blocks(loop: Loop, reaper: Reaper) -> None:
    res = run(loop, reaper, ["head", "-c", str(3 << 20), "/dev/zero"], capture_limit=1 << 20)
    assert res.returncode == 0
    assert len(res.stdout) == 1 << 20 and res.stdout_dropped == 2 << 20


def test_timeout_kills(loop: Loop, reaper: Reaper) -> None:
    started = time.monotonic()
    fut = spawn(loop, reaper, ["sh", "-c", "echo partial; exec sleep 30"], timeout=0.3)
    with pytest.raises(DeadlineExceeded, match="did not finish in 0.3s") as info:
        loop.run_until(fut, timeout=60)
    assert time.monotonic() - started < 20
    partial = info.value.run  # type: ignore[attr-defined]
    assert partial.exit.signal == signal.SIGKILL and partial.stdout == b"partial\n"


def test_missing_program_is_not_found(loop: Loop, reaper: Reaper) -> None:
    with pytest.raises(NotFound, match="cannot start /no/such/tool"):
        spawn(loop, reaper, ["/no/such/tool"]).result()
    with pytest.raises(NotFound):
        spawn(loop, reaper, ["no-such-tool-on-path"]).result()


def test_env_and_cwd(loop: Loop, reaper: Reaper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PATH": os.environ["PATH"], "FOO": "bar"}
    res = run(loop, reaper, ["sh", "-c", 'echo "$FOO"; pwd'], env=env, cwd=str(tmp_path))
    assert res.check().stdout.decode().split() == ["bar", str(tmp_path)]
    res = run(loop, reaper, ["sh", "-c", 'echo "${FOO:-unset}"'], env={"PATH": os.environ["PATH"]})
    assert res.stdout == b"unset\n"


def test_child_starts_with_default_signal_dispositions(loop: Loop, reaper: Reaper) -> None:
    """Python ignores SIGPIPE; a child must not inherit that (``yes | head`` must end)."""
    res = run(loop, reaper, ["sh", "-c", "grep SigIgn /proc/self/status; yes | head -c 3"], timeout=30)
    status, _, rest = res.check().stdout.partition(b"\n")
    assert int(status.split()[1], 16) & 0x7FFFFFFF == 0  # (32 and up are real-time signals)
    assert rest == b"y\ny"


def test_pass_fds_and_fd_targets(loop: Loop, reaper: Reaper) -> None:
    r, w = os.pipe()  # close-on-exec, like every fd Python makes
    try:
        code = f"import os; os.write({w}, b'via-fd\\n'); print('to-stdout')"
        res = run(loop, reaper, [PY, "-c", code], pass_fds=[w])
        assert res.check().stdout == b"to-stdout\n"
        assert os.read(r, 100) == b"via-fd\n"
        # An fd as stdout (what runtime create gets for a container's stdio): not captured.
        res = run(loop, reaper, ["echo", "direct"], stdout=w, stderr=DEVNULL)
        assert res.stdout == b"" and os.read(r, 100) == b"direct\n"
        # Undeclared fds are not inherited.
        res = run(loop, reaper, [PY, "-c", f"import os; os.write({w}, b'x')"])
        assert res.returncode != 0
    finally:
        os.close(r)
        os.close(w)


def test_a_grandchild_holding_the_pipes_does_not_hang(loop: Loop, reaper: Reaper) -> None:
    started = time.monotonic()
    res = run(loop, reaper, ["sh", "-c", "sleep 30 & echo $!"], eof_grace=0.3)
    assert time.monotonic() - started < 20
    daemon = int(res.check().stdout)
    exited = reaper.watch(daemon)
    os.kill(daemon, signal.SIGKILL)
    assert loop.run_until(exited, timeout=30).code == 137


def test_cancel_kills_the_child(loop: Loop, reaper: Reaper) -> None:
    fut = spawn(loop, reaper, ["sleep", "30"])
    loop.run_once(0)
    assert reaper.pending() == 1
    fut.cancel()
    wait_for(loop, lambda: reaper.pending() == 0)  # the exit arrived: it was killed


def test_run_from_a_worker_thread(loop: Loop, reaper: Reaper) -> None:
    box: Future[CompletedRun] = loop.run_in_thread(run_from_thread, loop, reaper, ["echo", "threaded"])
    assert loop.run_until(box, timeout=60).stdout == b"threaded\n"
    with pytest.raises(RuntimeError, match="loop thread"):
        run_from_thread(loop, reaper, ["true"])


def test_run_from_thread_errors_come_back(loop: Loop, reaper: Reaper) -> None:
    results: list[BaseException] = []

    def worker() -> None:
        try:
            run_from_thread(loop, reaper, ["/no/such/tool"])
        except BaseException as exc:  # noqa: BLE001
            results.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    wait_for(loop, lambda: bool(results))
    thread.join()
    assert isinstance(results[0], NotFound)


def test_spawn_requires_an_installed_reaper(loop: Loop) -> None:
    with pytest.raises(RuntimeError, match="Reaper"):
        spawn(loop, Reaper(loop), ["true"])


def test_the_cwd_launcher_never_waits_itself(loop: Loop, reaper: Reaper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The Popen used for ``cwd`` is told the exit, so subprocess never polls (steals) the pid."""
    import gc
    import subprocess

    fut = spawn(loop, reaper, ["sleep", "30"], cwd=str(tmp_path))
    loop.run_once(0)
    fut.cancel()
    wait_for(loop, lambda: reaper.pending() == 0)
    gc.collect()
    assert not subprocess._active  # type: ignore[attr-defined]
