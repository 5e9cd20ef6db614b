"""Network RPCs end to end: a real agent in a private netns configures real links.

The two ends of a veth pair sit in two namespaces, each served by its own
agent; everything on them (name, MAC, MTU, addresses, NOARP, routes, static
neighbours) is set only through UpdateInterface / UpdateRoutes /
AddARPNeighbors, then checked with ``ip -j`` and by a ping across the pair.
Both ends are NOARP, so the ping only works if the static neighbours the
agents added are right.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from agent.protocols import agent_pb2, types_pb2
from tests.e2e_network.conftest import IP, Netns, RunningAgent, ip, ip_json, run
from ttrpc.status import Code, RPCError

IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253


def veth_between(netns: Netns) -> tuple[str, str, str, str]:
    """Two namespaces joined by a veth pair with random names and MACs: (ns_a, ns_b, mac_a, mac_b)."""
    ns_a, ns_b = netns.new(), netns.new()
    tag = uuid.uuid4().hex[:6]
    mac_a, mac_b = f"02:aa:{tag[0:2]}:{tag[2:4]}:{tag[4:6]}:01", f"02:bb:{tag[0:2]}:{tag[2:4]}:{tag[4:6]}:02"
    ip(ns_a, "link", "add", f"va{tag}", "address", mac_a, "type", "veth", "peer", "name", f"vb{tag}")
    ip(ns_a, "link", "set", f"vb{tag}", "netns", ns_b)
    ip(ns_b, "link", "set", f"vb{tag}", "address", mac_b)
    return ns_a, ns_b, mac_a, mac_b


def interface(
    name: str, mac: str, mtu: int, addrs: list[tuple[str, int]], flags: int = 0
) -> types_pb2.Interface:
    return types_pb2.Interface(
        name=name,
        hwAddr=mac,
        mtu=mtu,
        raw_flags=flags,
        IPAddresses=[
            types_pb2.IPAddress(family=types_pb2.v6 if ":" in a else types_pb2.v4, address=a, mask=str(m))
            for a, m in addrs
        ],
    )


def configure(
    agent: RunningAgent,
    iface: types_pb2.Interface,
    routes: list[types_pb2.Route],
    neighbors: list[types_pb2.ARPNeighbor],
) -> tuple[types_pb2.Interface, agent_pb2.Routes]:
    """The runtime's order: UpdateInterface, UpdateRoutes, AddARPNeighbors."""
    got = agent.call(
        "UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), types_pb2.Interface
    )
    table = agent.call(
        "UpdateRoutes",
        agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=routes)),
        agent_pb2.Routes,
    )
    agent.call(
        "AddARPNeighbors",
        agent_pb2.AddARPNeighborsRequest(neighbors=agent_pb2.ARPNeighbors(ARPNeighbors=neighbors)),
        empty_pb2.Empty,
    )
    return got, table


def global_addrs(entry: dict) -> set[tuple[str, int]]:
    return {(a["local"], a["prefixlen"]) for a in entry["addr_info"] if a.get("scope") == "global"}


