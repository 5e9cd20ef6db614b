"""Guest-service RPCs end to end, over the wire of a real agent.

The agent runs in a private netns with a fake sysfs tree (KATA_AGENT_SYSFS_ROOT),
its own shared directory, a short hotplug timeout, and without CAP_SYS_TIME in
its bounding set: a valid SetGuestDateTime then reaches clock_settime and is
refused by the kernel, so the test proves the call path without ever moving
this machine's clock.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from agent.protocols import agent_pb2, csi_pb2
from tests.e2e_network.conftest import Netns, RunningAgent, run
from ttrpc.status import Code, RPCError

HOTPLUG_TIMEOUT = 0.5


def fake_sysfs(root: Path) -> Path:
    cpu = root / "devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "cpu0").mkdir()  # no online file: cannot go offline
    for i in (1, 2, 3):
        (cpu / f"cpu{i}").mkdir()
        (cpu / f"cpu{i}/online").write_text("0\n")
    mem = root / "devices/system/memory"
    mem.mkdir(parents=True)
    (mem / "block_size_bytes").write_text("8000000\n")
    (mem / "probe").write_text("")
    for i, state in ((0, "1"), (1, "0"), (2, "0")):
        (mem / f"memory{i}").mkdir()
        (mem / f"memory{i}/online").write_text(state + "\n")
    (root / "devices/pci0000:00/0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (root / "class/net").mkdir(parents=True)
    return root


class GuestAgent:
    def __init__(self, agent: RunningAgent, sysfs: Path, shared: Path, outside: Path) -> None:
        self.agent, self.sysfs, self.shared, self.outside = agent, sysfs, shared, outside

    def call(
        self, method: str, request: object, reply_type: type = empty_pb2.Empty, timeout: float = 30
    ) -> object:
        return self.agent.call(method, request, reply_type, timeout)

    def error(self, method: str, request: object, reply_type: type = empty_pb2.Empty) -> RPCError:
        with pytest.raises(RPCError) as err:
            self.agent.call(method, request, reply_type)
        return err.value


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestAgent]:
    base = tmp_path_factory.mktemp("guest")
    sysfs = fake_sysfs(base / "sys")
    shared = base / "shared"
    shared.mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    (base / "agent").mkdir()
    spaces = Netns()
    env = {
        "KATA_AGENT_SYSFS_ROOT": str(sysfs),
        "KATA_AGENT_SHARED_DIR": str(shared),
        "KATA_AGENT_HOTPLUG_TIMEOUT": str(HOTPLUG_TIMEOUT),
    }
    agent = None
    try:
        agent = RunningAgent(
            spaces.new(), base / "agent", env, prefix=["setpriv", "--bounding-set", "-sys_time", "--"]
        )
        yield GuestAgent(agent, sysfs, shared, outside)
    finally:
        if agent is not None:
            agent.stop()
        spaces.delete_all()


def states(root: Path, kind: str) -> dict[str, str]:
    base = root / f"devices/system/{kind}"
    return {p.parent.name: p.read_text().strip() for p in sorted(base.glob(f"{kind}*/online"))}


def test_online_cpu_mem_on_fake_sysfs(guest: GuestAgent) -> None:
    for name in ("cpu/cpu1", "cpu/cpu2", "cpu/cpu3", "memory/memory1", "memory/memory2"):
        (guest.sysfs / "devices/system" / name / "online").write_text("0\n")  # whatever ran before
    guest.call("OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(nb_cpus=3, cpu_only=True))
    assert states(guest.sysfs, "cpu") == {"cpu1": "1", "cpu2": "1", "cpu3": "0"}  # 3 online in total
    assert states(guest.sysfs, "memory") == {"memory0": "1", "memory1": "0", "memory2": "0"}
    guest.call("OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(nb_cpus=0, cpu_only=False))
    assert states(guest.sysfs, "memory") == {"memory0": "1", "memory1": "1", "memory2": "1"}
    assert states(guest.sysfs, "cpu")["cpu3"] == "0"


def test_probe_and_guest_details(guest: GuestAgent) -> None:
    guest.call(
        "MemHotplugByProbe",
        agent_pb2.MemHotplugByProbeRequest(memHotplugProbeAddr=[0x100000000, 0x108000000]),
    )
    assert (guest.sysfs / "devices/system/memory/probe").read_text() == "0x108000000"
    req = agent_pb2.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True)
    details = guest.call("GetGuestDetails", req, agent_pb2.GuestDetailsResponse)
    assert details.mem_block_size_bytes == 0x8000000 and details.support_mem_hotplug_probe
    assert details.agent_details.version and not details.agent_details.init_daemon
    assert "virtio-fs" in details.agent_details.storage_handlers

    block = guest.sysfs / "devices/system/memory/block_size_bytes"
    block.write_text("not hex\n")
    try:  # GetGuestDetails never fails: the runtime would abort the sandbox
        details = guest.call("GetGuestDetails", req, agent_pb2.GuestDetailsResponse)
        assert details.mem_block_size_bytes == 0 and details.support_mem_hotplug_probe
    finally:
        block.write_text("8000000\n")


def test_probe_missing_is_a_precondition(guest: GuestAgent, tmp_path: Path) -> None:
    probe = guest.sysfs / "devices/system/memory/probe"
    probe.unlink()
    try:
        err = guest.error(
            "MemHotplugByProbe", agent_pb2.MemHotplugByProbeRequest(memHotplugProbeAddr=[1 << 32])
        )
        assert err.code == Code.FAILED_PRECONDITION
    finally:
        probe.write_text("")


def test_copy_file_chunks_then_rename(guest: GuestAgent) -> None:
    target = guest.shared / "c1" / "etc" / "hosts"
    data = b"127.0.0.1 localhost\n" * 500
    half = len(data) // 2
    for offset, chunk in ((0, data[:half]), (half, data[half:])):
        guest.call(
            "CopyFile",
            agent_pb2.CopyFileRequest(
                path=str(target),
                data=chunk,
                offset=offset,
                file_size=len(data),
                file_mode=0o100640,
                dir_mode=0o750,
            ),
        )
        assert target.exists() == (offset == half)  # readers never see half a file
    assert target.read_bytes() == data and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o750


def attack_cases(shared: Path, outside: Path) -> list[tuple[str, str, int]]:
    """(label, path, file_mode) of requests that must all be refused."""
    s, o = str(shared), str(outside)
    return [
        ("dotdot", f"{s}/../outside/x", 0o100644),
        ("dotdot deep", f"{s}/a/b/../../../outside/x", 0o100644),
        ("dot then dotdot", f"{s}/./../outside/x", 0o100644),
        ("absolute outside", f"{o}/x", 0o100644),
        ("relative", "outside/x", 0o100644),
        ("string prefix", f"{s}-evil/x", 0o100644),
        ("the shared dir itself", s, 0o40755),
        ("nul byte", f"{s}/a\0/../../outside/x", 0o100644),
        ("absolute symlinked parent", f"{s}/abs_link/x", 0o100644),
        ("relative symlinked parent", f"{s}/rel_link/x", 0o100644),
        ("proc magic link parent", f"{s}/proc_link/x", 0o100644),
        ("symlink deep in the chain", f"{s}/real/deep_link/x", 0o100644),
        ("dir through symlink", f"{s}/abs_link/newdir", 0o40755),
        ("symlink made by CopyFile", f"{s}/made_link/x", 0o100644),
        ("device node", f"{s}/dev", 0o20644),
    ]


def test_copy_file_attacks_are_refused_over_the_wire(guest: GuestAgent) -> None:
    shared, outside = guest.shared, guest.outside
    (shared / "abs_link").symlink_to(outside)
    (shared / "rel_link").symlink_to("../outside")
    (shared / "proc_link").symlink_to(f"/proc/self/root{outside}")
    (shared / "real").mkdir()
    (shared / "real/deep_link").symlink_to(outside)
    # A symlink the host may legitimately create, pointing anywhere...
    guest.call(
        "CopyFile",
        agent_pb2.CopyFileRequest(path=f"{shared}/made_link", data=str(outside).encode(), file_mode=0o120777),
    )
    assert os.readlink(shared / "made_link") == str(outside)
    before = sorted(p.name for p in outside.iterdir())

    for label, path, mode in attack_cases(shared, outside):
        with pytest.raises(RPCError) as err:
            guest.call(
                "CopyFile", agent_pb2.CopyFileRequest(path=path, data=b"pwned", file_size=5, file_mode=mode)
            )
        assert err.value.code in (Code.PERMISSION_DENIED, Code.INVALID_ARGUMENT), (label, err.value)

    # ...but a leaf symlink (or a planted .tmp one) is replaced, never written through.
    (shared / "leaf").symlink_to(outside / "secret")
    (shared / "f.tmp").symlink_to(outside / "secret")
    for name in ("leaf", "f"):
        guest.call(
            "CopyFile",
            agent_pb2.CopyFileRequest(path=f"{shared}/{name}", data=b"new", file_size=3, file_mode=0o100644),
        )
        assert (shared / name).read_bytes() == b"new" and not (shared / name).is_symlink()

    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "secret").read_text() == "keep me"
    assert not list(outside.parent.glob("*x")) and not (outside.parent / "shared-evil").exists()


def test_set_guest_date_time_never_moves_the_clock(guest: GuestAgent) -> None:
    err = guest.error("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=1, Usec=1_000_000))
    assert err.code == Code.INVALID_ARGUMENT and "microseconds" in err.message
    for sec in (-5, 0):  # an all-default request never resets the clock to 1970
        err = guest.error("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=sec))
        assert err.code == Code.INVALID_ARGUMENT
    # A valid time reaches clock_settime, which the agent (no CAP_SYS_TIME) may not do.
    now = time.time()
    err = guest.error("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(Sec=int(now) + 86400, Usec=5))
    assert err.code == Code.PERMISSION_DENIED and "setting the clock" in err.message
    assert abs(time.time() - now) < 60


def test_reseed_and_mem_agent(guest: GuestAgent) -> None:
    guest.call("ReseedRandomDev", agent_pb2.ReseedRandomDevRequest(data=b""))  # nothing to mix: a no-op
    for method, req in (
        ("MemAgentMemcgSet", agent_pb2.MemAgentMemcgConfig(disabled=False)),
        ("MemAgentCompactSet", agent_pb2.MemAgentCompactConfig(period_secs=60)),
    ):
        err = guest.error(method, req)
        assert (err.code, err.message) == (Code.INTERNAL, "mem-agent is disabled")


@pytest.fixture
def swaps() -> Iterator[None]:
    def active() -> set[str]:
        with open("/proc/swaps") as f:
            return {line.split()[0] for line in f.readlines()[1:]}

    before = active()
    yield
    for path in active() - before:
        subprocess.run(["swapoff", path], check=False)
    assert active() == before


def test_swap(guest: GuestAgent, tmp_path: Path, swaps: None) -> None:
    swapfile = tmp_path / "swapfile"
    swapfile.write_bytes(b"\0" * (4 << 20))
    guest.call("AddSwapPath", agent_pb2.AddSwapPathRequest(path=str(swapfile)))
    assert str(swapfile) in Path("/proc/swaps").read_text()
    assert (
        guest.error("AddSwapPath", agent_pb2.AddSwapPathRequest(path="relative")).code
        == Code.INVALID_ARGUMENT
    )
    assert (
        guest.error("AddSwapPath", agent_pb2.AddSwapPathRequest(path=str(tmp_path / "nope"))).code
        == Code.NOT_FOUND
    )
    err = guest.error(
        "AddSwapPath", agent_pb2.AddSwapPathRequest(path=str(tmp_path))
    )  # OS errors get a status
    assert err.code == Code.INVALID_ARGUMENT and "Is a directory" in err.message

    assert guest.error("AddSwap", agent_pb2.AddSwapRequest()).code == Code.INVALID_ARGUMENT
    start = time.monotonic()
    err = guest.error("AddSwap", agent_pb2.AddSwapRequest(PCIPath=[2, 1]))
    assert err.code == Code.DEADLINE_EXCEEDED and "virtio-blk disk at PCI path 02.0/01.0" in err.message
    assert time.monotonic() - start >= HOTPLUG_TIMEOUT - 0.05


def test_volume_stats(guest: GuestAgent, tmp_path: Path) -> None:
    stats = guest.call(
        "GetVolumeStats",
        agent_pb2.VolumeStatsRequest(volume_guest_path=str(tmp_path)),
        csi_pb2.VolumeStatsResponse,
    )
    units = {u.unit: u for u in stats.usage}
    assert set(units) == {csi_pb2.VolumeUsage.BYTES, csi_pb2.VolumeUsage.INODES}
    st = os.statvfs(tmp_path)
    assert units[csi_pb2.VolumeUsage.BYTES].total == st.f_blocks * st.f_frsize
    assert units[csi_pb2.VolumeUsage.INODES].total == st.f_files
    assert not stats.volume_condition.abnormal
    missing = agent_pb2.VolumeStatsRequest(volume_guest_path=str(tmp_path / "nope"))
    assert guest.error("GetVolumeStats", missing, csi_pb2.VolumeStatsResponse).code == Code.NOT_FOUND
    nul = agent_pb2.VolumeStatsRequest(volume_guest_path="/tmp/a\0b")
    assert guest.error("GetVolumeStats", nul, csi_pb2.VolumeStatsResponse).code == Code.INVALID_ARGUMENT
    nul_resize = agent_pb2.ResizeVolumeRequest(volume_guest_path="/tmp/a\0b")
    assert guest.error("ResizeVolume", nul_resize).code == Code.INVALID_ARGUMENT


def test_resize_volume_of_a_loop_backed_xfs(guest: GuestAgent, tmp_path: Path) -> None:
    """xfs_growfs runs as a child of the agent (its reaper collects it) on a volume mounted
    in the agent's own mount namespace. (xfs, not ext4: online ext4 growth needs
    CAP_SYS_RESOURCE, which this machine withholds even from root.)"""
    assert guest.error("ResizeVolume", agent_pb2.ResizeVolumeRequest()).code == Code.INVALID_ARGUMENT
    err = guest.error("ResizeVolume", agent_pb2.ResizeVolumeRequest(volume_guest_path="/proc"))
    assert err.code == Code.FAILED_PRECONDITION and "cannot resize a proc filesystem" in err.message

    mib = 1 << 20
    img, mnt = tmp_path / "vol.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(320 * mib)  # sparse; xfs wants at least 300 MiB
    run("mkfs.xfs", "-q", "-f", str(img))
    dev = run("losetup", "--find", "--show", str(img)).stdout.strip()
    in_agent = ["nsenter", "-t", str(guest.agent.pid), "-m"]
    try:
        run(*in_agent, "mount", dev, str(mnt))
        try:
            req = agent_pb2.VolumeStatsRequest(volume_guest_path=str(mnt))
            before = guest.call("GetVolumeStats", req, csi_pb2.VolumeStatsResponse).usage[0].total
            with open(img, "r+b") as f:
                f.truncate(512 * mib)
            run("losetup", "-c", dev)
            grow = agent_pb2.ResizeVolumeRequest(volume_guest_path=str(mnt), size=1024 * mib)
            err = guest.error("ResizeVolume", grow)
            assert err.code == Code.FAILED_PRECONDITION and "smaller than the requested" in err.message
            grow.size = 512 * mib
            guest.call("ResizeVolume", grow, timeout=120)
            after = guest.call("GetVolumeStats", req, csi_pb2.VolumeStatsResponse).usage[0].total
            assert before < 320 * mib < 400 * mib < after
        finally:
            run(*in_agent, "umount", str(mnt), check=False)
    finally:
        run("losetup", "-d", dev, check=False)


def test_metrics(guest: GuestAgent) -> None:
    text = guest.call("GetMetrics", agent_pb2.GetMetricsRequest(), agent_pb2.Metrics).metrics
    for family in ("kata_agent_total_rss", "kata_guest_meminfo", "kata_guest_load", "kata_guest_netdev_stat"):
        assert f"# TYPE {family} " in text
    # The agent's own figures are the agent's, not the caller's.
    rss = [line for line in text.splitlines() if line.startswith("kata_agent_total_rss")]
    assert rss and float(rss[0].split()[-1]) > 1 << 20


def test_cpu_retries_do_not_hold_pool_threads(guest: GuestAgent, tmp_path: Path) -> None:
    """CPUs that never come (nb_cpus beyond the tree) are retried on loop timers: meanwhile
    more such calls than the pool has threads leave other offloaded calls unaffected."""
    import threading

    errors: list[RPCError] = []

    def impossible() -> None:
        with pytest.raises(RPCError) as err:
            guest.agent.call(
                "OnlineCPUMem", agent_pb2.OnlineCPUMemRequest(nb_cpus=1000), empty_pb2.Empty, timeout=1.5
            )
        errors.append(err.value)

    threads = [threading.Thread(target=impossible) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    req = agent_pb2.VolumeStatsRequest(volume_guest_path=str(tmp_path))
    guest.call("GetVolumeStats", req, csi_pb2.VolumeStatsResponse)
    assert time.monotonic() - start < 1.0
    for t in threads:
        t.join(30)
    assert [e.code for e in errors] == [Code.DEADLINE_EXCEEDED] * 6
    assert states(guest.sysfs, "cpu")["cpu3"] == "1"  # what could be onlined was
