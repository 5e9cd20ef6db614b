"""Sans-IO ttRPC: bytes in -> events, calls -> bytes (no sockets here).

:class:`ServerConnection` and :class:`ClientConnection` own the protocol's
rules -- frame limits, stream ids (client streams odd, strictly increasing,
never reused), per-stream open/closed state and the request/data flags -- so
every rule can be tested byte by byte, as h11 does for HTTP.  The transport
above them only moves bytes and runs handlers.

Protocol violations by the peer never raise: the server answers them on the
offending stream with the status the Go reference server uses, queued for
:meth:`ServerConnection.data_to_send`, and the connection goes on.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from ttrpc.frame import (
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    HEADER_SIZE,
    MAX_DATA,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    decode_header,
    encode_frame,
)
from ttrpc.protocols import ttrpc_pb2
from ttrpc.status import Code, RPCError

#: Stream ids are u32; the client may not wrap around.
MAX_STREAM_ID = 0xFFFF_FFFF
#: Concurrent streams a server accepts on one connection before refusing more.
DEFAULT_MAX_STREAMS = 1024


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the connection (client side)."""


# --------------------------------------------------------------------- frames


class Frame(NamedTuple):
    stream_id: int
    msg_type: int
    flags: int
    data: bytes


class OversizedFrame(NamedTuple):
    """A frame whose data exceeded the limit; its data was read and dropped."""

    stream_id: int
    msg_type: int
    flags: int
    length: int


