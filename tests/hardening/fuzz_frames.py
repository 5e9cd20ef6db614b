"""atheris fuzzer for the frame decoder and the sans-IO connection state machines.

In-process and coverage-guided (ttrpc is instrumented).  An input is a byte
stream cut into chunks at fuzzer-chosen points and fed to a ServerConnection
(or, when the first byte is odd, a ClientConnection with calls open).  Checked
after every chunk:

- the server's automatic answers are whole, well-formed Response frames;
- the decoder holds at most one frame's worth of bytes (header + limit + chunk);
- open streams stay within the limit, and every request event has a fresh,
  odd, increasing stream id;
- nothing raises.

    python -m tests.hardening.fuzz_frames [libFuzzer flags...] CORPUS_DIR [SEED_DIRS...]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["ttrpc"]):
    from ttrpc.connection import ClientConnection, FrameDecoder, RequestReceived, ServerConnection
    from ttrpc.frame import HEADER_SIZE, TYPE_RESPONSE
    from ttrpc.protocols import ttrpc_pb2

LIMIT = 4096  # a small frame limit reaches the skip path with small inputs
MAX_STREAMS = 8


def _chunks(data: bytes) -> list[bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntInRange(0, 255) for _ in range(fdp.ConsumeIntInRange(0, 6)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    out, last = [], 0
    for cut in cuts:
        cut = cut * len(stream) // 255
        out.append(stream[last:cut])
        last = cut
    out.append(stream[last:])
    return out


def check_server(chunks: list[bytes]) -> None:
    conn = ServerConnection(max_streams=MAX_STREAMS, max_data=LIMIT)
    last_id = 0
    for chunk in chunks:
        events = conn.receive_data(chunk)
        for ev in events:
            if isinstance(ev, RequestReceived):
                assert ev.stream_id % 2 == 1 and ev.stream_id > last_id, (
                    f"stream id {ev.stream_id} after {last_id}"
                )
                last_id = ev.stream_id
        answers = conn.data_to_send()
        decoder = FrameDecoder()
        for frame in decoder.feed(answers):
            assert frame.msg_type == TYPE_RESPONSE, f"answer of type {frame.msg_type}"
            ttrpc_pb2.Response.FromString(frame.data)
        assert decoder.buffered == 0, "a partial answer frame"
        assert conn.buffered <= HEADER_SIZE + LIMIT + len(chunk), f"decoder holds {conn.buffered} bytes"
        assert conn.active_streams <= MAX_STREAMS


def check_client(chunks: list[bytes]) -> None:
    client = ClientConnection(max_data=LIMIT)
    for _ in range(4):
        client.send_request("s", "m", b"", server_streaming=True)
    client.send_request("s", "m", b"")
    for chunk in chunks:
        client.receive_data(chunk)
        assert client._decoder.buffered <= HEADER_SIZE + LIMIT + len(chunk)
    assert client.active_streams <= 5


def one_input(data: bytes) -> None:
    if data[:1] and data[0] & 1 and len(data) > 1 and data[1] == 0xC1:
        check_client(_chunks(data[2:]))
    else:
        check_server(_chunks(data))


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
