"""The precompiled header codec must be byte-identical to the construct declaration."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttrpc import frame

u32 = st.integers(0, 0xFFFF_FFFF)
u8 = st.integers(0, 0xFF)


@given(u32, u32, u8, u8)
def test_encode_matches_construct(length: int, stream_id: int, msg_type: int, flags: int) -> None:
    ref = frame.reference_header().build(dict(length=length, stream_id=stream_id, type=msg_type, flags=flags))
    assert frame.encode_header(length, stream_id, msg_type, flags) == ref
    assert len(ref) == frame.HEADER_SIZE


@given(st.binary(min_size=10, max_size=10))
def test_decode_matches_construct(raw: bytes) -> None:
    parsed = frame.reference_header().parse(raw)
    assert frame.decode_header(raw) == (parsed.length, parsed.stream_id, parsed.type, parsed.flags)


def test_known_bytes() -> None:
    # length 5, stream 3, request, remote-open: big-endian, data length first.
    assert frame.encode_header(5, 3, frame.TYPE_REQUEST, frame.FLAG_REMOTE_OPEN) == bytes.fromhex(
        "00000005000000030102"
    )
    assert frame.HEADER is frame.reference_header()
    assert frame.MAX_DATA == 4 * 1024 * 1024


def test_out_of_range_fields_refused() -> None:
    with pytest.raises(struct.error):
        frame.encode_header(1 << 32, 1, 1, 0)
    with pytest.raises(struct.error):
        frame.encode_header(1, 1, 256, 0)


def test_import_does_not_load_construct() -> None:
    import subprocess
    import sys

    code = "import sys, ttrpc.frame, ttrpc.server; print('construct' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
