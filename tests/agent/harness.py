"""Start a real ``kata-agent`` process for tests and wait until it answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from agent.protocols import health_pb2
from ttrpc.client import Client


def wait_ready(address: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> Client:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"agent exited with {proc.returncode}: {err}")
        try:
            client = Client(address, timeout=1)
            client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout=2
            )
            return client
        except Exception as exc:  # noqa: BLE001 - retry until ready
            last = exc
            time.sleep(0.02)
    raise TimeoutError(f"agent at {address} not ready: {last}")


def start_agent(
    sock: Path, *extra: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    args = [*(prefix or []), sys.executable, "-m", "agent", *extra]
    if "--server-addr" not in extra and not (env and "KATA_AGENT_SERVER_ADDR" in env):
        args += ["--server-addr", f"unix://{sock}"]
    return subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop_agent(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
