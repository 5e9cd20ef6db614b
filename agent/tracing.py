"""Tracing (``agent.trace``): one OpenTelemetry span per RPC, exported over vsock.

Parent: the runtime puts its span's W3C trace context in the ttRPC request
metadata (``traceparent``, ``tracestate``), as upstream's agent expects (its
``trace_rpc_call!`` extracts the metadata with the W3C TraceContext
propagator, values of a key joined with ","). A call without it starts a new
trace.

Export: upstream's agent dials the host's trace forwarder at vsock CID 2
(the host) port 10240 and sends Rust ``bincode`` of its span structs, which
only that forwarder can read. We keep the direction (guest dials
``vsock://2:10240``) and send instead **OTLP/JSON lines**: each line is one
``ExportTraceServiceRequest`` in the OTLP JSON encoding (hex ids, int enums).
That is the standard wire form of OpenTelemetry, so the host needs no Kata
code: a line can be POSTed as-is to any collector's ``/v1/traces``
(``Content-Type: application/json``), or written to a file that the
Collector's ``otlpjsonfile`` receiver reads (``socat VSOCK-LISTEN:10240,fork
OPEN:spans.jsonl,creat,append``). Text lines also make tests and ``tail -f``
trivial. The protobuf encoding would be smaller but needs framing and the
OTLP proto package in the guest.

Tracing must not disturb the agent: spans end on the loop thread, the
exporter only appends to a bounded buffer (past 1 MiB new spans are dropped
and counted), and a non-blocking socket in the loop sends it, reconnecting
every second while the collector is away. The OpenTelemetry SDK is imported
here, and this module only when tracing is on: the idle footprint is
unchanged.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from agent import log
from ttrpc import address as addresses

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ttrpc.loop import Loop, TimerHandle
    from ttrpc.server import CallContext

DEFAULT_ADDRESS = "vsock://2:10240"  # VMADDR_CID_HOST: the host's trace forwarder
SERVICE_NAME = "kata-agent"
BUFFER_LIMIT = 1 << 20
RETRY_INTERVAL = 1.0
CLOSE_TIMEOUT = 2.0
#: OTLP's SpanKind counts UNSPECIFIED as 0; OpenTelemetry Python's starts at INTERNAL = 0.
_KIND_OFFSET = 1

_log = log.logger("tracing")


def trace_address(config: object) -> str:
    """``trace_addr`` if the configuration has one, else the host's trace forwarder."""
    return getattr(config, "trace_addr", "") or DEFAULT_ADDRESS


# --- OTLP/JSON ----------------------------------------------------------------


def _any_value(value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a JSON string in proto3's mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs: Mapping[str, object] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in (attrs or {}).items()]


def _span(span: Any) -> dict[str, Any]:
    ctx = span.context
    out: dict[str, Any] = {
        "traceId": f"{ctx.trace_id:032x}",
        "spanId": f"{ctx.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + _KIND_OFFSET,
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(span.attributes),
        "flags": int(ctx.trace_flags),
        "status": {"code": span.status.status_code.value},
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if ctx.trace_state:
        out["traceState"] = ctx.trace_state.to_header()
    if span.status.description:
        out["status"]["message"] = span.status.description
    if span.events:
        out["events"] = [
            {"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
            for e in span.events
        ]
    return out


def encode_otlp_json(spans: Sequence[Any]) -> bytes:
    """One ``ExportTraceServiceRequest`` as a JSON line, spans grouped by resource and scope."""
    groups: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource_entry = groups.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        resource_entry[1].setdefault(key, []).append(_span(span))
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, "version": version}, "spans": encoded}
                    for (name, version), encoded in scopes.items()
                ],
            }
            for resource, scopes in groups.values()
        ]
    }
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


# --- the exporter's socket ----------------------------------------------------


