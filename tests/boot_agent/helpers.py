"""Shared plumbing for the boot tests: start agents, talk raw bytes, look at processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0  # generous: the CI machine is small and noisy


def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("KATA_AGENT_CMDLINE_PATH", None)
    env.update(extra)
    return env


def start_features(sock: Path, **addrs: str) -> subprocess.Popen[bytes]:
    """The feature harness (features_agent.py) serving on ``sock``; ``addrs`` are BOOT_TEST_* values."""
    env = agent_env(
        KATA_AGENT_SERVER_ADDR=f"unix://{sock}",
        KATA_AGENT_CMDLINE_PATH=os.devnull,
        **{f"BOOT_TEST_{k.upper()}": v for k, v in addrs.items()},
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.boot_agent.features_agent"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def connect_unix(path: Path | str, timeout: float = TIMEOUT) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            s.settimeout(timeout)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def read_until(sock: socket.socket, needle: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read until ``needle`` has been seen; returns everything read. Fails on EOF or timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while needle not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{needle!r} not seen in {data[-500:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"EOF before {needle!r}; got {data[-500:]!r}")
        data += chunk
    return data


def read_to_eof(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no EOF; got {data[-500:]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def zombie_children(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_state(int(name))
            if st is not None and st[1] == ppid and st[0] == "Z":
                out.append(int(name))
    return out


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait until ``pid`` no longer exists (reaped, not a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_state(pid) is None:
            return True
        time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")
