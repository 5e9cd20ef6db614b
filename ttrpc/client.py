"""A blocking, thread-safe ttRPC client that multiplexes calls on one connection.

Any number of threads may call at once, as with the Go client: each call gets
its own stream and waits for its own response while a reader thread feeds
the sans-IO :class:`ClientConnection`.  Used by ``kata-agent-ctl``, the tests
and the benchmarks; the agent itself never makes calls.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from ttrpc.address import connect, parse_address
from ttrpc.connection import ClientConnection, DataReceived, ResponseReceived
from ttrpc.status import Code, RPCError

M = TypeVar("M", bound=Message)
READ_SIZE = 256 * 1024


class _Pending:
    """One stream's inbox: data frames, then the final status."""

    __slots__ = ("cond", "data", "done", "code", "message", "payload", "data_closed")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.data: deque[bytes | None] = deque()
        self.done = False
        self.data_closed = False
        self.code = 0
        self.message = ""
        self.payload = b""

    def finish(self, code: int, message: str, payload: bytes) -> None:
        with self.cond:
            if self.done:
                return
            self.done = True
            self.code, self.message, self.payload = code, message, payload
            self.cond.notify_all()

    def push(self, data: bytes | None, end: bool) -> None:
        with self.cond:
            if data is not None:
                self.data.append(data)
            if end:
                self.data_closed = True
                # A server may end a stream with Data[remote closed] and no
                # response: that is a successful finish.
                self.done = True
            self.cond.notify_all()


def _decode(response_type: type[M], payload: bytes) -> M:
    msg = response_type()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise RPCError(f"cannot decode {response_type.__name__}: {exc}", Code.INTERNAL) from None
    return msg


class Client:
    def __init__(self, address: str, timeout: float | None = 5.0) -> None:
        self.address = address
        self._sock = connect(parse_address(address), timeout)
        self._proto = ClientConnection()
        # _lock guards protocol state and is held only briefly; _send_lock
        # orders whole writes (stream ids must reach the server in increasing
        # order) and may block in sendall.  The reader thread needs only
        # _lock, so a server pausing our writes can never stall its replies.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._error: RPCError | None = None
        self._reader = threading.Thread(target=self._read_loop, name="ttrpc-client", daemon=True)
        self._reader.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------

    def _open(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout: float | None,
        metadata: dict[str, list[str]] | None,
        client_streaming: bool = False,
        server_streaming: bool = False,
    ) -> tuple[int, _Pending]:
        timeout_nano = int(timeout * 1e9) if timeout else 0
        pending = _Pending()
        with self._send_lock:
            with self._lock:
                if self._error is not None:
                    raise self._error
                sid, frame = self._proto.send_request(
                    service,
                    method,
                    payload,
                    timeout_nano,
                    metadata,
                    client_streaming=client_streaming,
                    server_streaming=server_streaming,
                )
                self._pending[sid] = pending
            self._sendall(frame)
        return sid, pending

    def _sendall(self, frame: bytes) -> None:
        """Write one frame (the send lock is held, the state lock is not)."""
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            error = RPCError(f"connection lost: {exc}", Code.UNAVAILABLE)
            self._fail_all(error)
            raise error from None

    def _wait(self, sid: int, pending: _Pending, timeout: float | None) -> None:
        with pending.cond:
            if not pending.cond.wait_for(lambda: pending.done, timeout):
                self._abandon(sid)
                raise RPCError("context deadline exceeded", Code.DEADLINE_EXCEEDED)
        if pending.code:
            raise RPCError(pending.message, pending.code)

    def _abandon(self, sid: int) -> None:
        with self._lock:
            self._pending.pop(sid, None)
            self._proto.forget(sid)

    def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: dict[str, list[str]] | None = None,
    ) -> M:
        """One unary call; raises RPCError with the server's code and message."""
        sid, pending = self._open(service, method, request.SerializeToString(), timeout, metadata)
        self._wait(sid, pending, timeout)
        return _decode(response_type, pending.payload)

    def stream(
        self,
        service: str,
        method: str,
        request: Message | None = None,
        *,
        client_streaming: bool,
        server_streaming: bool,
        timeout: float | None = None,
        metadata: dict[str, list[str]] | None = None,
    ) -> ClientStream:
        """Open a streaming call; ``request`` is the first message for server-streaming calls."""
        payload = b"" if request is None else request.SerializeToString()
        sid, pending = self._open(
            service, method, payload, timeout, metadata, client_streaming, server_streaming
        )
        return ClientStream(self, sid, pending, timeout)

    # -- reading --------------------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(READ_SIZE)
            except OSError as exc:
                self._fail_all(RPCError(f"connection lost: {exc}", Code.UNAVAILABLE))
                return
            if not data:
                self._fail_all(RPCError("connection closed by the server", Code.UNAVAILABLE))
                return
            with self._lock:
                events = self._proto.receive_data(data)
                targets = []
                for ev in events:
                    if isinstance(ev, ResponseReceived):
                        targets.append((self._pending.pop(ev.stream_id, None), ev))
                    elif isinstance(ev, DataReceived):
                        targets.append((self._pending.get(ev.stream_id), ev))
            for pending, ev in targets:
                if pending is None:
                    continue
                if isinstance(ev, ResponseReceived):
                    pending.finish(ev.code, ev.message, ev.payload)
                else:
                    pending.push(ev.data, ev.end)

    def _fail_all(self, error: RPCError) -> None:
        with self._lock:
            self._fail_locked(error)

    def _fail_locked(self, error: RPCError) -> None:
        """Fail every waiting call (the client lock is held; pending locks are separate)."""
        if self._error is None:
            self._error = error
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.finish(error.code, error.message, b"")

    def close(self) -> None:
        self._fail_all(RPCError("client closed", Code.CANCELLED))
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=2)


class ClientStream:
    """A streaming call: ``send``/``close_send`` client messages, ``recv`` server ones."""

    def __init__(self, client: Client, stream_id: int, pending: _Pending, timeout: float | None) -> None:
        self._client = client
        self.stream_id = stream_id
        self._pending = pending
        self._timeout = timeout

    def send(self, message: Message) -> None:
        self._send(message.SerializeToString(), end=False)

    def close_send(self) -> None:
        """Tell the server no more messages follow (a flags-only data frame)."""
        self._send(None, end=True)

    def _send(self, payload: bytes | None, end: bool) -> None:
        client = self._client
        with client._send_lock:
            with client._lock:
                if client._error is not None:
                    raise client._error
                frame = client._proto.send_data(self.stream_id, payload, end)
            client._sendall(frame)

    def recv(self, response_type: type[M], timeout: float | None = None) -> M | None:
        """The next server message; None when the stream ended (errors raise)."""
        pending = self._pending
        wait = self._timeout if timeout is None else timeout
        with pending.cond:
            ok = pending.cond.wait_for(lambda: pending.data or pending.done, wait)
            if not ok:
                raise RPCError("timed out waiting for stream data", Code.DEADLINE_EXCEEDED)
            if pending.data:
                data = pending.data.popleft()
                return None if data is None else _decode(response_type, data)
        if pending.code:
            raise RPCError(pending.message, pending.code)
        return None

    def finish(self, response_type: type[M] | None = None, timeout: float | None = None) -> M | None:
        """Wait for the final response (the result of a client-streaming call)."""
        self._client._wait(self.stream_id, self._pending, self._timeout if timeout is None else timeout)
        if response_type is None:
            return None
        return _decode(response_type, self._pending.payload)
