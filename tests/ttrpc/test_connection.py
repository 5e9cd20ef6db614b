"""The sans-IO state machines, byte by byte."""

from __future__ import annotations

from ttrpc.connection import (
    ClientConnection,
    DataReceived,
    FrameDecoder,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    StreamRejected,
)
from ttrpc.frame import (
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    MAX_DATA,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    encode_frame,
    encode_header,
)
from ttrpc.protocols import ttrpc_pb2
from ttrpc.status import Code


def request_frame(
    sid: int, flags: int = 0, service: str = "s", method: str = "m", payload: bytes = b"p"
) -> bytes:
    req = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=5)
    req.metadata.add(key="k", value="v1")
    req.metadata.add(key="k", value="v2")
    return encode_frame(sid, TYPE_REQUEST, flags, req.SerializeToString())


def decode_responses(data: bytes) -> dict[int, ttrpc_pb2.Response]:
    out = {}
    for f in FrameDecoder().feed(data):
        assert f.msg_type == TYPE_RESPONSE
        out[f.stream_id] = ttrpc_pb2.Response.FromString(f.data)
    return out


def test_request_byte_by_byte() -> None:
    conn = ServerConnection()
    raw = request_frame(1)
    events = []
    for i in range(len(raw)):
        events += conn.receive_data(raw[i : i + 1])
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, RequestReceived)
    assert (ev.stream_id, ev.service, ev.method, ev.payload, ev.timeout_nano) == (1, "s", "m", b"p", 5)
    assert ev.metadata == {"k": ["v1", "v2"]}
    assert ev.unary and ev.remote_closed
    assert conn.buffered == 0


def test_even_stream_id_rejected() -> None:
    conn = ServerConnection()
    events = conn.receive_data(request_frame(2))
    assert isinstance(events[0], StreamRejected) and events[0].code == Code.INVALID_ARGUMENT
    resp = decode_responses(conn.data_to_send())[2]
    assert resp.status.code == Code.INVALID_ARGUMENT
    assert "odd" in resp.status.message


def test_stream_ids_must_increase_and_not_be_reused() -> None:
    conn = ServerConnection()
    assert isinstance(conn.receive_data(request_frame(5))[0], RequestReceived)
    for sid in (5, 3):
        ev = conn.receive_data(request_frame(sid))[0]
        assert isinstance(ev, StreamRejected) and ev.code == Code.INVALID_ARGUMENT
        assert "re-used" in ev.message
    # the rejected reuse of 5 must not have torn down the live stream 5
    assert conn.is_active(5)
    assert isinstance(conn.receive_data(request_frame(7))[0], RequestReceived)


def test_undecodable_request_is_invalid_argument() -> None:
    conn = ServerConnection()
    ev = conn.receive_data(encode_frame(1, TYPE_REQUEST, 0, b"\xff\xff\xff"))[0]
    assert isinstance(ev, StreamRejected) and ev.code == Code.INVALID_ARGUMENT
    assert "unmarshal request" in ev.message
    assert decode_responses(conn.data_to_send())[1].status.code == Code.INVALID_ARGUMENT


def test_oversized_frame_is_skipped_and_answered_then_connection_goes_on() -> None:
    conn = ServerConnection()
    big = MAX_DATA + 1
    events = conn.receive_data(encode_header(big, 1, TYPE_REQUEST, 0))
    assert events == []
    sent = 0
    chunk = b"\0" * 65536
    while sent < big:
        n = min(len(chunk), big - sent)
        assert conn.receive_data(chunk[:n]) == [] or sent + n == big
        sent += n
        assert conn.buffered <= 10
    resp = decode_responses(conn.data_to_send())[1]
    assert resp.status.code == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size" in resp.status.message
    assert isinstance(conn.receive_data(request_frame(3))[0], RequestReceived)


def test_data_frames_on_unary_stream_rejected() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1))
    ev = conn.receive_data(encode_frame(1, TYPE_DATA, 0, b"x"))[0]
    assert isinstance(ev, StreamRejected) and ev.reset and ev.code == Code.INVALID_ARGUMENT
    assert not conn.is_active(1)


def test_client_stream_flags() -> None:
    conn = ServerConnection()
    ev = conn.receive_data(request_frame(1, FLAG_REMOTE_OPEN))[0]
    assert isinstance(ev, RequestReceived) and not ev.unary and not ev.remote_closed
    (d1,) = conn.receive_data(encode_frame(1, TYPE_DATA, 0, b"a"))
    assert d1 == DataReceived(1, b"a", False)
    (d2,) = conn.receive_data(encode_frame(1, TYPE_DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA, b""))
    assert d2 == DataReceived(1, None, True)
    # after remote closed, more data is a violation
    ev = conn.receive_data(encode_frame(1, TYPE_DATA, 0, b"late"))[0]
    assert isinstance(ev, StreamRejected)


def test_request_with_remote_closed_is_non_unary_server_stream() -> None:
    conn = ServerConnection()
    ev = conn.receive_data(request_frame(1, FLAG_REMOTE_CLOSED))[0]
    assert isinstance(ev, RequestReceived) and not ev.unary and ev.remote_closed
    out = conn.send_data(1, b"one")
    assert out[8] == TYPE_DATA and out[9] == 0
    final = conn.send_response(1)
    assert decode_responses(final)[1].status.code == 0
    assert conn.send_response(1) == b""  # finished streams answer nothing more


def test_data_on_never_opened_stream_rejected_late_data_ignored() -> None:
    conn = ServerConnection()
    ev = conn.receive_data(encode_frame(9, TYPE_DATA, 0, b"x"))
    assert isinstance(ev[0], StreamRejected)
    conn.receive_data(request_frame(11))
    conn.send_response(11, b"")
    assert conn.receive_data(encode_frame(11, TYPE_DATA, 0, b"x")) == []


def test_stream_limit() -> None:
    conn = ServerConnection(max_streams=2)
    conn.receive_data(request_frame(1) + request_frame(3))
    ev = conn.receive_data(request_frame(5))[0]
    assert isinstance(ev, StreamRejected) and ev.code == Code.RESOURCE_EXHAUSTED
    conn.send_response(1)
    assert isinstance(conn.receive_data(request_frame(7))[0], RequestReceived)


def test_response_frames_from_client_ignored() -> None:
    conn = ServerConnection()
    assert conn.receive_data(encode_frame(1, TYPE_RESPONSE, 0, b"")) == []
    assert conn.receive_data(encode_frame(1, 0x7F, 0, b"")) == []


def test_client_allocates_odd_increasing_ids_and_matches_responses() -> None:
    client = ClientConnection()
    ids = [client.send_request("s", "m", b"")[0] for _ in range(3)]
    assert ids == [1, 3, 5]
    server = ServerConnection()
    # round trip through the server state machine
    sid, raw = client.send_request("svc", "meth", b"body", metadata={"a": ["b"]})
    (ev,) = server.receive_data(raw)
    assert isinstance(ev, RequestReceived) and ev.metadata == {"a": ["b"]}
    reply = server.send_response(sid, b"answer")
    (resp,) = client.receive_data(reply)
    assert resp == ResponseReceived(sid, 0, "", b"answer")
    # a response for a forgotten stream is ignored
    client.forget(1)
    assert client.receive_data(server.send_response(1) or encode_frame(1, TYPE_RESPONSE, 0, b"")) == []


def test_client_refuses_oversized_request() -> None:
    import pytest

    from ttrpc.status import RPCError

    with pytest.raises(RPCError) as err:
        ClientConnection().send_request("s", "m", b"x" * (MAX_DATA + 1))
    assert err.value.code == Code.RESOURCE_EXHAUSTED
