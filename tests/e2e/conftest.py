"""Fixtures: an agent as PID 1 of its own namespaces, and a share directory with rootfses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .guest import GuestAgent
from .pod import Pod


def require_guest_tools(runtime: str) -> None:
    """Fail (never skip) when what the tests need is missing: CI installs it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, mounts, cgroups)")
    missing = [t for t in (runtime, "unshare", "mount", "busybox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing tools: {', '.join(missing)} (see .ci/install)")


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """The host side of the pod's shared directory (rootfses go in ``<id>/rootfs``)."""
    path = tmp_path / "share"
    path.mkdir()
    return path


def start_guest(tmp_path: Path, runtime: str, *args: str) -> GuestAgent:
    require_guest_tools(runtime)
    workdir = tmp_path / f"guest-{runtime}"
    workdir.mkdir()
    return GuestAgent(workdir, *args, runtime=runtime)


@pytest.fixture(params=["crun", "runc"])
def guest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GuestAgent]:
    g = start_guest(tmp_path, request.param)
    yield g
    g.stop()


@pytest.fixture
def crun_guest(tmp_path: Path) -> Iterator[GuestAgent]:
    g = start_guest(tmp_path, "crun")
    yield g
    g.stop()


@pytest.fixture
def pod(guest: GuestAgent) -> Pod:
    return Pod(guest)
