"""After a CPU hotplug, containers that did not pin CPUs get the root's CPU list (real v1 cpusets)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.cgroups.cpuset import refresh_cpuset, root_cpus
from agent.cgroups.layout import CgroupV1, CgroupV2

ROOT = Path("/sys/fs/cgroup/cpuset")


@pytest.fixture
def nested_cpuset():  # type: ignore[no-untyped-def]
    if not (ROOT / "cpuset.cpus").exists():
        pytest.fail("this test needs the cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset")
    if (ROOT / "cpuset.cpus").read_text().strip() in ("0", ""):
        pytest.fail("this test needs at least two CPUs in the root cpuset")
    top = ROOT / f"kata-cpuset-test-{os.getpid()}"
    leaf = top / "sandbox" / "ctr"
    mems = (ROOT / "cpuset.mems").read_text().strip()
    for d in (top, top / "sandbox", leaf):
        d.mkdir()
        (d / "cpuset.mems").write_text(mems)
        (d / "cpuset.cpus").write_text("0")  # as if created before more CPUs came online
    yield leaf
    for d in (leaf, top / "sandbox", top):
        d.rmdir()


def test_v1_widens_ancestors_then_container(nested_cpuset: Path) -> None:
    cg = CgroupV1(dirs={"cpuset": nested_cpuset})
    wanted = root_cpus(cg)
    assert wanted == (ROOT / "cpuset.cpus").read_text().strip()
    assert refresh_cpuset(cg, wanted)
    for d in (nested_cpuset, nested_cpuset.parent, nested_cpuset.parent.parent):
        assert (d / "cpuset.cpus").read_text().strip() == wanted


def test_no_cpuset_controller_is_a_no_op(tmp_path: Path) -> None:
    assert refresh_cpuset(CgroupV1(dirs={}), "0-1") is False
    assert refresh_cpuset(CgroupV2(path=tmp_path), "0-1") is False


def test_v2_writes_the_container_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    leaf = root / "pod" / "ctr"
    leaf.mkdir(parents=True)
    for d in (root, root / "pod", leaf):
        (d / "cgroup.controllers").write_text("cpuset\n")
        (d / "cpuset.cpus").write_text("")
    (root / "cpuset.cpus.effective").write_text("0-3\n")
    cg = CgroupV2(path=leaf)
    assert root_cpus(cg) == "0-3"
    assert refresh_cpuset(cg, "0-3")
    assert (leaf / "cpuset.cpus").read_text() == "0-3"
    assert (root / "pod" / "cpuset.cpus").read_text() == ""
    shutil.rmtree(root)
