"""The worker channel codec, byte by byte, with no process or socket."""

from __future__ import annotations

import json
import struct

import pytest

from agent import errors
from agent.network.protocol import (
    MAX_MESSAGE,
    ClientCodec,
    MessageDecoder,
    ProtocolError,
    encode_error,
    encode_message,
    encode_result,
    error_from_wire,
    error_to_wire,
)
from ttrpc.status import Code


def test_frame_is_length_prefixed_json() -> None:
    data = encode_message({"id": 1, "op": "x"})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"id": 1, "op": "x"}


def test_decoder_handles_arbitrary_splits() -> None:
    stream = b"".join(encode_message({"id": i, "v": "é" * i}) for i in range(1, 6))
    for step in (1, 2, 3, 7, len(stream)):
        dec = MessageDecoder()
        out = []
        for pos in range(0, len(stream), step):
            out += dec.feed(stream[pos : pos + step])
        assert [m["id"] for m in out] == [1, 2, 3, 4, 5]
        assert dec.buffered == 0


def test_decoder_rejects_oversized_and_garbage() -> None:
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(struct.pack(">I", MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(struct.pack(">I", 3) + b"{{{")
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(struct.pack(">I", 2) + b"[]")


def test_client_codec_tracks_ids_and_idle_deadline() -> None:
    codec = ClientCodec()
    id1, req1 = codec.encode_request("list_routes")
    id2, _ = codec.encode_request("update_routes", {"routes": []})
    assert id2 == id1 + 1 and codec.pending == {id1, id2}
    assert json.loads(req1[4:]) == {"id": id1, "op": "list_routes", "args": {}}
    replies = codec.feed(encode_result(id1, [1, 2], 123.5))
    assert replies[0].ok and replies[0].unwrap() == [1, 2]
    assert codec.idle_deadline == 123.5 and codec.pending == {id2}
    [err] = codec.feed(encode_error(id2, errors.NotFound("Link not found (x)"), 124.0))
    assert not err.ok
    with pytest.raises(errors.NotFound, match="Link not found"):
        err.unwrap()
    assert codec.pending == set() and codec.idle_deadline == 124.0


def test_error_mapping_round_trip() -> None:
    for cls in (errors.InvalidArgument, errors.NotFound, errors.PermissionDenied, errors.Internal):
        wire = error_to_wire(cls("boom"))
        exc = error_from_wire(wire["code"], wire["message"])
        assert type(exc) is cls and str(exc.args[0]) == "boom"
    wire = error_to_wire(ValueError("bad"))
    assert wire == {"code": int(Code.INTERNAL), "message": "ValueError: bad"}
    assert isinstance(error_from_wire(999, "odd"), errors.Internal)


def test_reply_without_id_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ClientCodec().feed(encode_message({"result": 1}))
