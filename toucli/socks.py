"""SOCKS version 5 (RFC 1928), server side, no authentication, CONNECT only.

The codec is sans-I/O: functions take the bytes read so far and say how many
more are needed, or raise :class:`SocksError` carrying the reply code to send.
:func:`negotiate` drives them over any stream with ``read(n)`` / ``write(data)``.

The address encoding (ATYP + address, RFC 1928 §5) is also the address
encoding of tou's forwarding requests (docs/PROTOCOL.md §10), so it lives here.

Messages (RFC 1928 §3-§6)::

    greeting   VER=5 NMETHODS METHODS[NMETHODS]
    choice     VER=5 METHOD                  (0x00 no auth, 0xFF none acceptable)
    request    VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
    reply      VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

VERSION = 5

# RFC 1928 §3: methods
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF

# RFC 1928 §4: commands
CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03

# RFC 1928 §5: address types
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

# RFC 1928 §6: reply codes
REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

REPLY_TEXT = {
    REP_SUCCEEDED: "succeeded",
    REP_GENERAL_FAILURE: "general failure",
    REP_NOT_ALLOWED: "connection not allowed by ruleset",
    REP_NETWORK_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_CONNECTION_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired",
    REP_COMMAND_NOT_SUPPORTED: "command not supported",
    REP_ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

_PORT = struct.Struct("!H")
_REQUEST_HEAD = struct.Struct("!BBBB")     # VER CMD RSV ATYP
_REPLY_HEAD = struct.Struct("!BBBB")       # VER REP RSV ATYP


class SocksError(Exception):
    """A request we answer with reply code ``code`` (or, with ``code=None``, by closing)."""

    def __init__(self, message: str, code: int | None = REP_GENERAL_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """A parsed SOCKS5 request: ``host`` is an IP literal (v4 or v6) or a domain name."""

    command: int
    atyp: int
    host: str
    port: int


# ----------------------------------------------------------- address codec
def encode_address(host: str) -> bytes:
    """ATYP + address (RFC 1928 §5): IP literals as 4 or 16 bytes, anything else as a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 0 < len(name) <= 255:
            raise ValueError(f"host name must be 1 to 255 bytes: {host!r}")
        return bytes((ATYP_DOMAIN, len(name))) + name
    if ip.version == 4:
        return bytes((ATYP_IPV4,)) + ip.packed
    return bytes((ATYP_IPV6,)) + ip.packed


def address_length(atyp: int, first: int | None = None) -> int:
    """Bytes of the address after ATYP; for a name pass its length byte ``first`` (counted too).

    Raises :class:`SocksError` with code 0x08 for an unknown address type.
    """
    if atyp == ATYP_IPV4:
        return 4
    if atyp == ATYP_IPV6:
        return 16
    if atyp == ATYP_DOMAIN:
        return 1 if first is None else 1 + first
    raise SocksError(f"address type {atyp:#04x} not supported", REP_ADDRESS_TYPE_NOT_SUPPORTED)


def decode_address(atyp: int, data: bytes | memoryview) -> str:
    """The host of an encoded address (``data`` without ATYP; a name includes its length byte)."""
    if atyp == ATYP_IPV4:
        return str(ipaddress.IPv4Address(bytes(data[:4])))
    if atyp == ATYP_IPV6:
        return str(ipaddress.IPv6Address(bytes(data[:16])))
    if atyp == ATYP_DOMAIN:
        n = data[0]
        if n == 0:
            raise SocksError("empty host name", REP_GENERAL_FAILURE)
        raw = bytes(data[1:1 + n])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise SocksError(f"host name is not ASCII: {raw!r}", REP_GENERAL_FAILURE) from None
    raise SocksError(f"address type {atyp:#04x} not supported", REP_ADDRESS_TYPE_NOT_SUPPORTED)


# ------------------------------------------------------------------ codec
def parse_greeting_head(data: bytes) -> int:
    """``VER NMETHODS`` -> the number of method bytes that follow."""
    if data[0] != VERSION:
        raise SocksError(f"not SOCKS5 (version byte {data[0]:#04x})", None)
    return data[1]


def choose_method(methods: bytes) -> int:
    """The only method tou offers is "no authentication" (RFC 1928 §3)."""
    return METHOD_NO_AUTH if METHOD_NO_AUTH in methods else METHOD_NONE_ACCEPTABLE


def method_reply(method: int) -> bytes:
    return bytes((VERSION, method))


def parse_request_head(data: bytes) -> tuple[int, int]:
    """``VER CMD RSV ATYP`` -> (command, atyp); checks the version and the address type."""
    ver, cmd, _rsv, atyp = _REQUEST_HEAD.unpack_from(data)
    if ver != VERSION:
        raise SocksError(f"request version {ver:#04x} is not 5", REP_GENERAL_FAILURE)
    address_length(atyp)          # raises 0x08 for an unknown type
    return cmd, atyp


def check_command(cmd: int) -> None:
    """Only CONNECT: BIND and UDP ASSOCIATE (and anything else) get 0x07 (RFC 1928 §6)."""
    if cmd != CMD_CONNECT:
        name = {CMD_BIND: "BIND", CMD_UDP_ASSOCIATE: "UDP ASSOCIATE"}.get(cmd, f"{cmd:#04x}")
        raise SocksError(f"command {name} not supported", REP_COMMAND_NOT_SUPPORTED)


def parse_request(data: bytes | memoryview) -> Request:
    """A whole request message (for tests and callers that buffered it)."""
    cmd, atyp = parse_request_head(bytes(data[:4]))
    body = data[4:]
    need = address_length(atyp, body[0] if atyp == ATYP_DOMAIN else None)
    if len(body) < need + 2:
        raise SocksError("truncated request", None)
    host = decode_address(atyp, body[:need])
    (port,) = _PORT.unpack_from(body, need)
    return Request(cmd, atyp, host, port)


def encode_reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """``VER REP RSV ATYP BND.ADDR BND.PORT``."""
    return bytes((VERSION, code, 0)) + encode_address(host) + _PORT.pack(port)


# ---------------------------------------------------------------- driver
ReadExactly = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


async def negotiate(read_exactly: ReadExactly, write: Write) -> Request:
    """Method selection and the request; returns a CONNECT request still to be answered.

    Error replies for unsupported commands and address types are sent here, then
    :class:`SocksError` is raised (the caller closes). ``read_exactly`` raises
    :class:`EOFError` when the client goes away.
    """
    n = parse_greeting_head(await read_exactly(2))
    methods = await read_exactly(n) if n else b""
    method = choose_method(methods)
    await write(method_reply(method))
    if method == METHOD_NONE_ACCEPTABLE:
        raise SocksError("client offers no method tou supports (only 'no authentication')", None)
    head = await read_exactly(4)
    try:
        cmd, atyp = parse_request_head(head)
    except SocksError as exc:
        await write(encode_reply(exc.code or REP_GENERAL_FAILURE))
        raise
    first = await read_exactly(1)
    rest_len = address_length(atyp, first[0] if atyp == ATYP_DOMAIN else None) - 1
    rest = await read_exactly(rest_len + 2)
    try:
        req = parse_request(head + first + rest)
        check_command(cmd)
    except SocksError as exc:
        if exc.code is not None:
            await write(encode_reply(exc.code))
        raise
    return req
