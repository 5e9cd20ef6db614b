"""The ttRPC frame header: 10 bytes in front of every message.

    length (u32 BE) | stream id (u32 BE) | type (u8) | flags (u8) | data...

The header is *declared* with construct (:func:`reference_header`), which is
the reference codec used by tests, fuzzing and the ctl's frame dissector.
Importing construct costs about 10 MB of resident memory (its package init
pulls in pdb, inspect, pickle...), so the serving path uses
:func:`encode_header`/:func:`decode_header`, a precompiled ``struct`` codec
that property tests prove byte-identical to the declaration over all headers.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import construct

HEADER_SIZE = 10
#: Largest data length a peer may send (the Go reference: 4 << 20).
MAX_DATA = 4 << 20

TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3
MESSAGE_TYPES = (TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA)

#: Request/data flag: the sender will send no more data on this stream.
FLAG_REMOTE_CLOSED = 0x1
#: Request flag: the sender keeps the stream open and will send data frames.
FLAG_REMOTE_OPEN = 0x2
#: Data flag: the frame carries no message, only flags (used to close a stream).
FLAG_NO_DATA = 0x4

_HEADER = struct.Struct(">IIBB")


def encode_header(length: int, stream_id: int, msg_type: int, flags: int) -> bytes:
    """Serialize one header (raises struct.error on out-of-range fields)."""
    return _HEADER.pack(length, stream_id, msg_type, flags)


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int, int]:
    """Parse (length, stream_id, type, flags) from ``buf`` at ``offset``."""
    return _HEADER.unpack_from(buf, offset)


def encode_frame(stream_id: int, msg_type: int, flags: int, data: bytes) -> bytes:
    """Header and data as one bytes object, ready for a socket."""
    return _HEADER.pack(len(data), stream_id, msg_type, flags) + data


@cache
def reference_header() -> construct.Struct:
    """The construct declaration of the header (imported on first use)."""
    import construct as c

    return c.Struct(
        "length" / c.Int32ub,
        "stream_id" / c.Int32ub,
        "type" / c.Int8ub,
        "flags" / c.Int8ub,
    )


def __getattr__(name: str) -> Any:
    # ``ttrpc.frame.HEADER`` is the construct declaration, built lazily so
    # that importing this module does not import construct.
    if name == "HEADER":
        return reference_header()
    raise AttributeError(name)