class SpanSender:
    """A bounded buffer of OTLP/JSON lines and the loop-driven connection that drains it."""

    def __init__(self, loop: Loop, address: str) -> None:
        self.loop = loop
        self.address = addresses.parse_address(address)
        self.buf = bytearray()
        self.dropped = 0
        self.sent_lines = 0
        self._sock: socket.socket | None = None
        self._connected = False
        self._writing = False
        self._retry: TimerHandle | None = None
        self._warned = False
        self._closed = False

    def send(self, line: bytes) -> bool:
        """Queue one line (on the loop thread, where spans end); False if it was dropped."""
        if self._closed or len(self.buf) + len(line) > BUFFER_LIMIT:
            self.dropped += 1
            return False
        self.buf += line
        self.sent_lines += 1
        if self._connected:
            self._flush()
        elif self._sock is None and self._retry is None:
            self._connect()
        return True

    def _connect(self) -> None:
        self._retry = None
        if self._closed or self._sock is not None or not self.buf:
            return
        sock = socket.socket(self.address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        err = sock.connect_ex(self.address.sockaddr)
        self._sock = sock
        if err == 0:
            self._on_connected()
        elif err in (errno.EINPROGRESS, errno.EALREADY):
            self.loop.add_writer(sock.fileno(), self._on_connect_done)
        else:
            self._fail(err)

    def _on_connect_done(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self.loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(err)
        else:
            self._on_connected()

    def _on_connected(self) -> None:
        assert self._sock is not None
        self._connected = True
        self._warned = False
        _log.debug("trace collector connected", address=self.address.text)
        self.loop.add_reader(self._sock.fileno(), self._on_readable)
        self._flush()

    def _fail(self, err: int) -> None:
        if not self._warned:
            _log.warn(
                "trace collector unreachable, spans are kept until it is back",
                address=self.address.text,
                error=os.strerror(err),
            )
            self._warned = True
        self._disconnect()
        if not self._closed:
            self._retry = self.loop.call_later(RETRY_INTERVAL, self._connect)

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self._connected = False
        if sock is None:
            return
        self.loop.remove_reader(sock.fileno())
        self.loop.remove_writer(sock.fileno())
        self._writing = False
        sock.close()

    def _on_readable(self) -> None:
        """The collector sends nothing: readable means it closed the connection."""
        if self._sock is None:
            return
        try:
            data = self._sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc.errno or errno.ECONNRESET)
            return
        if not data:
            self._fail(errno.ECONNRESET)

    def _flush(self) -> None:
        sock = self._sock
        if sock is None or not self._connected:
            return
        if self.buf:
            try:
                sent = sock.send(self.buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc.errno or errno.EPIPE)  # unsent bytes stay for the next connection
                return
            del self.buf[:sent]
        if self.buf and not self._writing:
            self._writing = True
            self.loop.add_writer(sock.fileno(), self._flush)
        elif not self.buf and self._writing:
            self._writing = False
            self.loop.remove_writer(sock.fileno())

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is buffered if connected (blocking, bounded by ``timeout``), then close."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        sock = self._sock
        if sock is not None and self._connected and self.buf:
            self.loop.remove_writer(sock.fileno())
            try:
                sock.setblocking(True)
                sock.settimeout(timeout)
                sock.sendall(self.buf)
            except OSError:
                pass
        self.buf.clear()
        self._disconnect()


# --- spans per RPC ------------------------------------------------------------


class Tracing:
    """The tracer, the exporter and the server interceptor that makes one span per call."""

    def __init__(self, loop: Loop, address: str) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from agent.version import AGENT_VERSION

        self.sender = SpanSender(loop, address)
        sender = self.sender

        class _Exporter(SpanExporter):
            def export(self, spans: Sequence[Any]) -> Any:
                ok = sender.send(encode_otlp_json(spans))
                return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

            def shutdown(self) -> None:
                sender.close()

        resource = Resource.create({"service.name": SERVICE_NAME, "service.version": AGENT_VERSION})
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(_Exporter()))
        self.tracer = self.provider.get_tracer(SERVICE_NAME, AGENT_VERSION)
        self.propagator = TraceContextTextMapPropagator()
        self._server_kind = SpanKind.SERVER
        self._status = Status
        self._error = StatusCode.ERROR

    def interceptor(self, ctx: CallContext, request: object) -> Any:
        """Start the call's span, parented by the metadata's trace context; end it with the call."""
        carrier = {key.lower(): ",".join(values) for key, values in ctx.metadata.items()}
        parent = self.propagator.extract(carrier)
        span = self.tracer.start_span(
            f"{ctx.service}/{ctx.method}",
            context=parent,
            kind=self._server_kind,
            attributes={"rpc.system": "ttrpc", "rpc.service": ctx.service, "rpc.method": ctx.method},
        )
        ended = False

        def end(code: int, message: str) -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            span.set_attribute("rpc.grpc.status_code", code)
            if code:
                span.set_status(self._status(self._error, message))
            span.end()

        def on_done(response: object, code: int, message: str) -> object:
            end(code, message)
            return response

        def on_cancel() -> None:
            # An abandoned call (deadline passed, client gone) never reaches on_done.
            if ctx.deadline is not None and ctx.loop.time() >= ctx.deadline:
                end(4, "deadline exceeded")  # DEADLINE_EXCEEDED
            else:
                end(1, "cancelled")  # CANCELLED

        ctx.on_cancel(on_cancel)
        return on_done

    def close(self) -> None:
        self.provider.shutdown()


def install(agent: Any, address: str | None = None) -> Tracing | None:
    """Trace every RPC of ``agent`` (needs ``.loop``, ``.server``, ``.config``, ``.on_close``).

    ``address`` overrides the configured collector (tests). Without the
    OpenTelemetry packages the error is logged and the agent runs untraced.
    """
    if address is None:
        address = trace_address(agent.config)
    try:
        tracing = Tracing(agent.loop, address)
    except ImportError as exc:
        _log.error("tracing needs opentelemetry-sdk; running without it", error=exc)
        return None
    except (OSError, ValueError) as exc:
        _log.error("tracing not started", address=address, error=exc)
        return None
    agent.server.interceptors.append(tracing.interceptor)
    agent.on_close(tracing.close)
    _log.info("tracing RPCs", address=address)
    return tracing
