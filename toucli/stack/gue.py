"""GUE variant-0 header as tou sends and accepts it (TOU-WIRE §1.2, §1.3, §2, §5-§7).

Layout (draft-ietf-intarea-gue-09 §3): byte 0 = variant(2) C(1) Hlen(5),
byte 1 = Proto/ctype, bytes 2-3 = Flags, then ``4*Hlen`` bytes of extension
fields in flag order, surplus space after them (skipped, GUE-09 §3.4).

tou knows exactly the extension fields in :data:`EXT_FIELDS`. A datagram
setting any other flag is dropped (field offsets depend on every flag before
them). To support one more extension, add one row to that table.

Profiles accepted by :func:`parse_header`:

* cleartext: no transform, Proto 6 (TCP); payload is a TCP segment;
* encrypted: T flag with transform Type 1 (DTLS) and P_C_type 6; Proto is not
  trusted (tou sends 59, TOU-WIRE §7 #2/#3); payload is a DTLS record.

Everything else is dropped with a :class:`GueDrop` reason; parsing never raises.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final, Mapping, NamedTuple

from .errors import LocalError

GUE_PORT: Final = 6080
PROTO_TCP: Final = 6
PROTO_NONE: Final = 59          # "no next header": hides the transport (GUE-09 §3.2.1)

FLAG_T: Final = 0x0400          # payload transform field follows (TOU-WIRE §1.3, §7 #1)
TRANSFORM_DTLS: Final = 1       # transform Type registry: 1 = DTLS (TOU-WIRE §2)
FLAG_SESSION_ID: Final = 0x0002  # tou session ID, 32 bits (encrypted profile only; docs/PROTOCOL.md §5.1)

BASE_LEN: Final = 4
MAX_HEADER_LEN = BASE_LEN + 4 * 0x1F

# Known extension fields, in wire order: (flag mask, field size in bytes).
# The only place that lists them; parsing and encoding derive everything from it.
EXT_FIELDS: tuple[tuple[int, int], ...] = (
    (FLAG_T, 4),         # payload transform: Type(8) P_C_type(8) Data(16)
    (FLAG_SESSION_ID, 4),  # session ID chosen by the server (toucli/session.py)
)

_FIELD_SIZE = dict(EXT_FIELDS)
assert all(size % 4 == 0 for size in _FIELD_SIZE.values()), "GUE fields are whole 32-bit words"

_BASE = struct.Struct("!BBH")
_TRANSFORM = struct.Struct("!BBH")


class GueDrop(IntEnum):
    """Why a UDP payload was not accepted as a TOU datagram."""

    TOO_SHORT = 1            # fewer than 4 bytes
    DIRECT_IP = 2            # variant 1: the payload is a raw IP packet, not TOU
    RESERVED_VARIANT = 3     # variant 2 or 3
    HLEN_OVERRUN = 4         # 4 + 4*Hlen exceeds the payload
    UNKNOWN_FLAGS = 5        # a flag outside EXT_FIELDS is set
    FLAGS_OVERRUN = 6        # the set flags' fields need more than 4*Hlen bytes
    CONTROL = 7              # C=1: tou defines no control messages (TOU-WIRE §5)
    UNSUPPORTED_PROTO = 8    # no transform and Proto != 6
    UNSUPPORTED_TRANSFORM = 9  # transform Type != DTLS or P_C_type != 6


class Transform(NamedTuple):
    """Payload-transform field (TOU-WIRE §2)."""

    type: int
    p_c_type: int
    data: int


def _layouts() -> dict[int, tuple[int, Mapping[int, int]]]:
    """Every accepted flags value -> (bytes its fields use, {mask: offset from header start})."""
    out: dict[int, tuple[int, Mapping[int, int]]] = {}
    for combo in range(1 << len(EXT_FIELDS)):
        flags, off, offsets = 0, BASE_LEN, {}
        for i, (mask, size) in enumerate(EXT_FIELDS):
            if combo >> i & 1:
                flags |= mask
                offsets[mask] = off
                off += size
        out[flags] = (off - BASE_LEN, offsets)
    return out


_LAYOUT = _layouts()


class GueHeader:
    """A parsed, accepted GUE header.

    ``start`` is where the header begins in the parsed buffer; ``payload_offset``
    is where the payload begins (both absolute). ``transform`` is ``None`` in the
    cleartext profile.
    """

    __slots__ = ("proto", "flags", "hlen", "transform", "start", "payload_offset", "_offsets")

    def __init__(self, proto: int, flags: int, hlen: int, transform: Transform | None,
                 start: int, payload_offset: int, offsets: Mapping[int, int]) -> None:
        self.proto = proto
        self.flags = flags
        self.hlen = hlen
        self.transform = transform
        self.start = start
        self.payload_offset = payload_offset
        self._offsets = offsets

    def field(self, data: bytes | bytearray | memoryview, mask: int) -> bytes | None:
        """Bytes of the extension field for flag ``mask``, or None if that flag is not set."""
        off = self._offsets.get(mask)
        if off is None:
            return None
        size = _FIELD_SIZE[mask]
        return bytes(data[self.start + off:self.start + off + size])

    def __repr__(self) -> str:
        return (f"GueHeader(proto={self.proto}, flags={self.flags:#06x}, hlen={self.hlen}, "
                f"transform={self.transform}, payload_offset={self.payload_offset})")


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> GueHeader | GueDrop:
    """Parse the GUE header at ``data[offset:]`` (the UDP payload) per TOU-WIRE §1.2 receive rules.

    Returns a :class:`GueHeader` or the :class:`GueDrop` reason. Never raises.
    """
    avail = len(data) - offset
    if offset < 0 or avail < BASE_LEN:
        return GueDrop.TOO_SHORT
    b0, proto, flags = _BASE.unpack_from(data, offset)
    variant = b0 >> 6
    if variant:
        return GueDrop.DIRECT_IP if variant == 1 else GueDrop.RESERVED_VARIANT
    hlen = b0 & 0x1F
    hdr_len = BASE_LEN + 4 * hlen
    if hdr_len > avail:
        return GueDrop.HLEN_OVERRUN
    layout = _LAYOUT.get(flags)
    if layout is None:
        return GueDrop.UNKNOWN_FLAGS
    used, offsets = layout
    if used > 4 * hlen:
        return GueDrop.FLAGS_OVERRUN
    if b0 & 0x20:
        return GueDrop.CONTROL
    transform = None
    if flags & FLAG_T:
        transform = Transform._make(_TRANSFORM.unpack_from(data, offset + offsets[FLAG_T]))
        if transform.type != TRANSFORM_DTLS or transform.p_c_type != PROTO_TCP:
            return GueDrop.UNSUPPORTED_TRANSFORM
    elif proto != PROTO_TCP:
        return GueDrop.UNSUPPORTED_PROTO
    return GueHeader(proto, flags, hlen, transform, offset, offset + hdr_len, offsets)


# --- encoders ---------------------------------------------------------------

PLAIN_HEADER_LEN: Final = BASE_LEN


def pack_plain_into(buf: bytearray | memoryview, offset: int = 0) -> int:
    """Write the cleartext header (variant 0, C 0, Hlen 0, Proto 6, Flags 0); return 4."""
    _BASE.pack_into(buf, offset, 0, PROTO_TCP, 0)
    return PLAIN_HEADER_LEN


def pack_header_into(buf: bytearray | memoryview, offset: int, proto: int,
                     fields: Mapping[int, bytes] | None = None) -> int:
    """Write a data-message header with the given extension ``fields`` ({flag mask: bytes}).

    Fields are placed in :data:`EXT_FIELDS` order and Hlen is derived. Raises
    :class:`LocalError` for an unknown flag or a field of the wrong size.
    Returns the header length.
    """
    fields = fields or {}
    for mask in fields:
        if mask not in _FIELD_SIZE:
            raise LocalError(f"unknown GUE flag {mask:#06x}")
    flags = 0
    off = offset + BASE_LEN
    for mask, size in EXT_FIELDS:
        value = fields.get(mask)
        if value is None:
            continue
        if len(value) != size:
            raise LocalError(f"GUE field {mask:#06x} needs {size} bytes, got {len(value)}")
        buf[off:off + size] = value
        flags |= mask
        off += size
    hdr_len = off - offset
    _BASE.pack_into(buf, offset, (hdr_len - BASE_LEN) // 4, proto, flags)
    return hdr_len


def encode_header(proto: int = PROTO_TCP, fields: Mapping[int, bytes] | None = None) -> bytes:
    """Convenience form of :func:`pack_header_into` returning bytes."""
    buf = bytearray(MAX_HEADER_LEN)
    n = pack_header_into(buf, 0, proto, fields)
    return bytes(buf[:n])


PLAIN_HEADER = encode_header(PROTO_TCP)
