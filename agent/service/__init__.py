"""Thin RPC handlers: check arguments, call the domain, return the reply.

Every method of ``grpc.AgentService`` is registered; those whose issue has
not landed answer UNIMPLEMENTED with the method's name, so the runtime gets a
clear answer instead of a generic "method not found".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import Unimplemented
from ttrpc.server import Method

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"


def _unimplemented(name: str) -> Callable[..., Any]:
    def handler(request: object, ctx: object) -> None:
        raise Unimplemented(f"/{AGENT_SERVICE}/{name} is not implemented")

    handler.__name__ = f"unimplemented_{name}"
    return handler


def agent_methods(implemented: Mapping[str, Callable[..., Any]]) -> dict[str, Method]:
    """A Method for every AgentService RPC of the contract, from the generated descriptor."""
    from google.protobuf import symbol_database

    from agent.protocols import agent_pb2

    db = symbol_database.Default()
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    methods: dict[str, Method] = {}
    for m in service.methods:
        handler = implemented.get(m.name) or _unimplemented(m.name)
        methods[m.name] = Method(
            handler,
            db.GetSymbol(m.input_type.full_name),
            db.GetSymbol(m.output_type.full_name),
        )
    unknown = set(implemented) - set(methods)
    if unknown:
        raise ValueError(f"handlers for methods not in the contract: {sorted(unknown)}")
    return methods
