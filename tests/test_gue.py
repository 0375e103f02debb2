"""GUE header codec (TOU-WIRE §1.2, §1.3, §2, §5, §7, §8 vectors C, D, E)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from toucli.stack import gue
from toucli.stack.errors import LocalError
from toucli.stack.gue import (
    FLAG_T,
    GUE_PORT,
    PLAIN_HEADER,
    PROTO_NONE,
    PROTO_TCP,
    TRANSFORM_DTLS,
    GueDrop,
    GueHeader,
    Transform,
    encode_header,
    pack_header_into,
    pack_plain_into,
    parse_header,
)

VECTOR_C = bytes.fromhex("013b0400 01060000 17fefd0001000000000001 0030".replace(" ", ""))
VECTOR_D = bytes.fromhex("02060001 80000000 00000010")


def test_constants() -> None:
    assert (GUE_PORT, PROTO_TCP, PROTO_NONE, FLAG_T, TRANSFORM_DTLS) == (6080, 6, 59, 0x0400, 1)


def test_plain_header_bytes() -> None:
    assert PLAIN_HEADER == b"\x00\x06\x00\x00"
    buf = bytearray(b"\xaa" * 8)
    assert pack_plain_into(buf, 2) == 4
    assert buf == b"\xaa\xaa\x00\x06\x00\x00\xaa\xaa"


def test_transform_header_bytes_match_vector_c() -> None:
    assert encode_header(PROTO_NONE, {FLAG_T: b"\x01\x06\x00\x00"}) == VECTOR_C[:8]
    buf = bytearray(b"\xaa" * 12)
    assert pack_header_into(buf, 4, PROTO_NONE, {FLAG_T: b"\x01\x06\x00\x00"}) == 8
    assert buf == b"\xaa" * 4 + VECTOR_C[:8]
    assert pack_header_into(buf, 0, PROTO_TCP) == 4 and buf[:4] == PLAIN_HEADER


def test_parse_plain() -> None:
    data = b"\xff\xff" + PLAIN_HEADER + b"tcp"
    h = parse_header(data, 2)
    assert isinstance(h, GueHeader)
    assert (h.proto, h.flags, h.hlen, h.transform, h.start, h.payload_offset) == (6, 0, 0, None, 2, 6)
    assert h.field(data, FLAG_T) is None


def test_parse_vector_c() -> None:
    h = parse_header(VECTOR_C)
    assert isinstance(h, GueHeader)
    assert (h.proto, h.flags, h.hlen) == (PROTO_NONE, FLAG_T, 1)
    assert h.transform == Transform(type=1, p_c_type=6, data=0)
    assert h.payload_offset == 8
    assert VECTOR_C[h.payload_offset] == 0x17  # DTLS application_data record follows
    assert h.field(VECTOR_C, FLAG_T) == b"\x01\x06\x00\x00"


def test_parse_accepts_memoryview_at_offset() -> None:
    h = parse_header(memoryview(b"xx" + VECTOR_C), 2)
    assert isinstance(h, GueHeader) and h.payload_offset == 10 and h.transform.type == 1


def test_transform_wins_over_proto() -> None:
    # TOU-WIRE §7 #2: trust the T flag and transform Type, not Proto.
    h = parse_header(b"\x01\x06\x04\x00\x01\x06\x00\x00")
    assert isinstance(h, GueHeader) and h.transform == (1, 6, 0)


def test_surplus_space_is_skipped() -> None:
    h = parse_header(b"\x02\x06\x00\x00" + b"private!" + b"T")
    assert isinstance(h, GueHeader) and h.payload_offset == 12 and h.transform is None
    h = parse_header(b"\x03\x3b\x04\x00\x01\x06\x00\x00" + bytes(8))
    assert isinstance(h, GueHeader) and h.payload_offset == 16 and h.transform == (1, 6, 0)


def test_vector_d_linux_rco_is_dropped() -> None:
    assert parse_header(VECTOR_D + bytes(20)) is GueDrop.UNKNOWN_FLAGS


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", GueDrop.TOO_SHORT),
        (b"\x00\x06\x00", GueDrop.TOO_SHORT),
        (b"\x80\x06\x00\x00", GueDrop.RESERVED_VARIANT),         # vector E: variant 2
        (b"\xc0\x06\x00\x00", GueDrop.RESERVED_VARIANT),         # variant 3
        (b"\x20\x00\x00\x00", GueDrop.CONTROL),                  # vector E: control, ctype 0
        (b"\x21\xff\x00\x00" + bytes(4), GueDrop.CONTROL),       # control with Hlen 1
        (b"\x03\x06\x00\x00" + bytes(11), GueDrop.HLEN_OVERRUN),  # vector E
        (b"\x02\x06\x80\x00" + bytes(8), GueDrop.UNKNOWN_FLAGS),  # vector E: unknown 0x8000
        (b"\x00\x06\x00\x01", GueDrop.UNKNOWN_FLAGS),
        (b"\x00\x3b\x04\x00" + bytes(20), GueDrop.FLAGS_OVERRUN),  # T needs 4 bytes, Hlen 0
        (b"\x00\x11\x00\x00", GueDrop.UNSUPPORTED_PROTO),
        (b"\x00\x3b\x00\x00", GueDrop.UNSUPPORTED_PROTO),         # Proto 59 without transform
        (b"\x01\x3b\x04\x00\x02\x06\x00\x00", GueDrop.UNSUPPORTED_TRANSFORM),
        (b"\x01\x3b\x04\x00\x01\x11\x00\x00", GueDrop.UNSUPPORTED_TRANSFORM),
        (bytes.fromhex("4500003c1c4640004006"), GueDrop.DIRECT_IP),  # vector E: raw IPv4
        (bytes.fromhex("6000000000140640"), GueDrop.DIRECT_IP),      # raw IPv6
    ],
)
def test_drops(data: bytes, reason: GueDrop) -> None:
    assert parse_header(data) is reason


def test_exact_hlen_fit_is_accepted() -> None:
    h = parse_header(b"\x03\x06\x00\x00" + bytes(12))
    assert isinstance(h, GueHeader) and h.payload_offset == 16


def test_encoder_rejects_misuse() -> None:
    with pytest.raises(LocalError):
        encode_header(PROTO_TCP, {0x8000: bytes(4)})
    with pytest.raises(LocalError):
        encode_header(PROTO_NONE, {FLAG_T: bytes(3)})


def test_one_table_row_adds_an_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypothetical 8-byte field at flag 0x8000 (before T in wire order) needs only a table row."""
    fields = ((0x8000, 8), (FLAG_T, 4))
    monkeypatch.setattr(gue, "EXT_FIELDS", fields)
    monkeypatch.setattr(gue, "_FIELD_SIZE", dict(fields))
    monkeypatch.setattr(gue, "_LAYOUT", gue._layouts())
    sid = b"SESSION!"
    hdr = encode_header(PROTO_NONE, {FLAG_T: b"\x01\x06\x00\x00", 0x8000: sid})
    assert hdr == b"\x03\x3b\x84\x00" + sid + b"\x01\x06\x00\x00"
    h = parse_header(hdr + b"payload")
    assert isinstance(h, GueHeader)
    assert h.field(hdr, 0x8000) == sid and h.transform == (1, 6, 0) and h.payload_offset == 16
    assert parse_header(b"\x02\x06\x80\x00" + sid) is not GueDrop.UNKNOWN_FLAGS
    assert parse_header(b"\x01\x06\x80\x00" + sid) is GueDrop.FLAGS_OVERRUN


@given(st.binary(max_size=160), st.integers(0, 8))
def test_parse_never_raises(data: bytes, offset: int) -> None:
    h = parse_header(data, offset)
    if isinstance(h, GueHeader):
        assert offset + 4 <= h.payload_offset <= len(data)
        assert data[offset] >> 6 == 0 and not data[offset] & 0x20
    else:
        assert isinstance(h, GueDrop)


@given(st.sampled_from([PLAIN_HEADER, VECTOR_C[:8]]), st.integers(0, 3), st.binary(max_size=20))
def test_parse_of_encoded(hdr: bytes, surplus_words: int, payload: bytes) -> None:
    data = bytearray(hdr) + bytes(4 * surplus_words) + payload
    data[0] += surplus_words
    h = parse_header(bytes(data))
    assert isinstance(h, GueHeader)
    assert h.payload_offset == len(hdr) + 4 * surplus_words
    assert (h.transform is None) == (hdr == PLAIN_HEADER)
