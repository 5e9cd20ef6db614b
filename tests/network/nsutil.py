"""Helpers to run ``ip`` against a private, named network namespace."""

from __future__ import annotations

import json
import shutil
import subprocess


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"required tool {tool!r} is missing (install iproute2/iputils-ping)")
    return path


def ip(ns: str, *args: str) -> str:
    """Run ``ip -n NS ...`` and return stdout; raises with stderr on failure."""
    proc = subprocess.run(
        [need("ip"), "-n", ns, *args], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ip_json(ns: str, *args: str) -> list[dict]:
    return json.loads(ip(ns, "-j", *args) or "[]")


def link_info(ns: str, name: str) -> dict:
    [entry] = ip_json(ns, "addr", "show", "dev", name)
    return entry


def in_ns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("ip"), "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )
