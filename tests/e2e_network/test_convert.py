"""The network service's message <-> JSON-form converters agree with protobuf's json_format
(which the agent does not load): same keys, same values, uint64 as int instead of string."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from agent.protocols import agent_pb2, types_pb2
from agent.service.network import _fill, _interface, _routes, _to_dict

text = st.text(max_size=12)
u32 = st.integers(0, 2**32 - 1)
family = st.sampled_from([types_pb2.v4, types_pb2.v6])
address = st.builds(types_pb2.IPAddress, family=family, address=text, mask=text)
interface = st.builds(
    types_pb2.Interface,
    device=text,
    name=text,
    IPAddresses=st.lists(address, max_size=3),
    mtu=st.integers(0, 2**64 - 1),
    hwAddr=text,
    devicePath=text,
    type=text,
    raw_flags=u32,
)
route = st.builds(
    types_pb2.Route,
    dest=text,
    gateway=text,
    device=text,
    source=text,
    scope=u32,
    family=family,
    flags=u32,
    mtu=u32,
)
neighbor = st.builds(
    types_pb2.ARPNeighbor,
    toIPAddress=address,
    device=text,
    lladdr=text,
    state=st.integers(-(2**31), 2**31 - 1),
    flags=st.integers(-(2**31), 2**31 - 1),
)


def reference(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def normalized(d: Any) -> Any:
    """json_format writes 64-bit integers as strings."""
    if isinstance(d, dict):
        return {k: normalized(v) for k, v in d.items()}
    if isinstance(d, list):
        return [normalized(v) for v in d]
    return str(d) if isinstance(d, int) and not isinstance(d, bool) else d


@given(st.one_of(interface, route, neighbor))
def test_to_dict_matches_json_format(msg: Any) -> None:
    assert normalized(_to_dict(msg)) == normalized(reference(msg))


@given(interface)
def test_fill_round_trips_interfaces(msg: types_pb2.Interface) -> None:
    assert _interface(_to_dict(msg)) == msg
    assert _fill(types_pb2.Interface(), {**_to_dict(msg), "unknown": 1}) == msg


@given(st.lists(route, max_size=4))
def test_fill_round_trips_routes(routes: list[types_pb2.Route]) -> None:
    msg = agent_pb2.Routes(Routes=routes)
    assert _routes([_to_dict(r) for r in routes]) == msg
    assert json_format.ParseDict({"Routes": [_to_dict(r) for r in routes]}, agent_pb2.Routes()) == msg