def test_veth_pair_configured_only_through_agents_pings(
    netns: Netns, agent_factory: Callable[..., RunningAgent]
) -> None:
    ns_a, ns_b, mac_a, mac_b = veth_between(netns)
    a, b = agent_factory(ns=ns_a), agent_factory(ns=ns_b)

    got_a, routes_a = configure(
        a,
        interface("eth0", mac_a, 1400, [("10.201.0.2", 24), ("fd00:201::2", 64)], IFF_NOARP),
        [
            types_pb2.Route(dest="10.201.0.0/24", device="eth0", source="10.201.0.2", scope=RT_SCOPE_LINK),
            types_pb2.Route(dest="10.202.0.0/24", gateway="10.201.0.1", device="eth0"),
        ],
        [
            types_pb2.ARPNeighbor(
                toIPAddress=types_pb2.IPAddress(address="10.201.0.1"),
                device="eth0",
                lladdr=mac_b,
                state=NUD_PERMANENT,
            )
        ],
    )
    configure(
        b,
        interface("eth0", mac_b, 1400, [("10.201.0.1", 24), ("10.202.0.1", 24)], IFF_NOARP),
        [],
        [
            types_pb2.ARPNeighbor(
                toIPAddress=types_pb2.IPAddress(address="10.201.0.2"),
                device="eth0",
                lladdr=mac_a,
                state=NUD_PERMANENT,
            )
        ],
    )

    # The replies describe the link as the kernel now has it.
    assert got_a.name == "eth0" and got_a.hwAddr == mac_a and got_a.mtu == 1400
    assert got_a.raw_flags & IFF_NOARP and got_a.type == "veth"
    assert {(x.address, x.mask) for x in got_a.IPAddresses} >= {("10.201.0.2", "24"), ("fd00:201::2", "64")}
    assert any(r.dest == "10.202.0.0/24" and r.gateway == "10.201.0.1" for r in routes_a.Routes)

    # The kernel state, as ip -j sees it: exactly what was asked.
    [link] = ip_json(ns_a, "addr", "show", "dev", "eth0")
    assert link["address"] == mac_a and link["mtu"] == 1400
    assert {"UP", "NOARP"} <= set(link["flags"])
    assert global_addrs(link) == {("10.201.0.2", 24), ("fd00:201::2", 64)}
    routes = ip_json(ns_a, "route", "show", "table", "main")
    link_route = [r for r in routes if r["dst"] == "10.201.0.0/24" and r.get("protocol") != "kernel"]
    assert link_route and link_route[0]["dev"] == "eth0" and link_route[0]["scope"] == "link"
    assert link_route[0]["prefsrc"] == "10.201.0.2"
    [via] = [r for r in routes if r["dst"] == "10.202.0.0/24"]
    assert via["gateway"] == "10.201.0.1" and via["dev"] == "eth0"
    [neigh] = ip_json(ns_a, "neigh", "show", "dev", "eth0", "to", "10.201.0.1")
    assert neigh["lladdr"] == mac_b and neigh["state"] == ["PERMANENT"]

    # A ping across the pair, directly and through the gateway route.
    for target in ("10.201.0.1", "10.202.0.1"):
        done = run(IP, "netns", "exec", ns_a, "ping", "-c", "1", "-W", "5", target, check=False)
        assert done.returncode == 0, done.stdout + done.stderr

    # ListInterfaces / ListRoutes see the same.
    listed = a.call("ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces)
    [eth0] = [i for i in listed.Interfaces if i.name == "eth0"]
    assert eth0.hwAddr == mac_a and eth0.mtu == 1400
    table = a.call("ListRoutes", agent_pb2.ListRoutesRequest(), agent_pb2.Routes)
    assert any(
        r.dest == "10.202.0.0/24" and r.gateway == "10.201.0.1" and r.device == "eth0" for r in table.Routes
    )


def test_link_not_found_text(agent_factory: Callable[..., RunningAgent]) -> None:
    agent = agent_factory()
    iface = interface("eth9", "02:00:5e:00:53:99", 1500, [("10.203.0.2", 24)])
    with pytest.raises(RPCError) as err:
        agent.call("UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), types_pb2.Interface)
    assert err.value.code == Code.NOT_FOUND and "Link not found" in err.value.message
    with pytest.raises(RPCError) as err:  # a route through a missing device
        agent.call(
            "UpdateRoutes",
            agent_pb2.UpdateRoutesRequest(
                routes=agent_pb2.Routes(Routes=[types_pb2.Route(dest="10.9.0.0/16", device="eth9")])
            ),
            agent_pb2.Routes,
        )
    assert "Link not found" in err.value.message
    with pytest.raises(RPCError) as err:
        agent.call("UpdateInterface", agent_pb2.UpdateInterfaceRequest(), types_pb2.Interface)
    assert err.value.code == Code.INVALID_ARGUMENT


def test_iptables_round_trip_stays_in_the_namespace(agent_factory: Callable[..., RunningAgent]) -> None:
    agent = agent_factory()
    octet = int(uuid.uuid4().hex[:2], 16)
    for is_ipv6, src in ((False, f"198.51.100.{octet}/32"), (True, f"2001:db8::{octet:x}/128")):
        rules = (
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            f"-A INPUT -s {src} -j DROP\nCOMMIT\n"
        ).encode()
        agent.call(
            "SetIPTables",
            agent_pb2.SetIPTablesRequest(is_ipv6=is_ipv6, data=rules),
            agent_pb2.SetIPTablesResponse,
        )
        got = agent.call(
            "GetIPTables", agent_pb2.GetIPTablesRequest(is_ipv6=is_ipv6), agent_pb2.GetIPTablesResponse
        )
        assert f"-A INPUT -s {src} -j DROP".encode() in got.data
        assert b":FORWARD DROP" in got.data
        save = "ip6tables-save" if is_ipv6 else "iptables-save"
        inside = run(IP, "netns", "exec", agent.ns, save).stdout
        assert f"-A INPUT -s {src} -j DROP" in inside
        assert src not in run(save).stdout  # the host's own rules are untouched
    with pytest.raises(RPCError) as err:  # a bad ruleset is refused with the tool's message
        agent.call(
            "SetIPTables",
            agent_pb2.SetIPTablesRequest(data=b"*filter\n-A NOPE\nCOMMIT\n"),
            agent_pb2.SetIPTablesResponse,
        )
    assert "iptables-restore" in err.value.message


def fake_pci_sysfs(root: Path) -> Path:
    """A sysfs tree with one bridge (slot 02) leading to bus 01, and an empty class/net."""
    (root / "devices/pci0000:00/0000:00:02.0/pci_bus/0000:01").mkdir(parents=True)
    (root / "class/net").mkdir(parents=True)
    return root


def test_device_path_waits_for_the_nic(
    netns: Netns, agent_factory: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    """devicePath: a missing NIC fails after hotplug_timeout; a present one is configured."""
    sysfs = fake_pci_sysfs(tmp_path / "sys")
    ns = netns.new()
    ip(ns, "link", "add", "nic0", "address", "02:00:5e:10:00:01", "type", "veth", "peer", "name", "nic0p")
    agent = agent_factory(
        ns=ns, env={"KATA_AGENT_SYSFS_ROOT": str(sysfs), "KATA_AGENT_HOTPLUG_TIMEOUT": "0.6"}
    )
    iface = interface("eth0", "02:00:5e:10:00:01", 1500, [("10.204.0.2", 24)])
    iface.devicePath = "02/01"

    start = time.monotonic()
    with pytest.raises(RPCError) as err:
        agent.call("UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), types_pb2.Interface)
    elapsed = time.monotonic() - start
    assert err.value.code == Code.DEADLINE_EXCEEDED
    assert (
        "timeout after 0.6s waiting for uevent of network interface at PCI path 02.0/01.0"
        in err.value.message
    )
    assert 0.55 <= elapsed < 10
    assert ip_json(ns, "link", "show", "dev", "nic0")  # nothing was touched

    # The NIC "arrives": sysfs now places nic0 under the device at 02/01 (a cold-plugged NIC).
    (sysfs / "class/net/nic0").symlink_to(
        "../../devices/pci0000:00/0000:00:02.0/0000:01:01.0/virtio3/net/nic0"
    )
    got = agent.call(
        "UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), types_pb2.Interface
    )
    assert got.name == "eth0"
    [link] = ip_json(ns, "addr", "show", "dev", "eth0")
    assert global_addrs(link) == {("10.204.0.2", 24)}

    with pytest.raises(RPCError) as err:  # an impossible PCI path is refused at once
        iface.devicePath = "02/zz"
        agent.call("UpdateInterface", agent_pb2.UpdateInterfaceRequest(interface=iface), types_pb2.Interface)
    assert err.value.code == Code.INVALID_ARGUMENT


def test_concurrent_calls_share_one_worker(agent_factory: Callable[..., RunningAgent]) -> None:
    """Many calls in flight at once are all answered; one worker serves them."""
    import threading

    agent = agent_factory()
    ip(agent.ns, "link", "add", "br7", "type", "bridge")
    results: list[object] = []

    def list_many() -> None:
        for _ in range(5):
            results.append(
                agent.call("ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces)
            )

    threads = [threading.Thread(target=list_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    assert all(any(i.name == "br7" for i in r.Interfaces) for r in results)  # type: ignore[attr-defined]
    assert len(agent.children()) == 1
