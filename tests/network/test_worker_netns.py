"""The network worker against a real kernel, inside private namespaces.

The "dummy" of the brief is a bridge with no ports here: this kernel is built
without the dummy driver, and an empty bridge is the same kind of standalone,
carrier-less link.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from agent.errors import InvalidArgument, NotFound, Unavailable
from agent.network.client import NetworkWorker
from tests.network.nsutil import in_ns, ip, ip_json, link_info, need


def addrs(entry: dict, *, with_link_local: bool = False) -> set[tuple[str, int]]:
    return {
        (a["local"], a["prefixlen"])
        for a in entry["addr_info"]
        if with_link_local or a.get("scope") != "link" or a["family"] == "inet"
    }


def test_configure_standalone_link_and_veth(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "br9", "type", "bridge")
    ip(netns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    br_mac = link_info(netns, "br9")["address"]
    va_mac = link_info(netns, "va")["address"]

    res = worker.update_interface(
        {
            "name": "eth1",
            "hwAddr": br_mac.upper(),
            "mtu": "1400",
            "raw_flags": 0x80,
            "IPAddresses": [
                {"address": "192.168.50.2", "mask": "24"},
                {"family": "v6", "address": "fd00:50::2", "mask": "64"},
            ],
        }
    )
    assert res["name"] == "eth1" and res["mtu"] == 1400 and res["hwAddr"] == br_mac
    eth1 = link_info(netns, "eth1")
    assert eth1["mtu"] == 1400 and eth1["address"] == br_mac
    assert "NOARP" in eth1["flags"] and "UP" in eth1["flags"]
    assert addrs(eth1) == {("192.168.50.2", 24), ("fd00:50::2", 64)}

    res = worker.update_interface(
        {
            "name": "eth0",
            "hwAddr": va_mac,
            "mtu": 1300,
            "IPAddresses": [{"address": "10.20.0.5", "mask": "16"}],
        }
    )
    eth0 = link_info(netns, "eth0")
    assert eth0["mtu"] == 1300 and "NOARP" not in eth0["flags"] and "UP" in eth0["flags"]
    assert addrs(eth0) == {("10.20.0.5", 16)}
    assert {(a["address"], int(a["mask"])) for a in res["IPAddresses"]} >= {("10.20.0.5", 16)}

    # A second update replaces the address set exactly, and can clear NOARP.
    worker.update_interface(
        {"name": "eth1", "hwAddr": br_mac, "IPAddresses": [{"address": "192.168.60.2", "mask": "25"}]}
    )
    eth1 = link_info(netns, "eth1")
    assert addrs(eth1) == {("192.168.60.2", 25)} and "NOARP" not in eth1["flags"]


def test_found_by_name_gets_the_requested_mac(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "eth0", "type", "bridge")
    worker.update_interface(
        {"name": "eth0", "hwAddr": "02:42:ac:11:00:02", "IPAddresses": [{"address": "10.1.1.1", "mask": "8"}]}
    )
    info = link_info(netns, "eth0")
    assert info["address"] == "02:42:ac:11:00:02" and addrs(info) == {("10.1.1.1", 8)}


def test_rename_swaps_with_the_link_holding_the_name(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "eth0", "type", "bridge")
    ip(netns, "link", "add", "tmpnic", "type", "bridge")
    ip(netns, "link", "set", "eth0", "up")
    old_eth0_mac = link_info(netns, "eth0")["address"]
    target_mac = link_info(netns, "tmpnic")["address"]
    worker.update_interface({"name": "eth0", "hwAddr": target_mac})
    assert link_info(netns, "eth0")["address"] == target_mac
    moved = link_info(netns, "tmpnic")
    assert moved["address"] == old_eth0_mac and "UP" in moved["flags"]


def test_link_not_found(worker: NetworkWorker) -> None:
    with pytest.raises(NotFound, match="Link not found"):
        worker.update_interface({"name": "nope0", "hwAddr": "02:00:00:00:00:99"})
    with pytest.raises(NotFound, match="Link not found"):
        worker.update_routes([{"dest": "10.0.0.0/8", "device": "nope0"}])
    with pytest.raises(InvalidArgument):
        worker.update_interface({"name": "x", "IPAddresses": [{"address": "bogus"}]})


def test_routes_v4_v6_scope_source_mtu(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    mac = link_info(netns, "va")["address"]
    worker.update_interface(
        {
            "name": "eth0",
            "hwAddr": mac,
            "IPAddresses": [
                {"address": "172.16.0.10", "mask": "24"},
                {"family": "v6", "address": "fd00:1::10", "mask": "64"},
            ],
        }
    )
    # The gateway route comes first in the request; it must still work.
    routes = worker.update_routes(
        [
            {"dest": "", "gateway": "172.16.0.1", "device": "eth0"},
            {"dest": "10.99.0.0/16", "gateway": "172.16.0.1", "device": "eth0", "mtu": 1350},
            {"dest": "172.16.0.0/24", "device": "eth0", "scope": 253, "source": "172.16.0.10"},
            {"dest": "fd00:2::/64", "gateway": "fd00:1::1", "device": "eth0", "family": "v6", "mtu": 1300},
        ]
    )
    v4 = {r.get("dst"): r for r in ip_json(netns, "-4", "route", "show", "table", "main")}
    assert v4["default"]["gateway"] == "172.16.0.1" and v4["default"]["dev"] == "eth0"
    assert v4["10.99.0.0/16"]["gateway"] == "172.16.0.1" and v4["10.99.0.0/16"]["metrics"] == [{"mtu": 1350}]
    assert v4["172.16.0.0/24"]["scope"] == "link" and v4["172.16.0.0/24"]["prefsrc"] == "172.16.0.10"
    v6 = {r.get("dst"): r for r in ip_json(netns, "-6", "route", "show", "table", "main")}
    assert v6["fd00:2::/64"]["gateway"] == "fd00:1::1" and v6["fd00:2::/64"]["metrics"] == [{"mtu": 1300}]

    by_dest = {(r["family"], r["dest"]): r for r in routes}
    assert by_dest[("v4", "")]["gateway"] == "172.16.0.1"
    assert by_dest[("v4", "10.99.0.0/16")]["mtu"] == 1350
    assert by_dest[("v6", "fd00:2::/64")]["gateway"] == "fd00:1::1"
    assert routes == worker.list_routes()

    # Replacing an existing route changes it in place (no EEXIST, no duplicate).
    worker.update_routes([{"dest": "10.99.0.0/16", "gateway": "172.16.0.2", "device": "eth0"}])
    v4 = [r for r in ip_json(netns, "-4", "route", "show", "table", "main") if r["dst"] == "10.99.0.0/16"]
    assert len(v4) == 1 and v4[0]["gateway"] == "172.16.0.2"


def test_arp_neighbors(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    ip(netns, "link", "set", "va", "up")
    worker.add_arp_neighbors(
        [
            {"toIPAddress": {"address": "10.3.0.7"}, "device": "va", "lladdr": "02:00:00:00:00:07"},
            {
                "toIPAddress": {"address": "10.3.0.8", "family": "v4"},
                "device": "va",
                "lladdr": "02:00:00:00:00:08",
                "state": 0x04,
            },
        ]
    )
    neigh = {n["dst"]: n for n in ip_json(netns, "neigh", "show", "dev", "va")}
    assert neigh["10.3.0.7"]["lladdr"] == "02:00:00:00:00:07" and neigh["10.3.0.7"]["state"] == ["PERMANENT"]
    assert neigh["10.3.0.8"]["lladdr"] == "02:00:00:00:00:08" and neigh["10.3.0.8"]["state"] == ["STALE"]
    with pytest.raises(NotFound, match="Link not found"):
        worker.add_arp_neighbors([{"toIPAddress": {"address": "10.3.0.9"}, "device": "nope"}])


def test_ipv6_skipped_when_disabled(netns: str, worker: NetworkWorker) -> None:
    assert in_ns(netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1").returncode == 0
    ip(netns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    worker.update_interface(
        {
            "name": "va",
            "IPAddresses": [
                {"address": "10.4.0.1", "mask": "24"},
                {"family": "v6", "address": "fd00:4::1", "mask": "64"},
            ],
        }
    )
    assert addrs(link_info(netns, "va"), with_link_local=True) == {("10.4.0.1", 24)}
    worker.update_routes([{"dest": "fd00:5::/64", "gateway": "fd00:4::9", "device": "va", "family": "v6"}])


def test_ping_across_namespaces_configured_only_by_workers(make_netns) -> None:
    need("ping")
    a, b = make_netns(), make_netns()
    ip(a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
    mac_a, mac_b = link_info(a, "va")["address"], link_info(b, "vb")["address"]
    with NetworkWorker(netns=f"/run/netns/{a}") as wa, NetworkWorker(netns=f"/run/netns/{b}") as wb:
        wa.update_interface(
            {"name": "eth0", "hwAddr": mac_a, "IPAddresses": [{"address": "10.77.0.1", "mask": "30"}]}
        )
        wb.update_interface(
            {"name": "eth0", "hwAddr": mac_b, "IPAddresses": [{"address": "10.77.0.2", "mask": "30"}]}
        )
        wa.update_routes([{"dest": "10.88.0.0/16", "gateway": "10.77.0.2", "device": "eth0"}])
        wb.update_interface(
            {
                "name": "lo",
                "IPAddresses": [
                    {"address": "127.0.0.1", "mask": "8"},
                    {"address": "10.88.0.1", "mask": "32"},
                ],
            }
        )
    res = in_ns(a, "ping", "-c", "2", "-W", "5", "10.77.0.2")
    assert res.returncode == 0, res.stdout + res.stderr
    res = in_ns(a, "ping", "-c", "1", "-W", "5", "10.88.0.1")  # through the worker-made route
    assert res.returncode == 0, res.stdout + res.stderr


def test_worker_exits_when_idle_and_respawns(netns: str) -> None:
    with NetworkWorker(idle_timeout=1.0, netns=f"/run/netns/{netns}") as w:
        assert w.pid is None
        t0 = time.monotonic()
        w.list_interfaces()
        first_pid, first_proc = w.pid, w.proc
        assert first_pid is not None and w.spawn_count == 1
        w.list_routes()
        assert w.pid == first_pid  # warm: same process
        first_proc.wait(timeout=10)  # exits on its own after ~1 s idle
        assert time.monotonic() - t0 >= 1.0
        assert not w.usable()
        w.list_interfaces()
        assert w.spawn_count == 2 and w.pid != first_pid


def test_worker_exits_on_eof(netns: str) -> None:
    w = NetworkWorker(idle_timeout=60, netns=f"/run/netns/{netns}")
    w.list_interfaces()
    proc = w.proc
    w.close()
    assert proc.wait(timeout=10) == 0


def test_calls_from_many_threads(netns: str, worker: NetworkWorker) -> None:
    ip(netns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
    ip(netns, "link", "set", "va", "up")
    results: list[object] = []

    def run(i: int) -> None:
        try:
            worker.update_routes([{"dest": f"10.{i}.0.0/16", "device": "va", "scope": 253}])
            results.append(i)
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results, key=str) == list(range(8)), results
    dsts = {r["dst"] for r in ip_json(netns, "-4", "route", "show", "table", "main")}
    assert {f"10.{i}.0.0/16" for i in range(8)} <= dsts
    assert worker.spawn_count == 1


def test_bad_netns_fails_loudly(tmp_path) -> None:
    w = NetworkWorker(netns=str(tmp_path / "missing"))
    with pytest.raises(Unavailable, match="exited before answering"):
        w.list_interfaces(timeout=30)
    w.shutdown()


def test_iptables_round_trip_in_namespace(worker: NetworkWorker) -> None:
    need("iptables-save")
    rules = (
        b"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        b"-A INPUT -s 10.66.0.0/16 -j DROP\nCOMMIT\n"
    )
    worker.set_iptables(False, rules)
    saved = worker.get_iptables(False)
    assert b"-A INPUT -s 10.66.0.0/16 -j DROP" in saved and b":FORWARD DROP" in saved
    v6 = (
        b"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        b"-A INPUT -s fd00:66::/64 -j DROP\nCOMMIT\n"
    )
    worker.set_iptables(True, v6)
    assert b"-A INPUT -s fd00:66::/64 -j DROP" in worker.get_iptables(True)
    with pytest.raises(Exception, match="iptables-restore failed"):
        worker.set_iptables(False, b"*filter\n-A NOPE -j WHAT\nCOMMIT\n")


def test_deadline_kills_a_stuck_worker(tmp_path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    w = NetworkWorker(python=str(fake))
    from agent.errors import DeadlineExceeded

    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        w.list_routes(timeout=0.5)
    assert time.monotonic() - t0 < 5
    w.shutdown(timeout=0.5)
    assert all(p.returncode is not None for p, _ in w._exiting) and w.proc is None


def test_loop_style_driving_without_threads(netns: str) -> None:
    """What the lead's selectors loop does: fd + sans-IO codec, no blocking call()."""
    import selectors

    w = NetworkWorker(netns=f"/run/netns/{netns}")
    try:
        w.start()
        sel = selectors.DefaultSelector()
        sel.register(w.fileno(), selectors.EVENT_READ)
        req_a, data_a = w.codec.encode_request("list_interfaces")
        req_b, data_b = w.codec.encode_request("update_interface", {"iface": {"name": "nope"}})
        w.sock.sendall(data_a + data_b)
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            for _key, _ in sel.select(1.0):
                for reply in w.codec.feed(w.sock.recv(65536)):
                    got[reply.id] = reply
        assert got[req_a].ok and any(i["name"] == "lo" for i in got[req_a].result)
        assert not got[req_b].ok and "Link not found" in got[req_b].error_message
        assert w.codec.pending == set() and w.usable()
        sel.close()
    finally:
        w.shutdown()


