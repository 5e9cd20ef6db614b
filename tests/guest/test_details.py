"""GetGuestDetails from a fake sysfs/proc and from the real /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import Internal
from agent.guest.details import DEFAULT_STORAGE_HANDLERS, guest_details, supports_seccomp


def tree(tmp_path: Path, block: str | None, probe: bool, seccomp: bool) -> tuple[str, str]:
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    mem = sysfs / "devices/system/memory"
    mem.mkdir(parents=True)
    if block is not None:
        (mem / "block_size_bytes").write_text(block)
    if probe:
        (mem / "probe").write_text("")
    (proc / "self").mkdir(parents=True)
    (proc / "self/status").write_text(
        "Name:\tx\n" + ("Seccomp:\t0\nSeccomp_filters:\t0\n" if seccomp else "")
    )
    return str(sysfs), str(proc)


def test_requested_facts(tmp_path: Path) -> None:
    sysfs, proc = tree(tmp_path, "8000000\n", True, True)
    d = guest_details(True, True, sysfs_root=sysfs, proc_root=proc, version="9.9", init_daemon=True)
    assert d.mem_block_size_bytes == 128 * 1024 * 1024
    assert d.support_mem_hotplug_probe is True
    a = d.agent_details
    assert (a.version, a.init_daemon, a.supports_seccomp) == ("9.9", True, True)
    assert a.storage_handlers == list(DEFAULT_STORAGE_HANDLERS) and a.device_handlers == []


def test_unrequested_facts_are_zero(tmp_path: Path) -> None:
    sysfs, proc = tree(tmp_path, "8000000", True, False)
    d = guest_details(False, False, sysfs_root=sysfs, proc_root=proc, storage_handlers=["blk"])
    assert d.mem_block_size_bytes == 0 and d.support_mem_hotplug_probe is False
    assert d.agent_details.supports_seccomp is False and d.agent_details.storage_handlers == ["blk"]
    assert d.agent_details.version == "0.1.0"  # from the installed package metadata
    assert d.agent_details.init_daemon is False


def test_missing_and_broken_block_size(tmp_path: Path) -> None:
    sysfs, proc = tree(tmp_path, None, False, True)
    d = guest_details(True, True, sysfs_root=sysfs, proc_root=proc)
    assert d.mem_block_size_bytes == 0 and d.support_mem_hotplug_probe is False
    (Path(sysfs) / "devices/system/memory/block_size_bytes").write_text("zz\n")
    with pytest.raises(Internal, match="invalid memory block size"):
        guest_details(True, False, sysfs_root=sysfs, proc_root=proc)


def test_real_proc_reports_seccomp() -> None:
    assert supports_seccomp("/proc") is True
