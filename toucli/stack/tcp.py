"""TCP segment codec: :class:`~toucli.stack.segment.Segment` <-> bytes (RFC 9293 §3.1).

Options understood (RFC 9293 §3.2, RFC 7323, RFC 2018, RFC 7413): EOL(0),
NOP(1), MSS(2), window scale(3), SACK-permitted(4), SACK(5), timestamps(8),
Fast Open cookie(34; empty = cookie request). Unknown kinds are skipped by
their length (RFC 9293 §3.2, MUST-68). A malformed option (length < 2, running
past the header, wrong length for a known kind) makes the whole segment
invalid: it is dropped, never half-understood.

The codec is policy-free: it encodes every option the ``Segment`` carries and
decodes every option present, whatever the SYN flag says; the engine decides
what to send and what to honour (e.g. MSS only on SYN, window scale clamped
to 14).

Option layout on send follows Linux: MSS; timestamps, with SACK-permitted
packed in front of it as ``04 02 08 0a`` when both are present (otherwise
``NOP NOP 08 0a`` / ``NOP NOP 04 02``); ``NOP`` window scale; ``NOP NOP`` SACK
blocks; Fast Open; zero padding to a multiple of 4. SACK blocks that do not
fit into the 40 option bytes are dropped from the end (RFC 2018 §3).

Checksum (TOU-WIRE §3.3, see :mod:`toucli.stack.checksum`): sent with the
address-free pseudo-header unless real addresses are given; received segments
verify in either form. Under an AEAD the checksum is skipped both ways.

Decoding never raises: it returns a :class:`TcpDrop` reason instead.
"""

from __future__ import annotations

from typing import Final

import struct
from enum import IntEnum

from .checksum import PROTO_TCP, tcp_checksum_ok
from .errors import LocalError
from .segment import Segment

HEADER_LEN: Final = 20
MAX_OPTIONS_LEN: Final = 40

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_PERM: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMP: Final = 8
OPT_TFO: Final = 34

TFO_COOKIE_MIN: Final = 4   # RFC 7413 §4.1.1
TFO_COOKIE_MAX: Final = 16

_HDR: Final = struct.Struct("!HHIIBBHHH")
_U16: Final = struct.Struct("!H")
_TS_VALUES: Final = struct.Struct("!II")
_MSS_OPT: Final = struct.Struct("!BBH")
_TS_OPT: Final = struct.Struct("!BBBBII")          # NOP NOP 8 10 or 4 2 8 10, tsval, tsecr
_WS_OPT: Final = struct.Struct("!BBBB")            # NOP 3 3 shift
_SACK_BLOCKS = [struct.Struct(f"!{2 * k}I") for k in range(5)]

_TS_ONLY_PREFIX = b"\x01\x01\x08\x0a"
_TS_ONLY_RESIDUE: Final = 0x0101 + 0x080A          # word sum of that prefix
_SACK_PERM_NOPS = b"\x01\x01\x04\x02"
_M: Final = 0xFFFF


class TcpDrop(IntEnum):
    """Why bytes were not accepted as a TCP segment."""

    TOO_SHORT = 1          # fewer than 20 bytes
    BAD_DATA_OFFSET = 2    # data offset < 5 or beyond the end of the segment
    BAD_CHECKSUM = 3       # neither the address-free nor the real-address form verifies
    MALFORMED_OPTION = 4   # option length < 2, overruns the header, or wrong for its kind


