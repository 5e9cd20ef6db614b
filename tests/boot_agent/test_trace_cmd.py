"""``kata-agent trace PID``: syscalls of a live process; it is left running, untraced, unstopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import REPO, agent_env, proc_state

pytest.importorskip("ptrace.debugger", reason="kata-agent trace needs python-ptrace (the 'debug' extra)")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ptrace attach needs root here")

BUSY = "while :; do echo tick > /dev/null; sleep 0.05; done"


def _tracer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.trace_cmd", *args],
        cwd=REPO,
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _assert_left_alone(pid: int) -> None:
    time.sleep(0.2)
    st = _status(pid)
    assert st["TracerPid"] == "0", "detached"
    assert not st["State"].startswith(("T", "t")), f"not left stopped: {st['State']}"


@pytest.fixture
def busy():  # type: ignore[no-untyped-def]
    target = subprocess.Popen(["sh", "-c", BUSY])
    time.sleep(0.1)
    yield target
    target.kill()
    target.wait(10)


def test_max_syscalls_prints_calls_and_detaches(busy) -> None:  # type: ignore[no-untyped-def]
    tracer = _tracer("--max-syscalls", "12", str(busy.pid))
    out, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    lines = [line for line in out.splitlines() if " --- " not in line]  # signals are shown too
    assert len(lines) == 12, out
    assert all(line.startswith(f"[{busy.pid}] ") and " = " in line for line in lines), out
    names = {line.split("] ", 1)[1].split("(", 1)[0] for line in lines}
    assert names & {"wait4", "clone", "fork", "vfork", "rt_sigreturn", "rt_sigaction", "close", "dup2"}, names
    _assert_left_alone(busy.pid)
    assert busy.poll() is None


def test_ctrl_c_detaches_a_process_blocked_in_a_syscall() -> None:
    target = subprocess.Popen(["sleep", "60"])  # blocked in nanosleep: no stop will come by itself
    try:
        time.sleep(0.1)
        tracer = _tracer(str(target.pid))
        deadline = time.monotonic() + 30
        while _status(target.pid)["TracerPid"] == "0" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _status(target.pid)["TracerPid"] == str(tracer.pid)
        tracer.send_signal(signal.SIGINT)
        _, err = tracer.communicate(timeout=30)
        assert tracer.returncode == 0, err
        _assert_left_alone(target.pid)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait(10)


def test_duration_and_follow_forks(busy) -> None:  # type: ignore[no-untyped-def]
    tracer = _tracer(
        "--follow-forks", "--duration", "1.5", "--only", "execve,exit_group,write", str(busy.pid)
    )
    out, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    assert "+++ new process" in out, out  # the loop's `sleep` children
    assert "execve(" in out or "exit_group(" in out, out
    _assert_left_alone(busy.pid)


def test_the_real_parent_still_gets_the_exit_status() -> None:
    """Tracing must not steal an exit: the parent (here, the test; in a guest, the agent) reaps it."""
    target = subprocess.Popen(["sh", "-c", "sleep 0.7; exit 7"])
    tracer = _tracer(str(target.pid))
    assert target.wait(30) == 7
    out, err = tracer.communicate(timeout=30)
    assert tracer.returncode == 0, err
    assert f"[{target.pid}] +++ exited with 7 +++" in out
    assert proc_state(target.pid) is None


def test_no_such_process_is_a_clear_error() -> None:
    tracer = _tracer("999999999")
    _, err = tracer.communicate(timeout=30)
    assert tracer.returncode == 1
    assert "cannot attach to 999999999" in err
