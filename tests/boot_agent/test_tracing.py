"""Tracing: one span per RPC, parented by the W3C trace context sent in ttRPC metadata."""

from __future__ import annotations

import json
import socket
import threading
import time
import types
from pathlib import Path

import pytest

from agent.protocols import health_pb2
from tests.agent.harness import wait_ready
from ttrpc.client import Client

from .helpers import start_features, stop

pytest.importorskip("opentelemetry.sdk.trace", reason="tracing needs opentelemetry-sdk (the 'trace' extra)")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector:
    """A stand-in for the host's forwarder: accepts the agent's connection, collects OTLP/JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict] = []
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                for line in f:
                    self.lines.append(json.loads(line))

    def spans(self) -> list[dict]:
        out = []
        for req in list(self.lines):
            for rs in req["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    out.extend(ss["spans"])
        return out

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.spans()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        spans = self.spans()
        assert len(spans) >= count, spans
        return spans

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        self._thread.join(5)


def test_span_parented_by_the_metadata_arrives_at_the_collector(tmp_path) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(tmp_path / "collector.sock")
    sock = tmp_path / "agent.sock"
    proc = start_features(sock, trace_addr=f"unix://{collector.path}")
    try:
        client = wait_ready(f"unix://{sock}", proc)  # its Checks carry no trace context
        before = len(collector.wait_for(1))
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        resp = client.call(
            "grpc.Health",
            "Check",
            health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse,
            timeout=5,
            metadata={"traceparent": [traceparent], "tracestate": ["kata=1"]},
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        span = collector.wait_for(before + 1)[-1]
        client.close()
    finally:
        code, err = stop(proc)
        collector.close()
    assert code == 0, err
    assert span["traceId"] == TRACE_ID and span["parentSpanId"] == PARENT_ID
    assert span["name"] == "grpc.Health/Check" and span["kind"] == 2  # SPAN_KIND_SERVER
    assert len(span["spanId"]) == 16 and span["spanId"] != PARENT_ID
    assert span["traceState"] == "kata=1" and span["flags"] & 1
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
    attrs = {a["key"]: a["value"] for a in span["attributes"]}
    assert attrs["rpc.method"] == {"stringValue": "Check"}
    assert attrs["rpc.grpc.status_code"] == {"intValue": "0"}
    resource = {
        a["key"]: a["value"] for a in collector.lines[-1]["resourceSpans"][0]["resource"]["attributes"]
    }
    assert resource["service.name"] == {"stringValue": "kata-agent"}


def test_error_cancel_and_late_collector(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In-process server: failing and expired calls get error spans; spans wait for the collector."""
    from agent import tracing
    from ttrpc.loop import Future, Loop
    from ttrpc.server import Method, Server
    from ttrpc.status import Code, RPCError

    def fail(req, ctx):  # type: ignore[no-untyped-def]
        raise RPCError("no such thing", Code.NOT_FOUND)

    def never(req, ctx):  # type: ignore[no-untyped-def]
        return Future()

    loop = Loop()
    server = Server(loop)
    req_t = health_pb2.CheckRequest
    server.register_service(
        "test.Svc",
        {"Fail": Method(fail, req_t, req_t), "Never": Method(never, req_t, req_t)},
    )
    addr = f"unix://{tmp_path}/srv.sock"
    server.listen(addr)
    closers: list = []
    path = tmp_path / "late.sock"
    tr = tracing.install(
        types.SimpleNamespace(loop=loop, server=server, on_close=closers.append), address=f"unix://{path}"
    )
    assert tr is not None
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = Client(addr, timeout=5)
    collector = None
    try:
        with pytest.raises(RPCError) as err:
            client.call("test.Svc", "Fail", req_t(), req_t, timeout=5)
        assert err.value.code == Code.NOT_FOUND
        with pytest.raises(RPCError) as err:
            client.call("test.Svc", "Never", req_t(), req_t, timeout=0.2)
        assert err.value.code == Code.DEADLINE_EXCEEDED
        time.sleep(0.3)  # both spans ended while nobody listened: they are buffered
        collector = Collector(path)
        spans = {s["name"]: s for s in collector.wait_for(2, timeout=tracing.RETRY_INTERVAL * 10)}
    finally:
        client.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        for closer in closers:
            closer()
        server.close()
        loop.close()
        if collector is not None:
            collector.close()
    failed, expired = spans["test.Svc/Fail"], spans["test.Svc/Never"]
    assert failed["status"] == {"code": 2, "message": "no such thing"}
    assert expired["status"]["code"] == 2
    codes = {
        s["name"]: {a["key"]: a["value"] for a in s["attributes"]}["rpc.grpc.status_code"]
        for s in (failed, expired)
    }
    assert codes == {"test.Svc/Fail": {"intValue": "5"}, "test.Svc/Never": {"intValue": "4"}}
    assert "parentSpanId" not in failed, "no trace context sent: a new trace"