def _parse_options(data: bytes | bytearray | memoryview, end: int, seg: Segment) -> TcpDrop | None:
    """Fill ``seg``'s option fields from ``data[20:end]`` (RFC 9293 §3.2)."""
    i = HEADER_LEN
    while i < end:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return TcpDrop.MALFORMED_OPTION
        length = data[i + 1]
        if length < 2 or i + length > end:
            return TcpDrop.MALFORMED_OPTION
        if kind == OPT_TIMESTAMP:
            if length != 10:
                return TcpDrop.MALFORMED_OPTION
            seg.tsval, seg.tsecr = _TS_VALUES.unpack_from(data, i + 2)
        elif kind == OPT_SACK:
            blocks = (length - 2) >> 3
            if blocks == 0 or length != 2 + 8 * blocks:
                return TcpDrop.MALFORMED_OPTION
            it = iter(_SACK_BLOCKS[blocks].unpack_from(data, i + 2))
            seg.sack = tuple(zip(it, it))
        elif kind == OPT_MSS:
            if length != 4:
                return TcpDrop.MALFORMED_OPTION
            seg.mss = _U16.unpack_from(data, i + 2)[0]
        elif kind == OPT_WSCALE:
            if length != 3:
                return TcpDrop.MALFORMED_OPTION
            seg.wscale = data[i + 2]
        elif kind == OPT_SACK_PERM:
            if length != 2:
                return TcpDrop.MALFORMED_OPTION
            seg.sack_perm = True
        elif kind == OPT_TFO:
            if length != 2 and not TFO_COOKIE_MIN + 2 <= length <= TFO_COOKIE_MAX + 2:
                return TcpDrop.MALFORMED_OPTION
            seg.tfo_cookie = bytes(data[i + 2:i + length])
        i += length
    return None


def decode_segment(
    data: bytes | bytearray | memoryview,
    *,
    verify_checksum: bool = True,
    src: bytes | None = None,
    dst: bytes | None = None,
    view: bool = False,
) -> Segment | TcpDrop:
    """Decode one TCP segment (all of ``data``). Returns the Segment or a :class:`TcpDrop`.

    ``verify_checksum=False`` skips the checksum (segment authenticated by an
    AEAD). ``src``/``dst`` (4 or 16 bytes each) also allow the real-address
    checksum form. ``view=True``: the payload is a view of ``data`` instead of a
    copy, for a caller whose ``data`` is its own and never changes (a decrypted
    record); a reused receive buffer must be copied. Never raises.
    """
    n = len(data)
    if n < HEADER_LEN:
        return TcpDrop.TOO_SHORT
    sport, dport, seq, ack, off, flags, wnd, _csum, urg = _HDR.unpack_from(data)
    hlen = (off >> 4) << 2
    if hlen < HEADER_LEN or hlen > n:
        return TcpDrop.BAD_DATA_OFFSET
    if verify_checksum and not tcp_checksum_ok(data, src, dst):
        return TcpDrop.BAD_CHECKSUM
    seg = Segment(sport, dport, seq, ack, flags, wnd, memoryview(data)[hlen:] if view else bytes(data[hlen:]),
                  urg=urg)
    if hlen == HEADER_LEN:
        return seg
    if hlen == 32 and data[20:24] == _TS_ONLY_PREFIX:
        seg.tsval, seg.tsecr = _TS_VALUES.unpack_from(data, 24)
        return seg
    return _parse_options(data, hlen, seg) or seg


def _options(seg: Segment) -> bytes:
    """Option bytes for ``seg`` in Linux order, padded to a multiple of 4."""
    parts: list[bytes] = []
    if seg.mss is not None:
        parts.append(_MSS_OPT.pack(OPT_MSS, 4, seg.mss))
    if seg.tsval is not None:
        if seg.sack_perm:
            parts.append(_TS_OPT.pack(OPT_SACK_PERM, 2, OPT_TIMESTAMP, 10, seg.tsval, seg.tsecr or 0))
        else:
            parts.append(_TS_OPT.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, seg.tsval, seg.tsecr or 0))
    elif seg.sack_perm:
        parts.append(_SACK_PERM_NOPS)
    if seg.wscale is not None:
        parts.append(_WS_OPT.pack(OPT_NOP, OPT_WSCALE, 3, seg.wscale))
    tfo = b""
    cookie = seg.tfo_cookie
    if cookie is not None:
        if cookie and not TFO_COOKIE_MIN <= len(cookie) <= TFO_COOKIE_MAX:
            raise LocalError(f"TFO cookie must be empty or 4..16 bytes, not {len(cookie)}")
        tfo = bytes((OPT_TFO, 2 + len(cookie))) + cookie
        if len(tfo) & 3 == 2:
            tfo += b"\x01\x01"
    if seg.sack:
        used = sum(map(len, parts)) + ((len(tfo) + 3) & ~3)
        blocks = min(len(seg.sack), (MAX_OPTIONS_LEN - used - 4) >> 3)
        if blocks > 0:
            parts.append(bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * blocks)))
            parts.append(_SACK_BLOCKS[blocks].pack(*(edge for block in seg.sack[:blocks] for edge in block)))
    parts.append(tfo)
    opts = b"".join(parts)
    pad = -len(opts) & 3
    return opts + bytes(pad) if pad else opts


