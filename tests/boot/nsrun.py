"""Run a Python snippet as PID 1 of fresh namespaces: a throwaway "guest" for init tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACES = ("--fork", "--pid", "--mount", "--net", "--uts", "--ipc", "--mount-proc")
TIMEOUT = 60  # generous: the CI box is small and noisy


def require_namespaces() -> None:
    """Skip unless we are root with a working ``unshare`` (fresh namespaces)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_in_guest(
    script: str,
    *args: str,
    cgroup_ns: bool = True,
    timeout: float = TIMEOUT,
    **popen: object,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (dedented) under ``unshare`` as PID 1; returns the completed process.

    A cgroup namespace is added by default so cgroup mounts never change the
    host's hierarchies (nsdelegate, new v1 hierarchies).
    """
    require_namespaces()
    cmd = ["unshare", *NAMESPACES, *(["--cgroup"] if cgroup_ns else [])]
    cmd += [sys.executable, "-c", textwrap.dedent(script), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=python_env(), check=False, **popen
    )


def guest_json(script: str, *args: str, **kw: object) -> dict:
    """Run ``script`` as PID 1 and parse the JSON object it prints last."""
    proc = run_in_guest(script, *args, **kw)
    assert proc.returncode == 0, f"guest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
