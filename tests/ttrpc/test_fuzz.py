"""Arbitrary bytes and frame sequences: only protocol answers, no exceptions, bounded state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttrpc.connection import ClientConnection, FrameDecoder, ServerConnection
from ttrpc.frame import HEADER_SIZE, MAX_DATA, encode_frame, encode_header
from ttrpc.protocols import ttrpc_pb2

SMALL_LIMIT = 4096  # a small max_data keeps the examples fast while exercising the skip path

frames = st.builds(
    lambda sid, typ, flags, data: encode_frame(sid, typ, flags, data),
    st.integers(0, 40),
    st.integers(0, 5),
    st.integers(0, 7),
    st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda s, m, p, t: ttrpc_pb2.Request(
                service=s, method=m, payload=p, timeout_nano=t
            ).SerializeToString(),
            st.text(max_size=8),
            st.text(max_size=8),
            st.binary(max_size=16),
            st.integers(-(2**63), 2**63 - 1),
        ),
    ),
)
oversized_headers = st.builds(
    lambda sid, typ, length: encode_header(length, sid, typ, 0),
    st.integers(0, 40),
    st.integers(0, 4),
    st.integers(SMALL_LIMIT + 1, 0xFFFF_FFFF),
)


def check_server(chunks: list[bytes], max_streams: int = 8) -> None:
    conn = ServerConnection(max_streams=max_streams, max_data=SMALL_LIMIT)
    for chunk in chunks:
        conn.receive_data(chunk)
        answers = conn.data_to_send()
        # every automatic answer is a well-formed response frame
        for frame in FrameDecoder().feed(answers):
            assert frame.msg_type == 2
            ttrpc_pb2.Response.FromString(frame.data)
        assert conn.buffered <= HEADER_SIZE + SMALL_LIMIT + len(chunk)
        assert conn.active_streams <= max_streams


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_server_arbitrary_bytes(chunks: list[bytes]) -> None:
    check_server(chunks)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(frames, oversized_headers), max_size=30), st.integers(1, 50))
def test_server_arbitrary_frame_sequences(seq: list[bytes], cut: int) -> None:
    blob = b"".join(seq)
    check_server([blob[i : i + cut] for i in range(0, len(blob), cut)])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(frames, st.binary(max_size=100)), max_size=30))
def test_client_arbitrary_input(seq: list[bytes]) -> None:
    client = ClientConnection(max_data=SMALL_LIMIT)
    for _ in range(5):
        client.send_request("s", "m", b"", server_streaming=True)
    for chunk in seq:
        client.receive_data(chunk)
        assert client._decoder.buffered <= HEADER_SIZE + SMALL_LIMIT + len(chunk)
    assert client.active_streams <= 5


def test_default_limit_is_four_mib() -> None:
    assert ServerConnection()._decoder.max_data == MAX_DATA
