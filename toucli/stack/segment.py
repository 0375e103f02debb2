"""The TCP segment as the engine sees it (RFC 9293 §3.1).

A ``Segment`` is the unit that goes into and comes out of the sans-I/O engine.
Its payload may be a read-only view (of a decrypted record, or of what the
application wrote): it is never changed, and copied only where it must outlive that.
Codecs in :mod:`toucli.stack.tcp` turn it into bytes and back. Option fields are
``None`` when the option is absent. ``wnd`` is the raw 16-bit window field as it
travels on the wire (unscaled).
"""

from __future__ import annotations

from typing import Final

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

Buffer = bytes | bytearray | memoryview   # a payload: bytes, or a view of bytes nobody changes

_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"), (ECE, "E"), (CWR, "W"))


class Segment:
    """One TCP segment: header fields, parsed options and payload."""

    __slots__ = (
        "sport", "dport", "seq", "ack", "flags", "wnd", "urg",
        "mss", "wscale", "sack_perm", "sack", "tsval", "tsecr", "tfo_cookie",
        "payload",
    )

    def __init__(
        self,
        sport: int = 0,
        dport: int = 0,
        seq: int = 0,
        ack: int = 0,
        flags: int = 0,
        wnd: int = 0,
        payload: Buffer = b"",
        *,
        urg: int = 0,
        mss: int | None = None,
        wscale: int | None = None,
        sack_perm: bool = False,
        sack: tuple[tuple[int, int], ...] | None = None,
        tsval: int | None = None,
        tsecr: int | None = None,
        tfo_cookie: bytes | None = None,
    ) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.urg = urg
        self.mss = mss
        self.wscale = wscale
        self.sack_perm = sack_perm
        self.sack = sack
        self.tsval = tsval
        self.tsecr = tsecr
        self.tfo_cookie = tfo_cookie
        self.payload = payload

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload length plus one for each of SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def _key(self) -> tuple:
        return tuple(getattr(self, s) if s != "payload" else bytes(self.payload) for s in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and self._key() == other._key()

    def __hash__(self) -> int:  # pragma: no cover - segments are not used as keys
        return hash(self._key())

    def __repr__(self) -> str:
        fl = "".join(n for b, n in _FLAG_NAMES if self.flags & b) or "-"
        parts = [f"{self.sport}>{self.dport}", f"[{fl}]", f"seq={self.seq}"]
        if self.flags & ACK:
            parts.append(f"ack={self.ack}")
        parts.append(f"wnd={self.wnd}")
        for name in ("mss", "wscale", "sack", "tsval", "tsecr", "tfo_cookie"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v!r}")
        if self.sack_perm:
            parts.append("sack_perm")
        if self.payload:
            parts.append(f"len={len(self.payload)}")
        return "Segment(" + " ".join(parts) + ")"
