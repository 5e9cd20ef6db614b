"""``kata-agent-ctl``: talk to an agent from a shell.

    kata-agent-ctl --addr unix:///run/agent.sock check
    kata-agent-ctl --addr ... version
    kata-agent-ctl --addr ... call CreateSandbox '{"hostname": "pod"}'

``call`` accepts any method of the contract (``Method``, ``Service/Method``
or ``grpc.Service/Method``), builds the request from JSON with protobuf's
json_format (field names as in the .proto or lowerCamelCase), and prints the
reply as JSON.  On error it prints the status code and message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from ttrpc.status import Code, RPCError

SERVICES = ("grpc.AgentService", "grpc.Health")


def _descriptors() -> dict[str, Any]:
    from agent.protocols import agent_pb2, health_pb2

    return {
        "grpc.AgentService": agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        "grpc.Health": health_pb2.DESCRIPTOR.services_by_name["Health"],
    }


def resolve_method(name: str) -> tuple[str, str, type[Message], type[Message]]:
    """(service, method, request type, response type) for a user-given method name."""
    services = _descriptors()
    service_hint, _, method = name.rpartition("/")
    if not service_hint and "." in method:
        service_hint, _, method = method.rpartition(".")
    for full, desc in services.items():
        if service_hint and service_hint not in (full, full.split(".", 1)[1]):
            continue
        m = desc.methods_by_name.get(method)
        if m is not None:
            db = symbol_database.Default()
            return (
                full,
                m.name,
                db.GetSymbol(m.input_type.full_name),
                db.GetSymbol(m.output_type.full_name),
            )
    raise SystemExit(f"kata-agent-ctl: unknown method {name!r} (see 'kata-agent-ctl methods')")


def _to_json(msg: Message) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2)


def build_request(request_type: type[Message], text: str | None) -> Message:
    request = request_type()
    if text:
        if text == "-":
            text = sys.stdin.read()
        try:
            json_format.Parse(text, request)
        except json_format.ParseError as exc:
            raise SystemExit(
                f"kata-agent-ctl: bad JSON for {request_type.DESCRIPTOR.full_name}: {exc}"
            ) from None
    return request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kata-agent-ctl", description="Call a kata-agent over ttRPC")
    parser.add_argument(
        "--addr", default="vsock://3:1024", help="agent address (unix:///path, vsock://CID:PORT)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="call deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="Health.Check")
    sub.add_parser("version", help="Health.Version")
    sub.add_parser("methods", help="list every callable method")
    call = sub.add_parser("call", help="call any method with a JSON request")
    call.add_argument("method")
    call.add_argument("json", nargs="?", help="request as JSON ('-' reads stdin)")
    args = parser.parse_args(argv)

    if args.command == "methods":
        for full, desc in _descriptors().items():
            for m in desc.methods:
                print(f"{full}/{m.name}  ({m.input_type.full_name} -> {m.output_type.full_name})")
        return 0
    if args.command == "check":
        service, method, req_t, resp_t = resolve_method("grpc.Health/Check")
        request = req_t()
    elif args.command == "version":
        service, method, req_t, resp_t = resolve_method("grpc.Health/Version")
        request = req_t()
    else:
        service, method, req_t, resp_t = resolve_method(args.method)
        request = build_request(req_t, args.json)

    from ttrpc.client import Client

    try:
        with Client(args.addr) as client:
            reply = client.call(service, method, request, resp_t, timeout=args.timeout)
    except RPCError as exc:
        code = exc.code.name if isinstance(exc.code, Code) else str(exc.code)
        print(json.dumps({"error": code, "code": int(exc.code), "message": exc.message}), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kata-agent-ctl: cannot reach {args.addr}: {exc}", file=sys.stderr)
        return 2
    print(_to_json(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