def _layout(seg: Segment, checksum: bool, src: bytes | None, dst: bytes | None) -> tuple[bytes, int, int]:
    """Options, header length and checksum field value for ``seg``.

    The checksum is computed from the field values before anything is packed:
    every header word, the options and the payload sit at even offsets, so
    their residues mod 0xFFFF just add (see :mod:`toucli.stack.checksum`).
    """
    if (seg.mss is None and seg.wscale is None and not seg.sack_perm and not seg.sack
            and seg.tfo_cookie is None):
        if seg.tsval is None:
            opts, hlen, r_opts = b"", HEADER_LEN, 0
        else:
            tsecr = seg.tsecr or 0
            opts = _TS_OPT.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, seg.tsval, tsecr)
            hlen, r_opts = 32, _TS_ONLY_RESIDUE + seg.tsval + tsecr
    else:
        opts = _options(seg)
        hlen = HEADER_LEN + len(opts)
        r_opts = int.from_bytes(opts, "big")
    if not checksum:
        return opts, hlen, 0
    payload = seg.payload
    r_payload = int.from_bytes(payload, "big")
    if len(payload) & 1:
        r_payload <<= 8
    length = hlen + len(payload)
    r = (seg.sport + seg.dport + seg.seq + seg.ack + (hlen << 10 | seg.flags) + seg.wnd + seg.urg
         + r_opts + r_payload + PROTO_TCP + length)
    if src is not None and dst is not None:
        r += int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    return opts, hlen, (-r) % _M


def encode_segment(
    seg: Segment, *, checksum: bool = True, src: bytes | None = None, dst: bytes | None = None
) -> bytes:
    """Encode ``seg`` to bytes.

    Checksum: address-free pseudo-header, or real-address one when ``src`` and
    ``dst`` are given; ``checksum=False`` leaves 0 (AEAD-protected segments).
    Raises :class:`LocalError` if a field does not fit its wire size.
    """
    try:
        opts, hlen, csum = _layout(seg, checksum, src, dst)
        hdr = _HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, hlen << 2, seg.flags, seg.wnd, csum, seg.urg)
    except struct.error as exc:
        raise LocalError(f"segment field out of range: {exc}") from None
    return b"".join((hdr, opts, seg.payload))


def encode_segment_into(
    seg: Segment,
    buf: bytearray | memoryview,
    offset: int = 0,
    *,
    checksum: bool = True,
    src: bytes | None = None,
    dst: bytes | None = None,
) -> int:
    """Write ``seg`` into ``buf`` at ``offset``; return the number of bytes written.

    Same checksum rules as :func:`encode_segment`. Raises :class:`LocalError`
    if ``buf`` is too small or a field does not fit its wire size.
    """
    try:
        opts, hlen, csum = _layout(seg, checksum, src, dst)
        end = offset + hlen + len(seg.payload)
        if offset < 0 or end > len(buf):
            raise LocalError(f"buffer too small: need {end} bytes, have {len(buf)}")
        _HDR.pack_into(buf, offset, seg.sport, seg.dport, seg.seq, seg.ack, hlen << 2, seg.flags,
                       seg.wnd, csum, seg.urg)
    except struct.error as exc:
        raise LocalError(f"segment field out of range: {exc}") from None
    buf[offset + HEADER_LEN:offset + hlen] = opts
    buf[offset + hlen:end] = seg.payload
    return end - offset


def header_length(seg: Segment) -> int:
    """Bytes the TCP header (with options) of ``seg`` takes on the wire."""
    return _layout(seg, False, None, None)[1]
