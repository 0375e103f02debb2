"""``--pcap FILE``: the inner TCP segments, decrypted, as an ordinary TCP capture.

Each segment the engine receives (after the GUE header and any DTLS record
are removed) or sends (before they are added) is written with a synthesized
IPv4 (RFC 791) or IPv6 (RFC 8200) header to a classic pcap file, link type
LINKTYPE_RAW (101: the packet starts with the IP header). Addresses are the
UDP ones of the tunnel (the peer's, and the local address the kernel uses
towards it); ports, sequence numbers, windows and options are the inner TCP's.
The TCP checksum is computed over the synthesized pseudo-header (RFC 9293
§3.1), so Wireshark sees valid packets, retransmissions and SACK blocks.

:class:`TapTransport` wraps any transport of :mod:`toucli.tunnel` and copies
segments to a :class:`PcapWriter`; nothing else in the runtime changes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from typing import Any, BinaryIO, Callable, Hashable

from toucli.stack.checksum import fold_checksum, ones_sum
from toucli.stack.segment import Segment
from toucli.stack.tcp import encode_segment_into, header_length

PCAP_MAGIC = 0xA1B2C3D4          # microsecond timestamps
PCAP_VERSION = (2, 4)
LINKTYPE_RAW = 101
SNAPLEN = 262144
PROTO_TCP = 6
TTL = 64

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")


def pack_ipv4_header(buf: bytearray, off: int, src: bytes, dst: bytes, payload_len: int, ident: int) -> None:
    """20-byte IPv4 header (RFC 791 §3.1) at ``off``: DF set, TTL 64, TCP, with its header checksum."""
    _IPV4.pack_into(buf, off, 0x45, 0, 20 + payload_len, ident & 0xFFFF, 0x4000, TTL, PROTO_TCP, 0, src, dst)
    _U16.pack_into(buf, off + 10, fold_checksum(ones_sum(memoryview(buf)[off:off + 20])))


def pack_ipv6_header(buf: bytearray, off: int, src: bytes, dst: bytes, payload_len: int) -> None:
    """40-byte IPv6 header (RFC 8200 §3) at ``off``: next header TCP, hop limit 64."""
    _IPV6.pack_into(buf, off, 6 << 28, payload_len, PROTO_TCP, TTL, src, dst)


def ipv4_header(src: bytes, dst: bytes, payload_len: int, ident: int) -> bytes:
    buf = bytearray(20)
    pack_ipv4_header(buf, 0, src, dst, payload_len, ident)
    return bytes(buf)


def _host_bytes(host: str) -> tuple[int, bytes]:
    """(4 or 6, packed address); IPv4-mapped IPv6 becomes IPv4."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, ip.packed


def _route_source(host: str, version: int) -> bytes | None:
    """The local address the kernel would send from towards ``host`` (no packet is sent)."""
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((host, 9))
        return _host_bytes(s.getsockname()[0])[1]
    except OSError:
        return None
    finally:
        s.close()


class PcapWriter:
    """A classic pcap file of raw IP packets (LINKTYPE_RAW)."""

    def __init__(self, out: BinaryIO | str, *, local: Callable[[], Any] | Any = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._own = isinstance(out, str)
        self.f: BinaryIO = open(out, "wb") if isinstance(out, str) else out
        self.f.write(_FILE_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, SNAPLEN, LINKTYPE_RAW))
        self.local = local               # our UDP address, or a callable returning it
        self.clock = clock
        self.packets = 0
        self._ident = 0
        self._pairs: dict[Any, tuple[int, bytes, bytes]] = {}

    def _addresses(self, peer_addr: Any) -> tuple[int, bytes, bytes]:
        """(IP version, our address, peer address) for a peer's UDP address, cached."""
        found = self._pairs.get(peer_addr)
        if found is not None:
            return found
        host = str(peer_addr[0]) if isinstance(peer_addr, tuple) else "0.0.0.0"
        try:
            version, theirs = _host_bytes(host)
        except ValueError:
            version, theirs = 4, bytes(4)
        ours = None
        local = self.local() if callable(self.local) else self.local
        if isinstance(local, tuple):
            try:
                lv, lb = _host_bytes(str(local[0]))
                if lv == version and any(lb):
                    ours = lb
            except ValueError:
                pass
        if ours is None:
            ours = _route_source(host, version) or bytes(4 if version == 4 else 16)
        found = (version, ours, theirs)
        self._pairs[peer_addr] = found
        return found

    def write_segment(self, seg: Segment, peer_addr: Any, outgoing: bool, ts: float | None = None) -> None:
        """One TCP segment between us and ``peer_addr`` (the UDP address), in the given direction."""
        version, ours, theirs = self._addresses(peer_addr)
        src, dst = (ours, theirs) if outgoing else (theirs, ours)
        iplen = 20 if version == 4 else 40
        tcplen = header_length(seg) + len(seg.payload)
        n = iplen + tcplen
        buf = bytearray(_RECORD_HEADER.size + n)
        t = self.clock() if ts is None else ts
        sec = int(t)
        _RECORD_HEADER.pack_into(buf, 0, sec, int((t - sec) * 1e6), n, n)
        off = _RECORD_HEADER.size
        if version == 4:
            self._ident += 1
            pack_ipv4_header(buf, off, src, dst, tcplen, self._ident)
        else:
            pack_ipv6_header(buf, off, src, dst, tcplen)
        encode_segment_into(seg, buf, off + iplen, src=src, dst=dst)
        self.f.write(buf)
        self.packets += 1

    def flush(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush()
        if self._own:
            self.f.close()


class TapTransport:
    """A transport that copies every decoded and every encoded segment to a :class:`PcapWriter`.

    Everything else is the wrapped transport's (attribute access is delegated).
    """

    def __init__(self, inner: Any, writer: PcapWriter) -> None:
        self.inner = inner
        self.writer = writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, data: memoryview, addr: Any, now: float, out: list) -> None:
        n = len(out)
        self.inner.decode(data, addr, now, out)
        if len(out) > n:
            t = self.writer.clock()
            for peer, seg in out[n:]:
                self.writer.write_segment(seg, getattr(peer, "peer_addr", peer), False, t)

    def encode(self, peer: Hashable, seg: Segment) -> Any:
        self.writer.write_segment(seg, getattr(peer, "peer_addr", peer), True)
        return self.inner.encode(peer, seg)


__all__ = ["PcapWriter", "TapTransport", "ipv4_header", "pack_ipv4_header", "pack_ipv6_header", "LINKTYPE_RAW"]