def test_unknown_op_is_unimplemented(worker: NetworkWorker) -> None:
    from agent.errors import Unimplemented

    with pytest.raises(Unimplemented):
        worker.call("close")  # not an exposed op? close exists on NetOps: must still be refused
    with pytest.raises(Unimplemented):
        worker.call("_links")


def test_worker_does_not_touch_host_namespace(netns: str, worker: NetworkWorker) -> None:
    def host_links() -> set[tuple[int, str]]:
        out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
        return {(link["ifindex"], link["ifname"]) for link in json.loads(out)}

    before = host_links()
    worker.update_interface({"name": "lo", "IPAddresses": [{"address": "127.0.0.1", "mask": "8"}]})
    worker.update_interface({"name": "lo", "IPAddresses": [{"address": "127.0.0.1", "mask": "8"}]})
    lo = {(a["local"], a["prefixlen"]) for a in link_info(netns, "lo")["addr_info"]}
    assert lo == {("127.0.0.1", 8), ("::1", 128)}  # the kernel's ::1 survives a second update
    assert {i["name"] for i in worker.list_interfaces()} == {"lo"}
    assert host_links() == before


def test_bad_arguments_are_invalid_argument(worker: NetworkWorker) -> None:
    with pytest.raises(InvalidArgument, match="bad arguments for update_routes"):
        worker.call("update_routes", {"routez": []})
    with pytest.raises(InvalidArgument, match="expected a list"):
        worker.call("update_routes", {"routes": "nope"})
    assert worker.list_routes() == []  # the worker survived both
