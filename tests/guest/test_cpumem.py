"""OnlineCPUMem / MemHotplugByProbe against a fake sysfs tree only."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import FailedPrecondition, InvalidArgument
from agent.guest.cpumem import (
    mem_hotplug_by_probe,
    online_count,
    online_cpu_mem,
    online_cpus,
    online_hotplugged_memory,
    online_memory,
)


def fake_sysfs(tmp_path: Path, cpus: dict[int, str | None], mems: dict[int, str] | None = None) -> Path:
    """cpus: index -> content of cpuN/online (None: no online file, like cpu0)."""
    root = tmp_path / "sys"
    cpu_dir = root / "devices/system/cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "online").write_text("0\n")  # never consulted: the per-CPU files are
    (cpu_dir / "cpufreq").mkdir()
    for i, state in cpus.items():
        add_cpu(root, i, state)
    mem_dir = root / "devices/system/memory"
    mem_dir.mkdir(parents=True)
    (mem_dir / "block_size_bytes").write_text("8000000\n")
    for i, state in (mems or {}).items():
        (mem_dir / f"memory{i}").mkdir()
        (mem_dir / f"memory{i}/online").write_text(state + "\n")
    return root


def add_cpu(root: Path, i: int, state: str | None) -> None:
    d = root / f"devices/system/cpu/cpu{i}"
    d.mkdir()
    if state is not None:
        (d / "online").write_text(state + "\n")


def states(root: Path, kind: str = "cpu") -> dict[str, str]:
    base = root / f"devices/system/{'cpu' if kind == 'cpu' else 'memory'}"
    return {p.parent.name: p.read_text().strip() for p in sorted(base.glob(f"{kind}*/online"))}


def no_sleep(seconds: float) -> None:
    pass


def test_target_is_the_total_online_count(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None, 1: "1", 2: "0", 3: "0", 10: "0"})
    assert online_count(str(root)) == 2
    online_cpu_mem(3, cpu_only=True, sysfs_root=str(root), sleep=no_sleep)
    # Exactly one more CPU onlined, the lowest-numbered offline one.
    assert states(root) == {"cpu1": "1", "cpu2": "1", "cpu3": "0", "cpu10": "0"}
    online_cpu_mem(5, cpu_only=True, sysfs_root=str(root), sleep=no_sleep)
    assert states(root) == {"cpu1": "1", "cpu2": "1", "cpu3": "1", "cpu10": "1"}


def test_already_online_is_a_no_op(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None, 1: "1", 2: "0"})
    assert online_cpus(2, str(root), sleep=no_sleep) == 2
    assert states(root)["cpu2"] == "0"


def test_cpus_appearing_late_are_picked_up_by_retries(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None, 1: "1"})
    sleeps = []

    def sleep(seconds: float) -> None:  # the "ACPI event" lands after the third wait
        sleeps.append(seconds)
        if len(sleeps) == 3:
            add_cpu(root, 2, "0")
            add_cpu(root, 3, "0")

    assert online_cpus(4, str(root), sleep=sleep) == 4
    assert len(sleeps) == 3 and sleeps[0] == 0.05
    assert states(root) == {"cpu1": "1", "cpu2": "1", "cpu3": "1"}


def test_bounded_retries_then_a_clear_error(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None, 1: "0"})
    sleeps: list[float] = []
    with pytest.raises(FailedPrecondition, match=r"failed to online 4 CPU\(s\) after 7 retries: 2 online"):
        online_cpus(4, str(root), retries=7, sleep=sleeps.append)
    assert len(sleeps) == 7


def test_memory_blocks_onlined_unless_cpu_only(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None}, {0: "1", 1: "0", 2: "0"})
    online_cpu_mem(0, cpu_only=True, sysfs_root=str(root))
    assert states(root, "memory") == {"memory0": "1", "memory1": "0", "memory2": "0"}
    online_cpu_mem(0, cpu_only=False, sysfs_root=str(root))
    assert states(root, "memory") == {"memory0": "1", "memory1": "1", "memory2": "1"}
    assert online_memory(str(root)) == 0
    with pytest.raises(InvalidArgument):
        online_cpu_mem(-1, cpu_only=True, sysfs_root=str(root))


def test_unreadable_block_does_not_stop_the_others(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None}, {1: "0", 2: "0"})
    bad = root / "devices/system/memory/memory1/online"
    bad.unlink()
    bad.mkdir()  # reading it fails, like a block the kernel refuses
    assert online_memory(str(root)) == 1
    assert (root / "devices/system/memory/memory2/online").read_text() == "1"


def test_probe_writes_each_address(tmp_path: Path, monkeypatch) -> None:
    root = fake_sysfs(tmp_path, {0: None})
    probe = root / "devices/system/memory/probe"
    with pytest.raises(FailedPrecondition, match="probe interface"):
        mem_hotplug_by_probe([0x100000000], str(root))
    probe.write_text("")
    writes: list[str] = []
    import builtins

    real_open = builtins.open

    class Spy:
        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def write(self, s: str) -> int:
            writes.append(s)
            return self.f.write(s)

    def spy_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Spy(f) if str(path) == str(probe) and "w" in mode else f

    monkeypatch.setattr(builtins, "open", spy_open)
    mem_hotplug_by_probe([0x100000000, 0x148000000], str(root))
    monkeypatch.undo()
    assert writes == ["0x100000000", "0x148000000"]  # one write per address
    assert probe.read_text() == "0x148000000"
    with pytest.raises(InvalidArgument):
        mem_hotplug_by_probe([-1], str(root))


def test_uevent_memory_block_onlined(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {0: None}, {33: "0"})
    assert online_hotplugged_memory("/devices/system/memory/memory33", str(root))
    assert (root / "devices/system/memory/memory33/online").read_text() == "1"
    assert not online_hotplugged_memory("/devices/pci0000:00/0000:00:02.0", str(root))
