"""RFC 1071 internet checksum and the TCP checksum rule (TOU-WIRE §3.3)."""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from toucli.stack.checksum import (
    fold_checksum,
    internet_checksum,
    ones_sum,
    pseudo_header,
    pseudo_header_sum,
    tcp_checksum,
    tcp_checksum_ok,
)

# TOU-WIRE §8 vector A (IPv4 + UDP + GUE + TCP SYN).
VECTOR_A = bytes.fromhex(
    "45000038123440004011 13e5 0a4d0001 0a4d0002 c35017c0002424ae 00060000"
    "9c400050123456780000000060 02faf0 83680000 020405a8".replace(" ", "")
)
SRC4, DST4 = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def reference_checksum(data: bytes) -> int:
    """Textbook RFC 1071 loop with end-around carry, for comparison."""
    if len(data) & 1:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_example() -> None:
    # RFC 1071 §3 numerical example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_odd_length_is_padded_with_zero() -> None:
    assert internet_checksum(b"\x01") == 0xFEFF
    assert internet_checksum(b"\x12\x34\x56") == reference_checksum(b"\x12\x34\x56\x00")


def test_all_zero_data_gives_ffff() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(6)) == 0xFFFF


def test_negative_zero_sum_gives_zero_checksum() -> None:
    # A non-zero sum congruent to 0 is -0 (0xFFFF); the checksum is then 0x0000.
    assert internet_checksum(b"\xff\xff") == 0x0000
    assert internet_checksum(b"\x12\x34\xed\xcb") == 0x0000
    assert fold_checksum(0) == 0


@given(st.binary(max_size=300))
def test_matches_reference_loop(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_residues_of_even_aligned_chunks_add(a: bytes, b: bytes) -> None:
    if len(a) & 1:
        a += b"\x7f"
    assert ones_sum(b, ones_sum(a)) == ones_sum(a + b)


def test_ipv4_and_udp_checksums_of_vector_a() -> None:
    ip = bytearray(VECTOR_A[:20])
    assert internet_checksum(ip[:10] + b"\0\0" + ip[12:]) == 0x13E5
    udp = bytearray(VECTOR_A[20:])
    udp[6:8] = b"\0\0"
    r = ones_sum(udp, pseudo_header_sum(len(udp), SRC4, DST4, proto=17))
    assert fold_checksum(r) == 0x24AE
    # A': the TCP checksum becomes address-free 0x9805; the UDP checksum follows to 0x1011.
    udp[8 + 4 + 16:8 + 4 + 18] = b"\x98\x05"  # UDP hdr, GUE, TCP offset 16
    r = ones_sum(udp, pseudo_header_sum(len(udp), SRC4, DST4, proto=17))
    assert fold_checksum(r) == 0x1011


def test_tcp_checksum_of_vector_a_both_forms() -> None:
    seg = bytearray(VECTOR_A[32:])
    seg[16:18] = b"\0\0"
    assert tcp_checksum(seg, SRC4, DST4) == 0x8368
    assert tcp_checksum(seg) == 0x9805


def test_pseudo_header_layouts() -> None:
    assert pseudo_header(24) == bytes(8) + b"\x00\x06\x00\x18"
    assert pseudo_header(24, ipv6=True) == bytes(32) + b"\x00\x00\x00\x18" + b"\x00\x00\x00\x06"
    assert pseudo_header(24, SRC4, DST4) == SRC4 + DST4 + b"\x00\x06\x00\x18"
    assert pseudo_header(24, SRC6, DST6) == SRC6 + DST6 + b"\x00\x00\x00\x18\x00\x00\x00\x06"


@given(st.integers(0, 0xFFFF))
def test_address_free_sum_is_the_same_for_v4_and_v6_layouts(length: int) -> None:
    v4 = ones_sum(pseudo_header(length))
    v6 = ones_sum(pseudo_header(length, ipv6=True))
    assert v4 == v6 == pseudo_header_sum(length)


@given(st.integers(0, 0xFFFF), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_real_address_sum_matches_layout(length: int, s4: bytes, d4: bytes, s6: bytes, d6: bytes) -> None:
    assert pseudo_header_sum(length, s4, d4) == ones_sum(pseudo_header(length, s4, d4))
    assert pseudo_header_sum(length, s6, d6) == ones_sum(pseudo_header(length, s6, d6))


def _segment_with_zero_checksum() -> bytearray:
    """A 22-byte segment whose address-free checksum is 0x0000 (sum is -0)."""
    seg = bytearray(struct.pack("!HHIIBBHHH", 1234, 80, 7, 9, 0x50, 0x10, 100, 0, 0) + b"\0\0")
    r = ones_sum(seg, pseudo_header_sum(len(seg)))
    seg[20:22] = struct.pack("!H", (-r) % 0xFFFF)
    assert tcp_checksum(seg) == 0x0000
    return seg


def test_checksum_field_zero_and_ffff_both_verify() -> None:
    seg = _segment_with_zero_checksum()
    assert tcp_checksum_ok(seg)
    seg[16:18] = b"\xff\xff"
    assert tcp_checksum_ok(seg)
    seg[16:18] = b"\x00\x01"
    assert not tcp_checksum_ok(seg)


def test_verification_forms() -> None:
    real = VECTOR_A[32:]
    assert not tcp_checksum_ok(real)
    assert tcp_checksum_ok(real, SRC4, DST4)
    assert not tcp_checksum_ok(real, DST4, bytes(4))
    addr_free = real[:16] + b"\x98\x05" + real[18:]
    assert tcp_checksum_ok(addr_free)
    assert tcp_checksum_ok(addr_free, SRC4, DST4)  # address-free is always accepted


@given(st.binary(min_size=20, max_size=200), st.sampled_from([None, (SRC4, DST4), (SRC6, DST6)]))
def test_computed_checksum_verifies_and_is_never_ffff(body: bytes, addrs) -> None:
    src, dst = addrs or (None, None)
    seg = bytearray(body)
    seg[16:18] = b"\0\0"
    c = tcp_checksum(seg, src, dst)
    assert c != 0xFFFF
    seg[16:18] = struct.pack("!H", c)
    assert tcp_checksum_ok(seg, src, dst)
    assert tcp_checksum_ok(memoryview(seg), src, dst)
