"""Network operations over rtnetlink (pyroute2 IPRoute), run inside the worker.

Only the worker process imports this module: pyroute2 costs about 24 MB of PSS
and the agent must not carry it while idle. Inputs and outputs are the JSON
forms of the protobuf types (see ``model``), so the worker can pass them
straight through its socket.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import (
    AgentError,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agent.network import iptables
from agent.network.model import (
    IFF_NOARP,
    InterfaceSpec,
    RouteSpec,
    family_name,
    parse_interface,
    parse_neighbor,
    parse_route,
    sort_routes,
)

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTPROT_BOOT = 3
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
IFNAMSIZ = 15


def netlink_error(exc: NetlinkError, doing: str) -> AgentError:
    """Map a kernel errno to the agent error class the runtime expects."""
    text = f"{doing}: {exc.args[1] if len(exc.args) > 1 else exc} (errno {exc.code})"
    if exc.code in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.ENXIO):
        return NotFound(text)
    if exc.code == errno.EEXIST:
        return AlreadyExists(text)
    if exc.code in (errno.EPERM, errno.EACCES):
        return PermissionDenied(text)
    if exc.code == errno.ENETDOWN:
        return FailedPrecondition(text)
    if exc.code in (errno.EINVAL, errno.ERANGE, errno.EAFNOSUPPORT, errno.ENETUNREACH):
        return InvalidArgument(text)
    return Internal(text)


class NetOps:
    """The operations the agent delegates to the worker, one method per op name."""

    def __init__(self, ipr: IPRoute | None = None, proc_root: str = "/proc") -> None:
        self.ipr = ipr if ipr is not None else IPRoute()
        self.proc_root = Path(proc_root)

    def close(self) -> None:
        self.ipr.close()

    # -- helpers ---------------------------------------------------------------

    def _nl(self, doing: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise netlink_error(exc, doing) from None

    def _links(self) -> list[Any]:
        return list(self._nl("list links", "get_links"))

    def _link(self, index: int) -> Any:
        return self._nl(f"get link {index}", "get_links", index)[0]

    def _index_by_name(self, name: str) -> int | None:
        for link in self._links():
            if link.get("ifname") == name:
                return int(link["index"])
        return None

    def _index_by_mac(self, mac: str) -> int | None:
        for link in self._links():
            addr = link.get("address")
            if addr and addr.lower() == mac:
                return int(link["index"])
        return None

    def _require_index(self, name: str) -> int:
        index = self._index_by_name(name)
        if index is None:
            raise NotFound(f"Link not found (name {name!r})")
        return index

    def _ipv6_enabled(self) -> bool:
        try:
            text = (self.proc_root / "sys/net/ipv6/conf/all/disable_ipv6").read_text()
        except OSError:
            return False  # no IPv6 in this kernel or namespace
        return text.strip() == "0"

    def _set_down(self, index: int) -> bool:
        """Bring a link down; returns whether it was up."""
        was_up = bool(self._link(index)["flags"] & IFF_UP)
        if was_up:
            self._nl(f"set link {index} down", "link", "set", index=index, state="down")
        return was_up

    def _interface_dict(self, index: int) -> dict[str, Any]:
        link = self._link(index)
        addrs = []
        for a in self._nl(f"list addresses of link {index}", "get_addr", index=index):
            ip = a.get("local") or a.get("address")
            if ip:
                addrs.append(
                    {
                        "family": family_name(6 if a["family"] == socket.AF_INET6 else 4),
                        "address": ip,
                        "mask": str(a["prefixlen"]),
                    }
                )
        return {
            "device": "",
            "name": link.get("ifname") or "",
            "IPAddresses": addrs,
            "mtu": int(link.get("mtu") or 0),
            "hwAddr": link.get("address") or "",
            "raw_flags": int(link["flags"]),
            "type": link.get(("linkinfo", "kind")) or "",
        }

    # -- interfaces ------------------------------------------------------------

    def update_interface(self, iface: dict[str, Any]) -> dict[str, Any]:
        spec = parse_interface(iface)
        index = self._index_by_mac(spec.hw_addr) if spec.hw_addr else None
        set_mac = False
        if index is None and spec.name:
            index = self._index_by_name(spec.name)
            set_mac = index is not None and bool(spec.hw_addr)
        if index is None:
            raise NotFound(f"Link not found (hwAddr {spec.hw_addr or '-'}, name {spec.name or '-'})")

        self._set_down(index)
        if set_mac:
            self._nl(f"set hwAddr {spec.hw_addr}", "link", "set", index=index, address=spec.hw_addr)
        self._set_addresses(index, spec)
        if spec.mtu:
            self._nl(f"set mtu {spec.mtu}", "link", "set", index=index, mtu=spec.mtu)
        self._nl(
            "set NOARP flag",
            "link",
            "set",
            index=index,
            flags=IFF_NOARP if spec.noarp else 0,
            change=IFF_NOARP,
        )
        self._rename(index, spec)
        self._nl(f"set link {spec.name or index} up", "link", "set", index=index, state="up")
        return self._interface_dict(index)

    def _set_addresses(self, index: int, spec: InterfaceSpec) -> None:
        """Make the link's global addresses exactly the requested ones.

        Link- and host-scoped addresses the kernel manages (IPv6 link-local,
        loopback) are kept unless requested; they are not the runtime's to remove.
        """
        v6 = self._ipv6_enabled()
        wanted = {(a.ip, a.prefixlen) for a in spec.addresses if a.version == 4 or v6}
        for a in self._nl("list addresses", "get_addr", index=index):
            ip = a.get("local") or a.get("address")
            if not ip:
                continue
            addr = ip_address(ip)
            if a["scope"] in (RT_SCOPE_LINK, RT_SCOPE_HOST) and (addr, a["prefixlen"]) not in wanted:
                continue  # kernel-managed (fe80::/64, ::1, 127.0.0.1): left alone
            if (addr, a["prefixlen"]) in wanted:
                continue
            self._nl(
                f"delete address {ip}/{a['prefixlen']}",
                "addr",
                "del",
                index=index,
                address=ip,
                prefixlen=a["prefixlen"],
            )
        for a in spec.addresses:
            if a.version == 6 and not v6:
                continue
            self._nl(
                f"add address {a.ip}/{a.prefixlen}",
                "addr",
                "replace",
                index=index,
                address=str(a.ip),
                prefixlen=a.prefixlen,
            )

    def _rename(self, index: int, spec: InterfaceSpec) -> None:
        if not spec.name:
            return
        current = self._link(index).get("ifname")
        if current == spec.name:
            return
        holder = self._index_by_name(spec.name)
        holder_was_up = False
        if holder is not None:
            # Another link has the name we need: park it under a temporary name,
            # take the name, then give the holder our old name (a swap).
            holder_was_up = self._set_down(holder)
            temp = f"kt{holder}_tmp"[:IFNAMSIZ]
            self._nl(f"rename {spec.name} to {temp}", "link", "set", index=holder, ifname=temp)
        self._nl(f"rename {current} to {spec.name}", "link", "set", index=index, ifname=spec.name)
        if holder is not None:
            self._nl(f"rename holder to {current}", "link", "set", index=holder, ifname=current)
            if holder_was_up:
                self._nl(f"set link {current} up", "link", "set", index=holder, state="up")

    def list_interfaces(self) -> list[dict[str, Any]]:
        return [self._interface_dict(int(link["index"])) for link in self._links()]

    # -- routes ----------------------------------------------------------------

    def update_routes(self, routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not isinstance(routes, list):
            raise InvalidArgument("routes: expected a list")
        specs = [parse_route(r, i) for i, r in enumerate(routes)]
        v6 = self._ipv6_enabled()
        for spec in sort_routes(specs):
            if spec.family == 6 and not v6:
                continue
            self._add_route(spec)
        return self.list_routes()

    def _add_route(self, spec: RouteSpec) -> None:
        kwargs: dict[str, Any] = {
            "family": socket.AF_INET6 if spec.family == 6 else socket.AF_INET,
            "dst": str(spec.dest.network_address),
            "dst_len": spec.dest.prefixlen,
            "table": RT_TABLE_MAIN,
            "proto": RTPROT_BOOT,
            "type": RTN_UNICAST,
            "scope": spec.scope,
        }
        if spec.device:
            kwargs["oif"] = self._require_index(spec.device)
        if spec.gateway is not None:
            kwargs["gateway"] = str(spec.gateway)
        if spec.flags:
            kwargs["flags"] = spec.flags
        if spec.mtu:
            kwargs["metrics"] = {"mtu": spec.mtu}
        if spec.source:
            addr, _, plen = spec.source.partition("/")
            full = 32 if spec.family == 4 else 128
            if spec.family == 6 and plen and int(plen) < full:
                kwargs["src"] = addr  # IPv6 source-specific routing
                kwargs["src_len"] = int(plen)
            else:
                kwargs["prefsrc"] = addr
        doing = f"replace route {spec.dest} via {spec.gateway or '-'} dev {spec.device or '-'}"
        try:
            self.ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise netlink_error(exc, doing) from None

    def list_routes(self) -> list[dict[str, Any]]:
        names = {int(link["index"]): link.get("ifname") or "" for link in self._links()}
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in self._nl("list routes", "get_routes", family=fam):
                if r.get("table") != RT_TABLE_MAIN or r["type"] != RTN_UNICAST:
                    continue
                dst = r.get("dst")
                dest = f"{dst}/{r['dst_len']}" if dst else ""
                src = r.get("src")
                source = f"{src}/{r['src_len']}" if src else (r.get("prefsrc") or "")
                mtu = 0
                metrics = r.get("metrics")
                if metrics:
                    mtu = int(metrics.get("RTAX_MTU") or 0)
                out.append(
                    {
                        "dest": dest,
                        "gateway": r.get("gateway") or "",
                        "device": names.get(int(r.get("oif") or 0), ""),
                        "source": source,
                        "scope": int(r["scope"]),
                        "family": family_name(6 if fam == socket.AF_INET6 else 4),
                        "flags": int(r["flags"]),
                        "mtu": mtu,
                    }
                )
        return out

    # -- neighbours ------------------------------------------------------------

    def add_arp_neighbors(self, neighbors: list[dict[str, Any]]) -> None:
        if not isinstance(neighbors, list):
            raise InvalidArgument("neighbors: expected a list")
        specs = [parse_neighbor(n, i) for i, n in enumerate(neighbors)]
        for spec in specs:
            kwargs: dict[str, Any] = {
                "family": socket.AF_INET6 if spec.ip.version == 6 else socket.AF_INET,
                "dst": str(spec.ip),
                "ifindex": self._require_index(spec.device),
                "state": spec.state,
                "flags": spec.flags,
            }
            if spec.lladdr:
                kwargs["lladdr"] = spec.lladdr
            self._nl(f"add neighbour {spec.ip} dev {spec.device}", "neigh", "replace", **kwargs)

    # -- iptables (plain subprocesses, here so they never run in the agent) -----

    def get_iptables(self, is_ipv6: bool = False) -> str:
        return iptables.to_wire(iptables.save(bool(is_ipv6)))

    def set_iptables(self, is_ipv6: bool = False, data: str = "") -> str:
        return iptables.to_wire(iptables.restore(bool(is_ipv6), iptables.from_wire(data)))


OPS = (
    "update_interface",
    "update_routes",
    "list_interfaces",
    "list_routes",
    "add_arp_neighbors",
    "get_iptables",
    "set_iptables",
)
