"""Parsing the JSON forms of Interface / Route / ARPNeighbor (no netlink)."""

from __future__ import annotations

import ipaddress

import pytest
from google.protobuf import json_format

from agent.errors import InvalidArgument
from agent.network.model import (
    NUD_PERMANENT,
    normalize_mac,
    parse_interface,
    parse_neighbor,
    parse_route,
    sort_routes,
)
from agent.protocols import types_pb2


def as_json(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_interface_from_protobuf_json() -> None:
    msg = types_pb2.Interface(
        name="eth0",
        hwAddr="AA:BB:cc:dd:ee:0F",
        mtu=1450,
        raw_flags=0x80,
        IPAddresses=[
            types_pb2.IPAddress(address="10.0.0.2", mask="24"),
            types_pb2.IPAddress(family=types_pb2.v6, address="fd00::2", mask="64"),
        ],
    )
    spec = parse_interface(as_json(msg))  # mtu arrives as the string "1450"
    assert spec.name == "eth0" and spec.hw_addr == "aa:bb:cc:dd:ee:0f"
    assert spec.mtu == 1450 and spec.noarp
    assert [(str(a.ip), a.prefixlen) for a in spec.addresses] == [("10.0.0.2", 24), ("fd00::2", 64)]


@pytest.mark.parametrize(
    "iface",
    [
        {},
        {"name": "x" * 16},
        {"name": "eth0", "hwAddr": "zz:00:00:00:00:00"},
        {"name": "eth0", "hwAddr": "00:11"},
        {"name": "eth0", "IPAddresses": [{"address": "300.1.1.1", "mask": "24"}]},
        {"name": "eth0", "IPAddresses": [{"address": "10.0.0.1", "mask": "33"}]},
        {"name": "eth0", "IPAddresses": [{"family": "v6", "address": "10.0.0.1", "mask": "8"}]},
        {"name": "eth0", "mtu": "lots"},
    ],
)
def test_interface_rejections(iface: dict) -> None:
    with pytest.raises(InvalidArgument):
        parse_interface(iface)


def test_route_family_defaults_and_inference() -> None:
    r = parse_route(as_json(types_pb2.Route(dest="", gateway="10.0.0.1", device="eth0")))
    assert r.family == 4 and r.dest == ipaddress.ip_network("0.0.0.0/0")
    r = parse_route({"gateway": "fd00::1", "device": "eth0"})  # family omitted, v6 inferred
    assert r.family == 6 and r.dest.prefixlen == 0
    r = parse_route({"dest": "10.1.2.3", "device": "eth0", "scope": 253, "mtu": 1300})
    assert str(r.dest) == "10.1.2.3/32" and r.scope == 253 and r.mtu == 1300
    with pytest.raises(InvalidArgument):
        parse_route({"dest": "10.0.0.0/8", "gateway": "fd00::1"})
    with pytest.raises(InvalidArgument):
        parse_route({"dest": "10.0.0.0/8", "source": "fd00::1"})
    with pytest.raises(InvalidArgument):
        parse_route({"dest": "10.0.0.0/8", "scope": 256})


def test_gatewayless_routes_sorted_first() -> None:
    specs = [
        parse_route({"gateway": "10.0.0.1", "device": "a"}),
        parse_route({"dest": "10.0.0.0/24", "device": "a"}),
        parse_route({"dest": "10.9.0.0/16", "gateway": "10.0.0.1", "device": "a"}),
        parse_route({"dest": "10.1.0.0/24", "device": "b"}),
    ]
    ordered = sort_routes(specs)
    assert [r.gateway is None for r in ordered] == [True, True, False, False]
    assert ordered[2] is specs[0] and ordered[3] is specs[2]  # stable within groups


def test_neighbor_defaults() -> None:
    msg = types_pb2.ARPNeighbor(
        toIPAddress=types_pb2.IPAddress(address="10.0.0.9"), device="eth0", lladdr="02:AA:00:00:00:01"
    )
    n = parse_neighbor(as_json(msg))
    assert n.state == NUD_PERMANENT and n.lladdr == "02:aa:00:00:00:01"
    with pytest.raises(InvalidArgument):
        parse_neighbor({"device": "eth0"})
    with pytest.raises(InvalidArgument):
        parse_neighbor({"toIPAddress": {"address": "10.0.0.9"}})


def test_normalize_mac() -> None:
    assert normalize_mac("2:0:0:a:b:c") == "02:00:00:0a:0b:0c"
