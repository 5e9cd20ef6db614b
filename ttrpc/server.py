"""ttRPC server: the loop's transport around :class:`ServerConnection`.

A handler is called on the loop thread with the decoded request and a
:class:`CallContext`; it returns the response message, or a
:class:`~ttrpc.loop.Future` that completes later (a WaitProcess can block for
minutes without delaying any other call on the same connection).  Raise
:class:`~ttrpc.status.RPCError` for a specific status; any other exception is
answered as UNKNOWN with its text, as the Go reference server does.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError, Message

from ttrpc import address as addresses
from ttrpc.connection import DataReceived, Event, RequestReceived, ServerConnection, StreamRejected
from ttrpc.loop import CancelledError, Future, Loop, TimerHandle
from ttrpc.status import Code, RPCError

READ_SIZE = 256 * 1024
#: Unsent reply bytes above which we stop reading a connection's requests.
DEFAULT_WRITE_LIMIT = 8 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 256
#: Unsent reply bytes across all connections above which clients with a backlog are paused.
DEFAULT_TOTAL_WRITE_LIMIT = 8 * 1024 * 1024
#: A paused connection resumes reading once its own backlog is below this.
RESUME_BELOW = 64 * 1024
#: Messages a streaming handler has not consumed yet, per stream.
STREAM_QUEUE_LIMIT = 256


class Method(NamedTuple):
    """One RPC: ``handler(request, ctx)`` (unary / server-streaming) or ``handler(ctx)``
    (client-streaming / bidirectional, read with ``ctx.recv()``)."""

    handler: Callable[..., Any]
    request_type: type[Message]
    response_type: type[Message] | None = None
    client_streaming: bool = False
    server_streaming: bool = False


#: ``interceptor(ctx, request) -> on_done | None``: called before each handler (request is
#: None for client-streaming calls).  Raising RPCError refuses the call; a returned
#: ``on_done(response, code, message) -> response`` sees (and may replace) the outcome.
Interceptor = Callable[["CallContext", Any], Any]


class CallContext:
    """What a handler knows about its call, and its stream for streaming RPCs."""

    __slots__ = (
        "stream_id",
        "service",
        "method",
        "metadata",
        "deadline",
        "cancelled",
        "_conn",
        "_cancel_callbacks",
        "_rpc",
        "_inbox",
        "_waiter",
        "_remote_closed",
        "_timer",
        "_on_done",
    )

    def __init__(
        self,
        conn: _Connection,
        stream_id: int,
        service: str,
        method: str,
        metadata: dict[str, list[str]],
        deadline: float | None,
        rpc: Method,
        remote_closed: bool,
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.service = service
        self.method = method
        self.metadata = metadata
        self.deadline = deadline
        self.cancelled = False
        self._cancel_callbacks: list[Callable[[], Any]] | None = None
        self._rpc = rpc
        self._inbox: deque[Message | None] = deque()
        self._waiter: Future[Message | None] | None = None
        self._remote_closed = remote_closed
        self._timer: TimerHandle | None = None
        self._on_done: list[Callable[[Any, int, str], Any]] | None = None

    @property
    def loop(self) -> Loop:
        return self._conn.server.loop

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, or None when it has none."""
        return None if self.deadline is None else self.deadline - self.loop.time()

    def on_cancel(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` if the call is abandoned (client gone, deadline passed)."""
        if self.cancelled:
            callback()
        elif self._cancel_callbacks is None:
            self._cancel_callbacks = [callback]
        else:
            self._cancel_callbacks.append(callback)

    def _cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        callbacks, self._cancel_callbacks = self._cancel_callbacks, None
        for callback in callbacks or ():
            callback()

    # -- streaming ------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Send one message on a server-streaming call."""
        if not self._rpc.server_streaming:
            raise RPCError("send() on a call that is not server-streaming", Code.INTERNAL)
        if not self.cancelled:
            self._conn.write(self._conn.proto.send_data(self.stream_id, message.SerializeToString()))

    def recv(self) -> Future[Message | None]:
        """The next client message, or None once the client closed its side."""
        fut: Future[Message | None] = Future()
        if self._inbox:
            fut.set_result(self._inbox.popleft())
        elif self._remote_closed:
            fut.set_result(None)
        elif self.cancelled:
            fut.cancel()
        elif self._waiter is not None and not self._waiter.done():
            raise RPCError("recv() called again before the previous one completed", Code.INTERNAL)
        else:
            self._waiter = fut
        return fut

    def _deliver(self, data: bytes | None, end: bool) -> None:
        items: list[Message | None] = []
        if data is not None:
            msg = self._rpc.request_type()
            try:
                msg.ParseFromString(data)
            except DecodeError as exc:
                self._conn.fail(self, Code.INVALID_ARGUMENT, f"unmarshal stream message error: {exc}")
                return
            items.append(msg)
        if end:
            self._remote_closed = True
        for item in items:
            if self._waiter is not None and not self._waiter.done():
                waiter, self._waiter = self._waiter, None
                waiter.set_result(item)
            elif len(self._inbox) >= STREAM_QUEUE_LIMIT:
                self._conn.fail(self, Code.RESOURCE_EXHAUSTED, "stream receive queue is full")
                return
            else:
                self._inbox.append(item)
        if end and self._waiter is not None and not self._waiter.done():
            waiter, self._waiter = self._waiter, None
            waiter.set_result(None)


class _Connection:
    __slots__ = (
        "server",
        "sock",
        "fd",
        "proto",
        "calls",
        "_outbuf",
        "_reading",
        "closed",
        "last_active",
        "answered",
        "_stash",
    )

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = ServerConnection()
        self.calls: dict[int, CallContext] = {}
        self._outbuf = bytearray()
        self._reading = True
        self.closed = False
        #: When the client last sent bytes, and whether it ever completed a request:
        #: what decides which connection gives way at the connection limit.
        self.last_active = server.loop.time()
        self.answered = False
        #: Events read but not yet handled because the connection was paused mid-batch.
        self._stash: list[Event] = []
        server.loop.add_reader(self.fd, self.on_readable)

    # -- input ----------------------------------------------------------------

    def on_readable(self) -> None:
        if self.closed:
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.last_active = self.server.loop.time()
        events = self.proto.receive_data(data)
        auto = self.proto.data_to_send()
        if auto:
            self.write(auto)
        self._handle(events)

    def _handle(self, events: list[Event]) -> None:
        """Dispatch events in order; if replies back up mid-batch, keep the rest for later.

        One read can carry thousands of small requests: pausing only the next read
        would still let a client that never reads its replies pile them up."""
        for index, event in enumerate(events):
            if not self._reading:
                self._stash = events[index:]
                return
            if isinstance(event, RequestReceived):
                self.server._dispatch(self, event)
            elif isinstance(event, DataReceived):
                ctx = self.calls.get(event.stream_id)
                if ctx is not None:
                    ctx._deliver(event.data, event.end)
            elif isinstance(event, StreamRejected) and event.reset:
                ctx = self.calls.pop(event.stream_id, None)
                if ctx is not None:
                    ctx._cancel()
            if self.closed:
                return

    # -- output ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self._outbuf:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.server.loop.add_writer(self.fd, self._on_writable)
        self._outbuf += data
        server = self.server
        server.outbuf_total += len(data)
        if self._reading and (
            len(self._outbuf) > server.write_limit
            or (server.outbuf_total > server.total_write_limit and len(self._outbuf) > RESUME_BELOW)
        ):
            # The client is not reading its replies: stop taking requests from it.
            self._reading = False
            server.loop.remove_reader(self.fd)
            server._paused.add(self)

    def _on_writable(self) -> None:
        if self.closed:
            return
        try:
            sent = self.sock.send(self._outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self._outbuf[:sent]
        self.server.outbuf_total -= sent
        if not self._outbuf:
            self.server.loop.remove_writer(self.fd)
        self.server._resume_paused()

    def can_resume(self) -> bool:
        """Read again once our backlog is drained and the server-wide budget allows it."""
        own = len(self._outbuf)
        return own == 0 or (
            own <= self.server.write_limit // 2 and self.server.outbuf_total <= self.server.total_write_limit
        )

    def resume(self) -> None:
        self._reading = True
        stash, self._stash = self._stash, []
        if stash:
            self._handle(stash)
        if self._reading and not self.closed:
            self.server.loop.add_reader(self.fd, self.on_readable)

    def respond(self, ctx: CallContext, payload: bytes = b"", code: int = 0, message: str = "") -> None:
        if self.calls.pop(ctx.stream_id, None) is None:
            return  # already answered (deadline) or reset
        if ctx._timer is not None:
            ctx._timer.cancel()
        self.answered = True
        self.write(self.proto.send_response(ctx.stream_id, payload, code, message))

    def fail(self, ctx: CallContext, code: Code, message: str) -> None:
        self.respond(ctx, b"", code, message)
        ctx._cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.server.loop
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        self.server._connections.discard(self)
        self.server._paused.discard(self)
        self.server.outbuf_total -= len(self._outbuf)
        calls, self.calls = self.calls, {}
        for ctx in calls.values():
            ctx._cancel()
        self._outbuf.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server._resume_paused()


class Server:
    """Serves registered services on any number of listeners, on one loop."""

    def __init__(
        self,
        loop: Loop | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        total_write_limit: int = DEFAULT_TOTAL_WRITE_LIMIT,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.loop = loop or Loop()
        self.max_connections = max_connections
        self.write_limit = write_limit
        self.total_write_limit = total_write_limit
        #: Unsent reply bytes across every connection, and the connections paused for it.
        self.outbuf_total = 0
        self._paused: set[_Connection] = set()
        self._services: dict[str, Mapping[str, Method]] = {}
        self.interceptors: list[Interceptor] = []
        self._listeners: list[tuple[socket.socket, addresses.Address]] = []
        self._connections: set[_Connection] = set()
        self._on_error = on_error or _print_error

    def register_service(self, name: str, methods: Mapping[str, Method]) -> None:
        self._services[name] = dict(methods)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def listen(self, address: str) -> socket.socket:
        addr = addresses.parse_address(address)
        sock = addresses.listen(addr)
        self._listeners.append((sock, addr))
        self.loop.add_reader(sock.fileno(), lambda: self._accept(sock))
        return sock

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # bounded: accepting must not starve established calls
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._on_error("accept failed", exc)
                    return
                continue
            if len(self._connections) >= self.max_connections and not self._evict_one():
                sock.close()
                continue
            sock.setblocking(False)
            self._connections.add(_Connection(self, sock))

    def _evict_one(self) -> bool:
        """Make room for a newcomer at the connection limit; False if every connection is busy.

        Idle connections that never completed a request (half-frames, probes) go first,
        oldest activity first; a client with calls in flight is never dropped.  Idle
        half-open connections therefore cannot lock the runtime out.
        """
        idle = [c for c in self._connections if not c.calls]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.answered, c.last_active))
        victim.close()
        return True

    def _resume_paused(self) -> None:
        if not self._paused:
            return
        for conn in list(self._paused):
            if conn.closed:
                self._paused.discard(conn)
            elif conn.can_resume():
                self._paused.discard(conn)
                conn.resume()

    # -- dispatch -------------------------------------------------------------

    def _dispatch(self, conn: _Connection, ev: RequestReceived) -> None:
        loop = self.loop
        sid = ev.stream_id
        methods = self._services.get(ev.service)
        rpc = None if methods is None else methods.get(ev.method)
        if rpc is None:
            what = f"service {ev.service}" if methods is None else f"method {ev.method}"
            conn.write(conn.proto.send_response(sid, b"", Code.UNIMPLEMENTED, what))
            return
        deadline = loop.time() + ev.timeout_nano / 1e9 if ev.timeout_nano > 0 else None
        ctx = CallContext(conn, sid, ev.service, ev.method, ev.metadata, deadline, rpc, ev.remote_closed)
        conn.calls[sid] = ctx
        if deadline is not None:
            ctx._timer = loop.call_later(ev.timeout_nano / 1e9, self._expire, conn, ctx)
        try:
            request = None
            if not rpc.client_streaming:
                request = rpc.request_type()
                try:
                    request.ParseFromString(ev.payload)
                except DecodeError as exc:
                    conn.fail(ctx, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
                    return
            for interceptor in self.interceptors:
                on_done = interceptor(ctx, request)
                if on_done is not None:
                    if ctx._on_done is None:
                        ctx._on_done = []
                    ctx._on_done.append(on_done)
            result = rpc.handler(ctx) if rpc.client_streaming else rpc.handler(request, ctx)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            self._answer_error(conn, ctx, exc)
            return
        if isinstance(result, Future):
            result.add_done_callback(lambda fut: self._finish(conn, ctx, fut))
        else:
            self._answer(conn, ctx, result)

    def _finish(self, conn: _Connection, ctx: CallContext, fut: Future[Any]) -> None:
        if fut.cancelled():
            if not ctx.cancelled:
                conn.fail(ctx, Code.CANCELLED, "call cancelled")
            return
        exc = fut.exception()
        if exc is not None:
            self._answer_error(conn, ctx, exc)
        else:
            self._answer(conn, ctx, fut.result())

    def _answer(self, conn: _Connection, ctx: CallContext, result: Message | None) -> None:
        if ctx.cancelled or conn.closed:
            return
        if ctx._on_done:
            try:
                for on_done in ctx._on_done:
                    result = on_done(result, 0, "")
            except Exception as exc:  # noqa: BLE001 - an interceptor may veto the reply
                ctx._on_done = None
                self._answer_error(conn, ctx, exc)
                return
        payload = b"" if result is None else result.SerializeToString()
        conn.respond(ctx, payload)

    def _answer_error(self, conn: _Connection, ctx: CallContext, exc: BaseException) -> None:
        if isinstance(exc, RPCError):
            code, message = int(exc.code), exc.message
        elif isinstance(exc, CancelledError):
            code, message = Code.CANCELLED, "call cancelled"
        else:
            code, message = Code.UNKNOWN, str(exc) or type(exc).__name__
            self._on_error(f"handler {ctx.service}/{ctx.method} raised", exc)
        for on_done in ctx._on_done or ():
            try:
                on_done(None, code, message)
            except Exception as hook_exc:  # noqa: BLE001 - the error answer goes out regardless
                self._on_error("interceptor failed", hook_exc)
        conn.respond(ctx, b"", code, message)
        ctx._cancel()

    def _expire(self, conn: _Connection, ctx: CallContext) -> None:
        ctx._timer = None
        if conn.calls.get(ctx.stream_id) is ctx:
            conn.fail(ctx, Code.DEADLINE_EXCEEDED, "context deadline exceeded")

    # -- lifecycle ------------------------------------------------------------

    def serve_forever(self) -> None:
        self.loop.run_forever()

    def shutdown(self) -> None:
        """Stop the loop (callable from a signal handler on the loop)."""
        self.loop.stop()

    def close(self) -> None:
        """Close listeners (removing socket files) and every connection."""
        for sock, addr in self._listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
            if addr.path is not None:
                try:
                    import os

                    os.unlink(addr.path)
                except FileNotFoundError:
                    pass
        self._listeners.clear()
        for conn in list(self._connections):
            conn.close()


def _print_error(what: str, exc: BaseException) -> None:
    print(f"ttrpc server: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
