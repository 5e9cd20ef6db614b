"""Validated views of the JSON forms of ``types.Interface``, ``types.Route`` and
``types.ARPNeighbor`` (``MessageToDict(..., preserving_proto_field_name=True)``).

Pure parsing, no netlink: the worker turns these into kernel requests, and the
tests can check every rejection without a namespace. uint64 fields arrive as
strings from MessageToDict and enum ``IPFamily`` as ``"v4"``/``"v6"``; both
are accepted in either spelling.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidArgument

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RT_SCOPE_UNIVERSE = 0


def as_int(value: Any, what: str, *, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
    """An integer field, given as int or decimal string (proto3 JSON uint64)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what}: expected an integer, got {value!r}") from None
    if not minimum <= number <= maximum:
        raise InvalidArgument(f"{what}: {number} is out of range [{minimum}, {maximum}]")
    return number


def family_of(value: Any, what: str) -> int | None:
    """IPFamily as 4 or 6; None when the field is absent (proto3 default is v4)."""
    if value in (None, ""):
        return None
    if value in ("v4", 0):
        return 4
    if value in ("v6", 1):
        return 6
    raise InvalidArgument(f"{what}: unknown IP family {value!r}")


def normalize_mac(text: str, what: str = "hwAddr") -> str:
    """Lower-case colon form; rejects anything that is not hex octets."""
    parts = text.strip().split(":")
    if len(parts) < 6 or any(not 1 <= len(p) <= 2 for p in parts):
        raise InvalidArgument(f"{what}: invalid hardware address {text!r}")
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        raise InvalidArgument(f"{what}: invalid hardware address {text!r}") from None
    return ":".join(f"{o:02x}" for o in octets)


def parse_ip(text: str, what: str) -> IPAddr:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidArgument(f"{what}: invalid IP address {text!r}") from None


def parse_net(text: str, what: str, family: int | None = None) -> IPNet:
    """A destination: ``""``/``default`` is the default route, a bare address a host route."""
    text = text.strip()
    if text in ("", "default"):
        return ipaddress.ip_network("::/0" if family == 6 else "0.0.0.0/0")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"{what}: invalid network {text!r}") from None


@dataclass(frozen=True)
class AddressSpec:
    ip: IPAddr
    prefixlen: int

    @property
    def version(self) -> int:
        return self.ip.version


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    hw_addr: str
    mtu: int
    raw_flags: int
    addresses: list[AddressSpec] = field(default_factory=list)

    @property
    def noarp(self) -> bool:
        return bool(self.raw_flags & IFF_NOARP)


def parse_interface(iface: dict[str, Any]) -> InterfaceSpec:
    if not isinstance(iface, dict):
        raise InvalidArgument("interface: expected an object")
    name = str(iface.get("name") or "")
    hw = str(iface.get("hwAddr") or "")
    if not name and not hw:
        raise InvalidArgument("interface: neither hwAddr nor name given")
    if len(name) > 15:
        raise InvalidArgument(f"interface name {name!r} is longer than 15 characters")
    addrs = []
    for i, raw in enumerate(iface.get("IPAddresses") or []):
        what = f"IPAddresses[{i}]"
        ip = parse_ip(str(raw.get("address") or ""), what)
        declared = family_of(raw.get("family"), what)
        if declared == 6 and ip.version == 4:
            raise InvalidArgument(f"{what}: family v6 but address {ip} is IPv4")
        mask = raw.get("mask")
        max_len = 32 if ip.version == 4 else 128
        prefix = max_len if mask in (None, "") else as_int(mask, f"{what}.mask", maximum=max_len)
        addrs.append(AddressSpec(ip, prefix))
    return InterfaceSpec(
        name=name,
        hw_addr=normalize_mac(hw) if hw else "",
        mtu=as_int(iface.get("mtu"), "mtu", maximum=2**31 - 1),
        raw_flags=as_int(iface.get("raw_flags"), "raw_flags", maximum=2**32 - 1),
        addresses=addrs,
    )


@dataclass(frozen=True)
class RouteSpec:
    family: int
    dest: IPNet
    gateway: IPAddr | None
    device: str
    source: str
    scope: int
    flags: int
    mtu: int


def parse_route(route: dict[str, Any], index: int = 0) -> RouteSpec:
    what = f"Routes[{index}]"
    if not isinstance(route, dict):
        raise InvalidArgument(f"{what}: expected an object")
    declared = family_of(route.get("family"), f"{what}.family")
    gw_text = str(route.get("gateway") or "")
    dest_text = str(route.get("dest") or "")
    gateway = parse_ip(gw_text, f"{what}.gateway") if gw_text else None
    # Trust the addresses over the (default-valued, hence often absent) family field.
    family = declared or 4
    if gateway is not None:
        family = gateway.version
    elif dest_text not in ("", "default"):
        family = parse_net(dest_text, f"{what}.dest").version
    dest = parse_net(dest_text, f"{what}.dest", family)
    if dest.version != family:
        raise InvalidArgument(f"{what}: destination {dest} and gateway {gateway} differ in family")
    source = str(route.get("source") or "")
    if source:
        src_ip = source.split("/", 1)[0]
        if parse_ip(src_ip, f"{what}.source").version != family:
            raise InvalidArgument(f"{what}: source {source} is not IPv{family}")
    return RouteSpec(
        family=family,
        dest=dest,
        gateway=gateway,
        device=str(route.get("device") or ""),
        source=source,
        scope=as_int(route.get("scope"), f"{what}.scope", maximum=255),
        flags=as_int(route.get("flags"), f"{what}.flags", maximum=2**32 - 1),
        mtu=as_int(route.get("mtu"), f"{what}.mtu", maximum=2**32 - 1),
    )


def sort_routes(routes: list[RouteSpec]) -> list[RouteSpec]:
    """Gateway-less (link) routes first: a gateway must be reachable before it is used."""
    return [r for r in routes if r.gateway is None] + [r for r in routes if r.gateway is not None]


@dataclass(frozen=True)
class NeighborSpec:
    ip: IPAddr
    device: str
    lladdr: str
    state: int
    flags: int


def parse_neighbor(neigh: dict[str, Any], index: int = 0) -> NeighborSpec:
    what = f"ARPNeighbors[{index}]"
    if not isinstance(neigh, dict):
        raise InvalidArgument(f"{what}: expected an object")
    to = neigh.get("toIPAddress") or {}
    address = str(to.get("address") or "")
    if not address:
        raise InvalidArgument(f"{what}: missing toIPAddress.address")
    device = str(neigh.get("device") or "")
    if not device:
        raise InvalidArgument(f"{what}: missing device")
    lladdr = str(neigh.get("lladdr") or "")
    state = as_int(neigh.get("state"), f"{what}.state", maximum=0xFFFF)
    return NeighborSpec(
        ip=parse_ip(address, f"{what}.toIPAddress"),
        device=device,
        lladdr=normalize_mac(lladdr, f"{what}.lladdr") if lladdr else "",
        state=state or NUD_PERMANENT,
        flags=as_int(neigh.get("flags"), f"{what}.flags", maximum=0xFF),
    )


def family_name(version: int) -> str:
    return "v6" if version == 6 else "v4"
