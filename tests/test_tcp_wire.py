"""TCP segment codec (RFC 9293 §3.1-§3.2, RFC 7323, RFC 2018, RFC 7413; TOU-WIRE §3.3, §8)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from toucli.stack.checksum import tcp_checksum
from toucli.stack.errors import LocalError
from toucli.stack.gue import GueHeader, parse_header
from toucli.stack.segment import ACK, FIN, PSH, SYN, Segment
from toucli.stack.tcp import (
    TcpDrop,
    decode_segment,
    encode_segment,
    encode_segment_into,
    header_length,
)

VECTOR_A = bytes.fromhex(
    "4500003812344000401113e50a4d00010a4d0002c35017c0002424ae00060000"
    "9c400050123456780000000060 02faf083680000020405a8".replace(" ", "")
)
SRC4, DST4 = VECTOR_A[12:16], VECTOR_A[16:20]
TCP_A = VECTOR_A[32:]                                   # real-address checksum 0x8368
TCP_A_PRIME = TCP_A[:16] + b"\x98\x05" + TCP_A[18:]      # address-free checksum
VECTOR_B = bytes.fromhex("000600009c400050123456780000000060 02faf03ca40000020405 94".replace(" ", ""))
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")

SYN_A = Segment(40000, 80, 0x12345678, 0, SYN, 64240, mss=1448)
_HDR = struct.Struct("!HHIIBBHHH")


def raw(options: bytes = b"", payload: bytes = b"", flags: int = ACK, doff: int | None = None) -> bytes:
    """Hand-built segment with the given raw option bytes and a valid address-free checksum."""
    if doff is None:
        doff = (20 + len(options)) // 4
    seg = bytearray(_HDR.pack(1000, 2000, 11, 22, doff << 4, flags, 300, 0, 0) + options + payload)
    seg[16:18] = struct.pack("!H", tcp_checksum(seg))
    return bytes(seg)


# --- TOU-WIRE §8 vectors ------------------------------------------------------

def test_vector_a_real_address_checksum() -> None:
    assert decode_segment(TCP_A) is TcpDrop.BAD_CHECKSUM
    seg = decode_segment(TCP_A, src=SRC4, dst=DST4)
    assert seg == SYN_A
    assert encode_segment(seg, src=SRC4, dst=DST4) == TCP_A


def test_vector_a_prime_address_free_checksum() -> None:
    assert decode_segment(TCP_A_PRIME) == SYN_A
    assert decode_segment(TCP_A_PRIME, src=SRC4, dst=DST4) == SYN_A
    assert encode_segment(SYN_A) == TCP_A_PRIME


def test_vector_a_through_gue_with_memoryview() -> None:
    udp_payload = memoryview(VECTOR_A)[28:]
    h = parse_header(udp_payload)
    assert isinstance(h, GueHeader) and h.payload_offset == 4
    assert decode_segment(udp_payload[h.payload_offset:], src=SRC4, dst=DST4) == SYN_A


def test_vector_b_ipv6() -> None:
    h = parse_header(VECTOR_B)
    assert isinstance(h, GueHeader)
    tcp = VECTOR_B[h.payload_offset:]
    seg = decode_segment(tcp, src=SRC6, dst=DST6)
    assert seg == Segment(40000, 80, 0x12345678, 0, SYN, 64240, mss=1428)
    assert encode_segment(seg, src=SRC6, dst=DST6) == tcp
    assert decode_segment(tcp) is TcpDrop.BAD_CHECKSUM
    assert decode_segment(encode_segment(seg)) == seg  # address-free form of the same


# --- checksum handling ----------------------------------------------------------

def test_checksum_off() -> None:
    wire = encode_segment(SYN_A, checksum=False)
    assert wire[16:18] == b"\0\0"
    assert decode_segment(wire) is TcpDrop.BAD_CHECKSUM
    assert decode_segment(wire, verify_checksum=False) == SYN_A


def test_corruption_is_detected() -> None:
    wire = bytearray(encode_segment(Segment(1, 2, 3, 4, ACK, 5, b"hello", tsval=1, tsecr=2)))
    wire[-1] ^= 0x01
    assert decode_segment(bytes(wire)) is TcpDrop.BAD_CHECKSUM


def test_negative_zero_checksum_field() -> None:
    # Find a payload word making the address-free sum -0: the checksum sent is 0x0000,
    # and a field holding 0xFFFF (RFC 1624 incremental-update form) verifies too.
    # With payload word 0 the checksum is -r; using that value as the payload word makes the sum -0.
    seg = Segment(1234, 80, 7, 9, ACK, 100, b"\0\0")
    seg.payload = encode_segment(seg)[16:18]
    wire = encode_segment(seg)
    assert wire[16:18] == b"\0\0"
    assert decode_segment(wire) == seg
    assert decode_segment(wire[:16] + b"\xff\xff" + wire[18:]) == seg


@given(st.binary(max_size=41), st.sampled_from([None, (SRC4, DST4), (SRC6, DST6)]))
def test_checksum_matches_checksum_module(payload: bytes, addrs) -> None:
    src, dst = addrs or (None, None)
    seg = Segment(5, 6, 0xFFFFFFFF, 0x80000000, ACK | PSH, 0xFFFF, payload, tsval=0xFFFFFFFF, tsecr=3)
    wire = bytearray(encode_segment(seg, src=src, dst=dst))
    field = wire[16:18]
    wire[16:18] = b"\0\0"
    assert struct.pack("!H", tcp_checksum(wire, src, dst)) == field


# --- option layouts (exact bytes) -------------------------------------------------

def opts_of(seg: Segment) -> bytes:
    wire = encode_segment(seg)
    return wire[20:(wire[12] >> 4) * 4]


def test_no_options() -> None:
    wire = encode_segment(Segment(1, 2, 3, 4, ACK, 5, b"xy"))
    assert wire[12] == 0x50 and len(wire) == 22 and wire[20:] == b"xy"


def test_linux_syn_layout() -> None:
    seg = Segment(1, 2, 3, 0, SYN, 65535, mss=1400, sack_perm=True, tsval=0x01020304, tsecr=0, wscale=7)
    assert opts_of(seg) == bytes.fromhex("02040578 0402080a 01020304 00000000 01030307".replace(" ", ""))
    assert decode_segment(encode_segment(seg)) == seg


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mss": 536}, "02040218"),
        ({"wscale": 14}, "0103030e"),
        ({"sack_perm": True}, "01010402"),
        ({"tsval": 5, "tsecr": 6}, "0101080a0000000500000006"),
        ({"sack_perm": True, "tsval": 5, "tsecr": 6}, "0402080a0000000500000006"),
        ({"tfo_cookie": b""}, "22020101"),
        ({"tfo_cookie": b"ABCD"}, "2206414243440101"),
        ({"tfo_cookie": b"ABCDE"}, "2207414243444500"),
        ({"tfo_cookie": bytes(range(8))}, "220a00010203040506070101"),
        ({"sack": ((1, 2),)}, "0101050a0000000100000002"),
        ({"mss": 1400, "wscale": 2, "tfo_cookie": b""}, "02040578010303022202 0101".replace(" ", "")),
    ],
)
def test_single_option_layouts(kwargs: dict, expected: str) -> None:
    seg = Segment(1, 2, 3, 4, SYN, 5, **kwargs)
    assert opts_of(seg).hex() == expected
    assert decode_segment(encode_segment(seg)) == seg


def test_ack_with_timestamps_and_sack() -> None:
    seg = Segment(1, 2, 3, 4, ACK, 5, tsval=7, tsecr=8, sack=((10, 20), (30, 40)))
    assert opts_of(seg) == bytes.fromhex(
        "0101080a0000000700000008" "01010512" "0000000a00000014" "0000001e00000028"
    )
    assert decode_segment(encode_segment(seg)) == seg


def test_sack_blocks_that_do_not_fit_are_dropped() -> None:
    blocks = tuple((i * 100, i * 100 + 50) for i in range(6))
    with_ts = decode_segment(encode_segment(Segment(1, 2, 3, 4, ACK, 5, tsval=1, tsecr=2, sack=blocks)))
    assert with_ts.sack == blocks[:3]
    without = decode_segment(encode_segment(Segment(1, 2, 3, 4, ACK, 5, sack=blocks)))
    assert without.sack == blocks[:4]
    crowded = Segment(1, 2, 3, 4, SYN | ACK, 5, mss=1, wscale=1, sack_perm=True, tsval=1, tsecr=2,
                      tfo_cookie=bytes(16), sack=blocks)
    assert header_length(crowded) == 60
    assert decode_segment(encode_segment(crowded)).sack is None


def test_full_syn_with_largest_cookie_fills_40_bytes() -> None:
    seg = Segment(1, 2, 3, 0, SYN, 5, mss=1400, sack_perm=True, tsval=1, tsecr=0, wscale=7,
                  tfo_cookie=bytes(range(16)))
    wire = encode_segment(seg)
    assert wire[12] >> 4 == 15 and header_length(seg) == 60
    assert decode_segment(wire) == seg


@pytest.mark.parametrize("cookie", [b"abc", bytes(17)])
def test_bad_tfo_cookie_length_is_refused(cookie: bytes) -> None:
    with pytest.raises(LocalError):
        encode_segment(Segment(1, 2, 3, 0, SYN, 5, tfo_cookie=cookie))


@pytest.mark.parametrize(
    "seg",
    [
        Segment(70000, 2, 3, 4, ACK, 5),
        Segment(1, 2, 1 << 32, 4, ACK, 5),
        Segment(1, 2, 3, 4, 0x100, 5),
        Segment(1, 2, 3, 4, ACK, 5, mss=1 << 16),
        Segment(1, 2, 3, 4, ACK, 5, tsval=-1, tsecr=0),
        Segment(1, 2, 3, 4, ACK, 5, sack=((0, 1 << 32),)),
    ],
)
def test_out_of_range_fields_are_refused(seg: Segment) -> None:
    with pytest.raises(LocalError):
        encode_segment(seg)


# --- encode_segment_into ------------------------------------------------------------

def test_encode_into_matches_encode() -> None:
    seg = Segment(1, 2, 3, 4, ACK | FIN, 5, b"payload!", tsval=9, tsecr=10, sack=((1, 2),))
    buf = bytearray(b"\xee" * 100)
    n = encode_segment_into(seg, buf, 7, src=SRC4, dst=DST4)
    assert n == len(encode_segment(seg, src=SRC4, dst=DST4))
    assert bytes(buf[7:7 + n]) == encode_segment(seg, src=SRC4, dst=DST4)
    assert buf[:7] == b"\xee" * 7 and buf[7 + n:] == b"\xee" * (100 - 7 - n)
    mv = memoryview(bytearray(n))
    assert encode_segment_into(seg, mv, 0, checksum=False) == n
    assert bytes(mv) == encode_segment(seg, checksum=False)


def test_encode_into_too_small_buffer() -> None:
    seg = Segment(1, 2, 3, 4, ACK, 5, b"0123456789")
    buf = bytearray(40)
    with pytest.raises(LocalError):
        encode_segment_into(seg, buf, 15)
    assert buf == bytearray(40)


# --- decoding rules ---------------------------------------------------------------

def test_decode_fields() -> None:
    wire = raw(payload=b"abc", flags=ACK | PSH | 0x80)
    seg = decode_segment(wire)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.wnd, seg.urg) == (
        1000, 2000, 11, 22, ACK | PSH | 0x80, 300, 0)
    assert seg.payload == b"abc" and type(seg.payload) is bytes


def test_reserved_bits_are_ignored() -> None:
    wire = bytearray(raw())
    wire[12] |= 0x0F
    wire[16:18] = b"\0\0"
    wire[16:18] = struct.pack("!H", tcp_checksum(wire))
    assert isinstance(decode_segment(bytes(wire)), Segment)


def test_unknown_option_is_skipped_and_eol_ends_the_list() -> None:
    seg = decode_segment(raw(b"\x1e\x06abcd" + b"\x02\x04\x05\xb4" + b"\x00\x02\x00\x00"))
    assert isinstance(seg, Segment) and seg.mss == 1460
    # after EOL, bytes are padding, even if they look like a malformed option
    seg = decode_segment(raw(b"\x01\x00\x02\x09"))
    assert isinstance(seg, Segment) and seg.mss is None


def test_odd_option_order_decodes() -> None:
    opts = b"\x08\x0a" + struct.pack("!II", 1, 2) + b"\x03\x03\x05" + b"\x04\x02" + b"\x01" * 4
    seg = decode_segment(raw(opts, flags=SYN))
    assert (seg.tsval, seg.tsecr, seg.wscale, seg.sack_perm) == (1, 2, 5, True)


@pytest.mark.parametrize(
    "opts",
    [
        b"\x1e\x00\x00\x00",          # length 0
        b"\x1e\x01\x00\x00",          # length 1
        b"\x01\x01\x01\x1e",          # kind in the last byte, no length byte
        b"\x1e\x08\x00\x00",          # runs past the header
        b"\x02\x03\x05\x00",          # MSS length 3
        b"\x03\x04\x05\x00",          # window scale length 4
        b"\x04\x03\x00\x00",          # SACK-permitted length 3
        b"\x08\x08" + bytes(6),       # timestamps length 8
        b"\x05\x02\x00\x00",          # SACK with no block
        b"\x05\x0b" + bytes(10),      # SACK not 2 + 8n
        b"\x22\x03\x00\x00",          # TFO cookie of 1 byte
        b"\x22\x05\x00\x00\x00\x00",  # TFO cookie of 3 bytes
        b"\x22\x13" + bytes(18),      # TFO cookie of 17 bytes
    ],
)
def test_malformed_options_reject_the_segment(opts: bytes) -> None:
    opts += bytes(-len(opts) & 3)
    assert decode_segment(raw(opts)) is TcpDrop.MALFORMED_OPTION
    assert decode_segment(raw(opts), verify_checksum=False) is TcpDrop.MALFORMED_OPTION


def test_length_errors() -> None:
    assert decode_segment(b"") is TcpDrop.TOO_SHORT
    assert decode_segment(raw()[:19]) is TcpDrop.TOO_SHORT
    assert decode_segment(raw(doff=4)) is TcpDrop.BAD_DATA_OFFSET
    assert decode_segment(raw(doff=0)) is TcpDrop.BAD_DATA_OFFSET
    assert decode_segment(raw(b"\x01" * 4, doff=7)) is TcpDrop.BAD_DATA_OFFSET


# --- properties -----------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    ts = draw(st.none() | st.tuples(u32, u32))
    if draw(st.booleans()):  # SYN-like: handshake options
        sack = None
        extra = dict(
            mss=draw(st.none() | u16),
            wscale=draw(st.none() | st.integers(0, 255)),
            sack_perm=draw(st.booleans()),
            tfo_cookie=draw(st.none() | st.just(b"") | st.binary(min_size=4, max_size=16)),
        )
    else:  # established-like: SACK blocks that fit
        sack = draw(st.none() | st.lists(st.tuples(u32, u32), min_size=1, max_size=3 if ts else 4).map(tuple))
        extra = {}
    return Segment(
        draw(u16), draw(u16), draw(u32), draw(u32), draw(st.integers(0, 255)), draw(u16),
        draw(st.binary(max_size=64)), urg=draw(u16),
        tsval=ts and ts[0], tsecr=ts and ts[1], sack=sack, **extra,
    )


@given(segments(), st.sampled_from([None, (SRC4, DST4), (SRC6, DST6)]))
def test_round_trip(seg: Segment, addrs) -> None:
    src, dst = addrs or (None, None)
    wire = encode_segment(seg, src=src, dst=dst)
    assert 20 <= (wire[12] >> 4) * 4 <= 60
    assert decode_segment(wire, src=src, dst=dst) == seg
    assert decode_segment(encode_segment(seg, checksum=False), verify_checksum=False) == seg
    assert header_length(seg) == len(wire) - len(seg.payload)


@given(segments(), st.lists(st.tuples(u32, u32), min_size=1, max_size=8).map(tuple))
def test_options_never_exceed_40_bytes(seg: Segment, sack) -> None:
    seg.sack = sack
    wire = encode_segment(seg)
    assert (wire[12] >> 4) * 4 <= 60
    got = decode_segment(wire)
    assert isinstance(got, Segment)
    assert got.sack is None or (len(got.sack) >= 1 and got.sack == sack[:len(got.sack)])


@given(st.binary(max_size=80), st.booleans())
def test_decode_never_raises_on_random_bytes(data: bytes, verify: bool) -> None:
    assert isinstance(decode_segment(data, verify_checksum=verify), (Segment, TcpDrop))


@given(st.integers(5, 15), st.binary(max_size=40), st.binary(max_size=8))
def test_decode_never_raises_on_random_options(doff: int, opts: bytes, payload: bytes) -> None:
    wire = _HDR.pack(1, 2, 3, 4, doff << 4, ACK, 5, 0, 0) + opts + payload
    for verify in (False, True):
        got = decode_segment(memoryview(wire), verify_checksum=verify, src=SRC4, dst=DST4)
        assert isinstance(got, (Segment, TcpDrop))
