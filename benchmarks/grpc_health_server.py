"""A grpcio server for grpc.Health, the footprint/throughput baseline (benchmarks only).

Uses the agent's generated messages with grpc's generic handlers, so no grpc codegen is
needed. Usage: python3 benchmarks/grpc_health_server.py unix:/path/to.sock
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc

from agent.protocols import health_pb2


def _check(request: health_pb2.CheckRequest, context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _version(
    request: health_pb2.CheckRequest, context: grpc.ServicerContext
) -> health_pb2.VersionCheckResponse:
    return health_pb2.VersionCheckResponse(grpc_version=grpc.__version__, agent_version="grpcio-baseline")


def handler() -> grpc.GenericRpcHandler:
    def unary(fn):
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=health_pb2.CheckRequest.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    return grpc.method_handlers_generic_handler(
        "grpc.Health", {"Check": unary(_check), "Version": unary(_version)}
    )


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(sys.argv[1])
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
