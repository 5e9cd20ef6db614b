"""A ttRPC test service served from a background thread, and raw-socket helpers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.protocols.health_pb2 import CheckRequest
from ttrpc.connection import ClientConnection, ResponseReceived
from ttrpc.frame import encode_frame
from ttrpc.loop import Future, Loop
from ttrpc.protocols import ttrpc_pb2
from ttrpc.server import CallContext, Method, Server
from ttrpc.status import Code, RPCError

SERVICE = "test.Peer"


class Recorder:
    """What the handlers saw, for assertions from the test thread."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.lock = threading.Lock()

    def note_cancel(self, what: str) -> None:
        with self.lock:
            self.cancelled.append(what)


def build_methods(loop: Loop, rec: Recorder) -> dict[str, Method]:
    def echo(req: CheckRequest, ctx: CallContext) -> CheckRequest:
        return CheckRequest(service=req.service)

    def fail(req: CheckRequest, ctx: CallContext) -> CheckRequest:
        code, _, message = req.service.partition(":")
        raise RPCError(message, int(code))

    def boom(req: CheckRequest, ctx: CallContext) -> CheckRequest:
        raise ValueError("handler blew up")

    def meta(req: CheckRequest, ctx: CallContext) -> CheckRequest:
        return CheckRequest(service=json.dumps({"metadata": ctx.metadata, "remaining": ctx.time_remaining()}))

    def slow(req: CheckRequest, ctx: CallContext) -> Future[CheckRequest]:
        fut: Future[CheckRequest] = Future()
        timer = loop.call_later(
            float(req.service or "0.2"), fut.set_result, CheckRequest(service="slow done")
        )
        ctx.on_cancel(lambda: (timer.cancel(), rec.note_cancel(f"slow:{ctx.stream_id}")))
        return fut

    def blocking(req: CheckRequest, ctx: CallContext) -> Future[CheckRequest]:
        def work() -> CheckRequest:
            time.sleep(float(req.service or "0.1"))
            return CheckRequest(service=f"slept in {threading.current_thread().name}")

        return loop.run_in_thread(work)

    def collect(ctx: CallContext) -> Future[CheckRequest]:
        """Client streaming: concatenate every message."""
        parts: list[str] = []
        done: Future[CheckRequest] = Future()

        def next_message(fut: Future[CheckRequest | None]) -> None:
            if fut.cancelled():
                done.cancel()
                return
            msg = fut.result()
            if msg is None:
                done.set_result(CheckRequest(service="".join(parts)))
            else:
                parts.append(msg.service)
                ctx.recv().add_done_callback(next_message)

        ctx.recv().add_done_callback(next_message)
        return done

    def count(req: CheckRequest, ctx: CallContext) -> None:
        """Server streaming: send 0..n-1."""
        for i in range(int(req.service)):
            ctx.send(CheckRequest(service=str(i)))
        return None

    def chat(ctx: CallContext) -> Future[None]:
        """Bidirectional: echo each message upper-cased, then finish."""
        done: Future[None] = Future()

        def next_message(fut: Future[CheckRequest | None]) -> None:
            if fut.cancelled():
                done.cancel()
                return
            msg = fut.result()
            if msg is None:
                done.set_result(None)
                return
            ctx.send(CheckRequest(service=msg.service.upper()))
            ctx.recv().add_done_callback(next_message)

        ctx.recv().add_done_callback(next_message)
        return done

    return {
        "Echo": Method(echo, CheckRequest, CheckRequest),
        "Fail": Method(fail, CheckRequest, CheckRequest),
        "Boom": Method(boom, CheckRequest, CheckRequest),
        "Meta": Method(meta, CheckRequest, CheckRequest),
        "Slow": Method(slow, CheckRequest, CheckRequest),
        "Blocking": Method(blocking, CheckRequest, CheckRequest),
        "Collect": Method(collect, CheckRequest, CheckRequest, client_streaming=True),
        "Count": Method(count, CheckRequest, CheckRequest, server_streaming=True),
        "Chat": Method(chat, CheckRequest, CheckRequest, client_streaming=True, server_streaming=True),
    }


class PeerServer:
    def __init__(self, address: str, **server_kwargs: object) -> None:
        self.loop = Loop()
        self.recorder = Recorder()
        self.server = Server(self.loop, **server_kwargs)  # type: ignore[arg-type]
        self.server.register_service(SERVICE, build_methods(self.loop, self.recorder))
        self.server.listen(address)
        self.address = address
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> PeerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.shutdown)
        self._thread.join(timeout=5)
        self.server.close()
        self.loop.close()

    def on_loop(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run fn on the loop thread and return its result (for inspecting state)."""
        box: list[object] = []
        event = threading.Event()

        def run() -> None:
            box.append(fn(*args))
            event.set()

        self.loop.call_soon_threadsafe(run)
        assert event.wait(5), "loop did not run the callback"
        return box[0]


@contextmanager
def serving(address: str, **kwargs: object) -> Iterator[PeerServer]:
    peer = PeerServer(address, **kwargs).start()
    try:
        yield peer
    finally:
        peer.stop()


def raw_request(stream_id: int, service: str, method: str, payload: bytes = b"", flags: int = 0) -> bytes:
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload)
    return encode_frame(stream_id, 1, flags, req.SerializeToString())


class RawPeer:
    """A client that writes arbitrary bytes and decodes whatever comes back."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.proto = ClientConnection()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def responses(self, stream_ids: list[int]) -> dict[int, ResponseReceived]:
        """Wait for a response on each stream id (registered as if we had opened them)."""
        from ttrpc.connection import _ClientStream

        for sid in stream_ids:
            self.proto._streams[sid] = _ClientStream(unary=True, local_closed=True)
        got: dict[int, ResponseReceived] = {}
        while len(got) < len(stream_ids):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for ev in self.proto.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    got[ev.stream_id] = ev
        return got

    def close(self) -> None:
        self.sock.close()


def status_name(code: int) -> str:
    return Code(code).name
