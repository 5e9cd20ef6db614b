"""grpc.Health: the runtime's liveness probe (Check every few seconds) and Version."""

from __future__ import annotations

from agent.protocols import health_pb2
from agent.version import AGENT_VERSION, API_VERSION
from ttrpc.server import CallContext, Method

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
_VERSION = health_pb2.VersionCheckResponse(grpc_version=API_VERSION, agent_version=AGENT_VERSION)


def check(request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.HealthCheckResponse:
    return _SERVING


def version(request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.VersionCheckResponse:
    return _VERSION


METHODS = {
    "Check": Method(check, health_pb2.CheckRequest, health_pb2.HealthCheckResponse),
    "Version": Method(version, health_pb2.CheckRequest, health_pb2.VersionCheckResponse),
}
