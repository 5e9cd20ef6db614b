"""Thin RPC handlers: check arguments, call the domain, return the reply.

Every method of ``grpc.AgentService`` is registered.  The implementing
function is resolved through :mod:`agent.service.routes` on first use, so the
idle agent imports no capability it has not been asked for; a method with no
implementation answers UNIMPLEMENTED with its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from agent.errors import Unimplemented
from agent.service.routes import ROUTES
from ttrpc.server import CallContext, Method

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"


class _LazyHandler:
    """Resolves ``module.function`` on the first call, then calls it directly."""

    __slots__ = ("agent", "method", "target", "fn")

    def __init__(self, agent: object, method: str, target: tuple[str, str] | None) -> None:
        self.agent = agent
        self.method = method
        self.target = target
        self.fn: Callable[..., Any] | None = None

    def __call__(self, request: object, ctx: CallContext) -> Any:
        fn = self.fn
        if fn is None:
            fn = self.fn = self._resolve()
        return fn(self.agent, request, ctx)

    def _resolve(self) -> Callable[..., Any]:
        if self.target is not None:
            module_name, function = self.target
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
            else:
                fn = getattr(module, function, None)
                if fn is not None:
                    return fn
        method = self.method

        def unimplemented(agent: object, request: object, ctx: CallContext) -> None:
            raise Unimplemented(f"/{AGENT_SERVICE}/{method} is not implemented")

        return unimplemented


def agent_methods(agent: object) -> dict[str, Method]:
    """A Method for every AgentService RPC of the contract, from the generated descriptor."""
    from google.protobuf import symbol_database

    from agent.protocols import agent_pb2

    db = symbol_database.Default()
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    methods: dict[str, Method] = {}
    for m in service.methods:
        methods[m.name] = Method(
            _LazyHandler(agent, m.name, ROUTES.get(m.name)),
            db.GetSymbol(m.input_type.full_name),
            db.GetSymbol(m.output_type.full_name),
        )
    return methods
