"""Internet checksum (RFC 1071) and the TCP checksum rule of tou.

Arithmetic: the one's-complement sum of big-endian 16-bit words is congruent,
modulo 0xFFFF, to the whole buffer read as one big-endian integer, because
2**16 == 1 (mod 0xFFFF) (RFC 1071 §2(B), "byte order independence" and
"deferred carries" taken to the limit). The functions here therefore work on
*residues* in ``range(0xFFFF)``: ``int.from_bytes(data, "big") % 0xFFFF``,
with an odd trailing byte padded by a zero byte (RFC 1071 §4.1). Residues of
chunks that start at even offsets simply add up.

The ±0 caveat (RFC 1624 §3): a one's-complement sum of data that is not all
zero is never +0 (0x0000); when it is congruent to 0 it is -0 (0xFFFF). The
checksum sent is then 0x0000. A receiver sums everything, checksum field
included, and accepts when the result is congruent to 0 (mod 0xFFFF), so a
field holding 0x0000 or 0xFFFF (both "zero") verifies alike.

TCP pseudo-header (RFC 9293 §3.1; RFC 8200 §8.1 for IPv6). tou sends the
*address-free* form (TOU-WIRE §3.3): addresses all zero, then protocol 6 and
the TCP length. In IPv4 layout (4+4 zero bytes, 0, 6, 16-bit length) and in
IPv6 layout (16+16 zero bytes, 32-bit length, 3 zero bytes, 6) the words sum
to the same number, ``6 + length``, for every length below 65536, so one
address-free checksum serves both families. With real addresses the two
layouts also reduce to ``addresses + 6 + length``; only the addresses differ.
"""

from __future__ import annotations

from typing import Final

import struct

PROTO_TCP: Final = 6

_M: Final = 0xFFFF
_PSEUDO_V4 = struct.Struct("!4s4sBBH")
_PSEUDO_V6 = struct.Struct("!16s16sI3xB")


def ones_sum(data: bytes | bytearray | memoryview, residue: int = 0) -> int:
    """Residue mod 0xFFFF of the RFC 1071 sum of ``data``, added to ``residue``.

    ``data`` must start at an even offset of the checksummed region; an odd
    length is padded with one zero byte.
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return (residue + n) % _M


def fold_checksum(residue: int) -> int:
    """Checksum field value for a region whose sum has ``residue`` (not all zero).

    ``~sum & 0xFFFF`` where a sum of 0 means -0 (0xFFFF): never returns 0xFFFF.
    """
    return (-residue) % _M


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of ``data`` (0xFFFF only when ``data`` is all zero)."""
    if not any(data):
        return 0xFFFF
    return fold_checksum(ones_sum(data))


def pseudo_header_sum(
    length: int, src: bytes | None = None, dst: bytes | None = None, proto: int = PROTO_TCP
) -> int:
    """Residue of the pseudo-header for a transport segment of ``length`` bytes.

    Without ``src``/``dst`` it is the address-free form (TOU-WIRE §3.3). With
    them (both 4 bytes: IPv4, RFC 9293 §3.1; both 16 bytes: IPv6, RFC 8200
    §8.1) it is the standard form. ``length`` must be below 65536.
    """
    r = proto + length
    if src is not None:
        r += int.from_bytes(src, "big") + int.from_bytes(dst, "big")  # type: ignore[arg-type]
    return r % _M


def pseudo_header(
    length: int, src: bytes | None = None, dst: bytes | None = None, *, ipv6: bool = False,
    proto: int = PROTO_TCP,
) -> bytes:
    """The pseudo-header bytes themselves (for tests and documentation).

    ``src``/``dst`` default to zero addresses of the family chosen by ``ipv6``
    (or implied by their size).
    """
    if src is not None:
        ipv6 = len(src) == 16
    size = 16 if ipv6 else 4
    zero = bytes(size)
    src = zero if src is None else src
    dst = zero if dst is None else dst
    if ipv6:
        return _PSEUDO_V6.pack(src, dst, length, proto)
    return _PSEUDO_V4.pack(src, dst, 0, proto, length)


def tcp_checksum(
    segment: bytes | bytearray | memoryview, src: bytes | None = None, dst: bytes | None = None
) -> int:
    """Checksum field value for ``segment``, whose checksum field holds 0.

    Address-free pseudo-header unless ``src`` and ``dst`` are given.
    """
    return fold_checksum(ones_sum(segment, pseudo_header_sum(len(segment), src, dst)))


def tcp_checksum_ok(
    segment: bytes | bytearray | memoryview, src: bytes | None = None, dst: bytes | None = None
) -> bool:
    """True if ``segment`` (checksum field included) verifies.

    Accepts the address-free form always and, when ``src``/``dst`` are given,
    also the real-address form (TOU-WIRE §3.3 receive rule).
    """
    n = len(segment)
    s = ones_sum(segment, PROTO_TCP + n)
    if s == 0:
        return True
    if src is None or dst is None:
        return False
    return (s + int.from_bytes(src, "big") + int.from_bytes(dst, "big")) % _M == 0
