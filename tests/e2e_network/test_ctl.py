"""``kata-agent-ctl call`` reaches every RPC of the network/hotplug/guest issue with JSON.

Each call runs the real ctl (``python3 -m agent.ctl``) against a real agent in a
private netns; where the honest answer on this machine is an error (no
hot-plugged disk, no CAP_SYS_TIME wanted, mem-agent off) the test checks the
status the ctl prints.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.service.routes import GUEST, NETWORK, ROUTES
from tests.e2e_network.conftest import RunningAgent, ip, ip_json
from tests.e2e_network.test_guest_rpc import fake_sysfs


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_ctl_calls_every_rpc_of_the_issue(agent_factory: Callable[..., RunningAgent], tmp_path: Path) -> None:
    sysfs, shared = fake_sysfs(tmp_path / "sys"), tmp_path / "shared"
    shared.mkdir()
    agent = agent_factory(
        env={
            "KATA_AGENT_SYSFS_ROOT": str(sysfs),
            "KATA_AGENT_SHARED_DIR": str(shared),
            "KATA_AGENT_HOTPLUG_TIMEOUT": "0.3",
        },
        prefix=["setpriv", "--bounding-set", "-sys_time", "--"],  # SetGuestDateTime can never move the clock
    )
    ip(agent.ns, "link", "add", "br0", "type", "bridge")
    mac = ip_json(agent.ns, "link", "show", "dev", "br0")[0]["address"]
    rules = b"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.7/32 -j DROP\nCOMMIT\n"

    def ok(check: Callable[[Any], bool]) -> Callable[[int, Any], bool]:
        return lambda rc, out: rc == 0 and check(out)

    def fails(code: str, text: str = "") -> Callable[[int, Any], bool]:
        return lambda rc, out: rc == 1 and out["error"] == code and text in out["message"]

    network = [  # in the runtime's order, one after the other
        (
            "UpdateInterface",
            {
                "interface": {
                    "name": "eth0",
                    "hwAddr": mac,
                    "mtu": 1400,
                    "IPAddresses": [{"address": "10.205.0.2", "mask": "24"}],
                }
            },
            ok(lambda o: o["name"] == "eth0" and o["mtu"] == "1400"),
        ),
        (
            "UpdateRoutes",
            {"routes": {"Routes": [{"dest": "10.206.0.0/16", "gateway": "10.205.0.1", "device": "eth0"}]}},
            ok(lambda o: any(r.get("gateway") == "10.205.0.1" for r in o["Routes"])),
        ),
        (
            "AddARPNeighbors",
            {
                "neighbors": {
                    "ARPNeighbors": [
                        {
                            "toIPAddress": {"address": "10.205.0.1"},
                            "device": "eth0",
                            "lladdr": "02:00:5e:00:53:01",
                            "state": 128,
                        }
                    ]
                }
            },
            ok(lambda o: o == {}),
        ),
        ("ListInterfaces", {}, ok(lambda o: any(i["name"] == "eth0" for i in o["Interfaces"]))),
        ("ListRoutes", {}, ok(lambda o: any(r["dest"] == "10.206.0.0/16" for r in o["Routes"]))),
        ("SetIPTables", {"data": b64(rules)}, ok(lambda o: True)),
        (
            "GetIPTables",
            {"is_ipv6": False},
            ok(lambda o: b"-s 192.0.2.7/32 -j DROP" in base64.b64decode(o["data"])),
        ),
        (
            "UpdateInterface",
            {"interface": {"name": "nope", "hwAddr": "02:00:5e:00:53:99"}},
            fails("NOT_FOUND", "Link not found"),
        ),
    ]
    guest = [
        ("OnlineCPUMem", {"nb_cpus": 2, "cpu_only": True}, ok(lambda o: o == {})),
        ("MemHotplugByProbe", {"memHotplugProbeAddr": ["4294967296"]}, ok(lambda o: o == {})),
        (
            "GetGuestDetails",
            {"mem_block_size": True, "mem_hotplug_probe": True},
            ok(lambda o: o["mem_block_size_bytes"] == str(0x8000000) and o["support_mem_hotplug_probe"]),
        ),
        ("ReseedRandomDev", {"data": ""}, ok(lambda o: o == {})),
        ("SetGuestDateTime", {"Sec": "1", "Usec": "2000000"}, fails("INVALID_ARGUMENT", "microseconds")),
        (
            "CopyFile",
            {"path": f"{shared}/f", "data": b64(b"hello"), "file_size": "5", "file_mode": 0o100644},
            ok(lambda o: o == {}),
        ),
        (
            "CopyFile",
            {"path": f"{shared}/../escape", "data": b64(b"x"), "file_size": "1"},
            fails("PERMISSION_DENIED"),
        ),
        ("AddSwap", {"PCIPath": [2, 1]}, fails("DEADLINE_EXCEEDED", "virtio-blk disk at PCI path 02.0/01.0")),
        ("AddSwapPath", {"path": "relative/swap"}, fails("INVALID_ARGUMENT")),
        (
            "GetVolumeStats",
            {"volume_guest_path": str(tmp_path)},
            ok(lambda o: {u["unit"] for u in o["usage"]} == {"BYTES", "INODES"}),
        ),
        ("ResizeVolume", {"volume_guest_path": "/proc", "size": "0"}, fails("FAILED_PRECONDITION")),
        ("GetMetrics", {}, ok(lambda o: "kata_agent_total_rss" in o["metrics"])),
        (
            "MemAgentMemcgSet",
            {"disabled": True, "swappiness_max": 50},
            fails("INTERNAL", "mem-agent is disabled"),
        ),
        ("MemAgentCompactSet", {"period_secs": "60"}, fails("INTERNAL", "mem-agent is disabled")),
    ]

    def run_all(calls: list[tuple[str, dict[str, Any], Callable[[int, Any], bool]]]) -> list[str]:
        bad = []
        for method, body, expect in calls:
            rc, out = agent.ctl(method, body)
            if not expect(rc, out):
                bad.append(f"{method} {json.dumps(body)} -> rc {rc}: {out}")
        return bad

    with ThreadPoolExecutor(3) as pool:  # the network sequence beside two halves of the guest calls
        results = list(pool.map(run_all, [network, guest[::2], guest[1::2]]))
    assert [b for r in results for b in r] == []
    assert (shared / "f").read_bytes() == b"hello" and not (tmp_path / "escape").exists()
    assert {m for m, _, _ in network + guest} == ISSUE_RPCS


ISSUE_RPCS = {method for method, (module, _) in ROUTES.items() if module in (NETWORK, GUEST)}


def test_every_route_of_the_issue_resolves() -> None:
    import importlib

    for method, (module, function) in ROUTES.items():
        if module in (NETWORK, GUEST):
            assert callable(getattr(importlib.import_module(module), function, None)), method