class FrameDecoder:
    """Incremental frame parser holding at most one frame's worth of bytes.

    An over-long frame is not buffered: its data is skipped as it arrives and
    reported once fully consumed, so the stream stays in sync.
    """

    __slots__ = ("_buf", "_skip", "_oversized", "max_data")

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self._buf = bytearray()
        self._skip = 0
        self._oversized: OversizedFrame | None = None
        self.max_data = max_data

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (bounded by header + max_data + one read)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        buf = self._buf
        buf += data
        out: list[Frame | OversizedFrame] = []
        pos, end = 0, len(buf)
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    break
                out.append(self._oversized)  # type: ignore[arg-type]
                self._oversized = None
                continue
            if end - pos < HEADER_SIZE:
                break
            length, stream_id, msg_type, flags = decode_header(buf, pos)
            if length > self.max_data:
                pos += HEADER_SIZE
                self._oversized = OversizedFrame(stream_id, msg_type, flags, length)
                self._skip = length
                continue
            start = pos + HEADER_SIZE
            if end - start < length:
                break
            out.append(Frame(stream_id, msg_type, flags, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out


# --------------------------------------------------------------------- events


class RequestReceived(NamedTuple):
    """A new stream opened by the client (``unary``: no data frames follow)."""

    stream_id: int
    service: str
    method: str
    payload: bytes
    timeout_nano: int
    metadata: dict[str, list[str]]
    unary: bool
    remote_closed: bool


class DataReceived(NamedTuple):
    """Stream data; ``data`` is None for a flags-only frame; ``end`` closes the sender's side."""

    stream_id: int
    data: bytes | None
    end: bool


class StreamRejected(NamedTuple):
    """The server refused a frame and already queued the error answer for it.

    ``reset`` says an active stream was torn down, so its handler's answer
    will be dropped and the handler should be cancelled.
    """

    stream_id: int
    code: Code
    message: str
    reset: bool = False


class ResponseReceived(NamedTuple):
    stream_id: int
    code: int
    message: str
    payload: bytes


Event = RequestReceived | DataReceived | StreamRejected | ResponseReceived


class _StreamState:
    __slots__ = ("unary", "remote_closed", "local_closed")

    def __init__(self, unary: bool, remote_closed: bool) -> None:
        self.unary = unary
        self.remote_closed = remote_closed
        self.local_closed = False


def _metadata_to_dict(pairs: list[ttrpc_pb2.KeyValue]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kv in pairs:
        out.setdefault(kv.key, []).append(kv.value)
    return out


def encode_response(stream_id: int, code: int = 0, message: str = "", payload: bytes = b"") -> bytes:
    """One response frame; a payload over the limit becomes RESOURCE_EXHAUSTED."""
    resp = ttrpc_pb2.Response(payload=payload)
    if code:
        resp.status.code = code
        resp.status.message = message
    data = resp.SerializeToString()
    if len(data) > MAX_DATA:
        return encode_response(
            stream_id,
            Code.RESOURCE_EXHAUSTED,
            f"response message length {len(data)} exceed maximum message size of {MAX_DATA}",
        )
    return encode_frame(stream_id, TYPE_RESPONSE, 0, data)


def _data_frame(
    state: _StreamState | _ClientStream, stream_id: int, payload: bytes | None, end: bool, limit: int
) -> bytes:
    """A data frame; ``end`` closes our side, a None payload is a flags-only frame."""
    if payload is not None and len(payload) > limit:
        raise RPCError(f"data message length {len(payload)} exceeds {limit}", Code.RESOURCE_EXHAUSTED)
    flags = 0
    if end:
        flags |= FLAG_REMOTE_CLOSED
        state.local_closed = True
    if payload is None:
        flags |= FLAG_NO_DATA
    return encode_frame(stream_id, TYPE_DATA, flags, payload or b"")


# --------------------------------------------------------------------- server


class ServerConnection:
    """The server side of one connection."""

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, max_data: int = MAX_DATA) -> None:
        self._decoder = FrameDecoder(max_data)
        self._streams: dict[int, _StreamState] = {}
        self._last_stream_id = 0
        self._outbox: list[bytes] = []
        self.max_streams = max_streams

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def is_active(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def data_to_send(self) -> bytes:
        """Answers the connection generated by itself (protocol errors), drained."""
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            if isinstance(frame, OversizedFrame):
                self._on_oversized(frame, events)
            elif frame.msg_type == TYPE_REQUEST:
                self._on_request(frame, events)
            elif frame.msg_type == TYPE_DATA:
                self._on_data(frame, events)
            # Responses and unknown types from a client are ignored, as the
            # Go server does: they carry nothing a server can act on.
        return events

    def _reject(
        self, events: list[Event], stream_id: int, code: Code, message: str, *, reset: bool = True
    ) -> None:
        """Answer ``stream_id`` with an error; ``reset`` also tears down a live stream of that id.

        Stream-id violations pass reset=False: a reused id must not kill the
        legitimate call that owns it.
        """
        reset = reset and self._streams.pop(stream_id, None) is not None
        self._outbox.append(encode_response(stream_id, code, message))
        events.append(StreamRejected(stream_id, code, message, reset))

    def _open_stream_id(self, stream_id: int, events: list[Event]) -> bool:
        """Apply the stream-id rules to a new stream; False when it was rejected."""
        if stream_id % 2 == 0:
            self._reject(
                events,
                stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams",
                reset=False,
            )
            return False
        if stream_id <= self._last_stream_id:
            self._reject(
                events,
                stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID cannot be re-used and must increment",
                reset=False,
            )
            return False
        self._last_stream_id = stream_id
        if len(self._streams) >= self.max_streams:
            self._reject(
                events,
                stream_id,
                Code.RESOURCE_EXHAUSTED,
                f"too many concurrent streams on this connection (limit {self.max_streams})",
            )
            return False
        return True

    def _on_request(self, frame: Frame, events: list[Event]) -> None:
        if not self._open_stream_id(frame.stream_id, events):
            return
        req = ttrpc_pb2.Request()
        try:
            req.ParseFromString(frame.data)
        except DecodeError as exc:
            self._reject(events, frame.stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        remote_open = bool(frame.flags & FLAG_REMOTE_OPEN)
        unary = not (frame.flags & (FLAG_REMOTE_OPEN | FLAG_REMOTE_CLOSED))
        self._streams[frame.stream_id] = _StreamState(unary=unary, remote_closed=not remote_open)
        events.append(
            RequestReceived(
                frame.stream_id,
                req.service,
                req.method,
                req.payload,
                req.timeout_nano,
                _metadata_to_dict(req.metadata),
                unary,
                not remote_open,
            )
        )

    def _on_data(self, frame: Frame, events: list[Event]) -> None:
        state = self._streams.get(frame.stream_id)
        if state is None:
            if frame.stream_id > self._last_stream_id or frame.stream_id % 2 == 0:
                self._reject(
                    events, frame.stream_id, Code.INVALID_ARGUMENT, "data frame on a stream never opened"
                )
            # Late data for a finished stream (e.g. after its deadline) is dropped.
            return
        if state.unary:
            self._reject(events, frame.stream_id, Code.INVALID_ARGUMENT, "data frame on a unary stream")
            return
        if state.remote_closed:
            self._reject(events, frame.stream_id, Code.INVALID_ARGUMENT, "data frame after remote closed")
            return
        end = bool(frame.flags & FLAG_REMOTE_CLOSED)
        if end:
            state.remote_closed = True
        data = None if frame.flags & FLAG_NO_DATA else frame.data
        events.append(DataReceived(frame.stream_id, data, end))

    def _on_oversized(self, frame: OversizedFrame, events: list[Event]) -> None:
        message = f"message length {frame.length} exceed maximum message size of {self._decoder.max_data}"
        sid = frame.stream_id
        if frame.msg_type == TYPE_REQUEST:
            if self._open_stream_id(sid, events):
                self._reject(events, sid, Code.RESOURCE_EXHAUSTED, message)
        elif frame.msg_type == TYPE_DATA and sid in self._streams:
            self._reject(events, sid, Code.RESOURCE_EXHAUSTED, message)

    # -- sending ------------------------------------------------------------

    def send_response(self, stream_id: int, payload: bytes = b"", code: int = 0, message: str = "") -> bytes:
        """Finish a stream with its response; b"" if the stream is already gone."""
        if self._streams.pop(stream_id, None) is None:
            return b""
        return encode_response(stream_id, code, message, payload)

    def send_data(self, stream_id: int, payload: bytes | None, end: bool = False) -> bytes:
        """Stream data from the server (only on non-unary streams)."""
        state = self._streams.get(stream_id)
        if state is None:
            return b""
        if state.unary or state.local_closed:
            raise RPCError("cannot send data on a unary or locally closed stream", Code.FAILED_PRECONDITION)
        return _data_frame(state, stream_id, payload, end, MAX_DATA)

    def reset(self, stream_id: int) -> None:
        """Forget a stream without answering (its client is gone)."""
        self._streams.pop(stream_id, None)


# --------------------------------------------------------------------- client


class _ClientStream:
    __slots__ = ("unary", "local_closed", "remote_closed")

    def __init__(self, unary: bool, local_closed: bool) -> None:
        self.unary = unary
        self.local_closed = local_closed
        self.remote_closed = False


class ClientConnection:
    """The client side of one connection: allocates odd, increasing stream ids."""

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self.max_data = max_data
        self._next_id = 1
        self._streams: dict[int, _ClientStream] = {}
        self._decoder = FrameDecoder(max_data)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def send_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int = 0,
        metadata: dict[str, list[str]] | None = None,
        *,
        client_streaming: bool = False,
        server_streaming: bool = False,
    ) -> tuple[int, bytes]:
        """Open a stream: returns its id and the request frame."""
        req = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
        for key, values in (metadata or {}).items():
            for value in values:
                req.metadata.add(key=key, value=value)
        data = req.SerializeToString()
        if len(data) > self.max_data:
            raise RPCError(
                f"message length {len(data)} exceed maximum message size of {self.max_data}",
                Code.RESOURCE_EXHAUSTED,
            )
        if self._next_id > MAX_STREAM_ID:
            raise RPCError("stream ids exhausted on this connection", Code.RESOURCE_EXHAUSTED)
        stream_id = self._next_id
        self._next_id += 2
        if client_streaming:
            flags = FLAG_REMOTE_OPEN
        elif server_streaming:
            flags = FLAG_REMOTE_CLOSED
        else:
            flags = 0
        unary = not (client_streaming or server_streaming)
        self._streams[stream_id] = _ClientStream(unary=unary, local_closed=not client_streaming)
        return stream_id, encode_frame(stream_id, TYPE_REQUEST, flags, data)

    def send_data(self, stream_id: int, payload: bytes | None, end: bool = False) -> bytes:
        state = self._streams.get(stream_id)
        if state is None or state.local_closed:
            raise RPCError("stream is closed for sending", Code.FAILED_PRECONDITION)
        return _data_frame(state, stream_id, payload, end, self.max_data)

    def forget(self, stream_id: int) -> None:
        """Stop tracking a stream (the caller gave up on it, e.g. deadline)."""
        self._streams.pop(stream_id, None)

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            if isinstance(frame, OversizedFrame):
                if frame.stream_id in self._streams:
                    self._streams.pop(frame.stream_id)
                    events.append(
                        ResponseReceived(
                            frame.stream_id,
                            Code.RESOURCE_EXHAUSTED,
                            f"message length {frame.length} exceed maximum message size of {self.max_data}",
                            b"",
                        )
                    )
                continue
            state = self._streams.get(frame.stream_id)
            if state is None:
                continue  # an answer to a call we gave up on
            if frame.msg_type == TYPE_RESPONSE:
                del self._streams[frame.stream_id]
                resp = ttrpc_pb2.Response()
                try:
                    resp.ParseFromString(frame.data)
                except DecodeError as exc:
                    events.append(
                        ResponseReceived(frame.stream_id, Code.INTERNAL, f"undecodable response: {exc}", b"")
                    )
                    continue
                events.append(
                    ResponseReceived(frame.stream_id, resp.status.code, resp.status.message, resp.payload)
                )
            elif frame.msg_type == TYPE_DATA:
                if state.unary or state.remote_closed:
                    continue  # the server broke the protocol; ignore the frame
                end = bool(frame.flags & FLAG_REMOTE_CLOSED)
                if end:
                    state.remote_closed = True
                data_ = None if frame.flags & FLAG_NO_DATA else frame.data
                events.append(DataReceived(frame.stream_id, data_, end))
                if end and state.local_closed:
                    del self._streams[frame.stream_id]
        return events
