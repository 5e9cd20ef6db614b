"""Fixtures for the container domain tests: real cgroups, mounts, rootfs and runtimes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage import MNT_DETACH, mount_points, umount

from .cgtree import V1Tree, V2Tree
from .guestview import GuestView
from .rootfs import build_rootfs


@pytest.fixture
def v1_tree() -> Iterator[V1Tree]:
    """A parent cgroup in every v1 hierarchy, removed (processes killed) afterwards."""
    tree = V1Tree()
    yield tree
    tree.cleanup()


@pytest.fixture
def v2_tree() -> Iterator[V2Tree]:
    """A parent cgroup in the host's cgroup2 hierarchy, removed afterwards."""
    tree = V2Tree()
    yield tree
    tree.cleanup()


@pytest.fixture
def guest_view(v1_tree: V1Tree, tmp_path: Path) -> Iterator[GuestView]:
    view = GuestView(v1_tree, tmp_path)
    yield view
    view.close()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox rootfs at <tmp>/bundle/rootfs."""
    return build_rootfs(tmp_path / "bundle" / "rootfs")


@pytest.fixture
def unmount_after(tmp_path: Path) -> Iterator[Path]:
    """Yields tmp_path; afterwards unmounts anything a test left mounted beneath it."""
    yield tmp_path
    base = os.path.realpath(tmp_path)
    for point in reversed(mount_points()):
        if point == base or point.startswith(base + "/"):
            try:
                umount(point, MNT_DETACH)
            except OSError:
                pass
