"""SOCKS5 server codec (RFC 1928): exact bytes of messages, reply codes for every refusal."""

from __future__ import annotations

import asyncio

import pytest

from toucli import socks
from toucli.socks import Request, SocksError


# ------------------------------------------------------------ addresses
@pytest.mark.parametrize("host, encoded", [
    ("127.0.0.1", b"\x01\x7f\x00\x00\x01"),
    ("::1", b"\x04" + bytes(15) + b"\x01"),
    ("[::1]", b"\x04" + bytes(15) + b"\x01"),
    ("example.com", b"\x03\x0bexample.com"),
    ("localhost", b"\x03\x09localhost"),
])
def test_address_encoding(host: str, encoded: bytes) -> None:
    assert socks.encode_address(host) == encoded
    atyp, body = encoded[0], encoded[1:]
    assert socks.address_length(atyp, body[0] if atyp == socks.ATYP_DOMAIN else None) == len(body)
    assert socks.decode_address(atyp, body) == host.strip("[]")


def test_name_longer_than_255_bytes_is_rejected() -> None:
    with pytest.raises(ValueError):
        socks.encode_address("a" * 256)
    assert socks.encode_address("a" * 255)[:2] == b"\x03\xff"


def test_unknown_address_type_is_code_8() -> None:
    with pytest.raises(SocksError) as e:
        socks.address_length(0x02)
    assert e.value.code == socks.REP_ADDRESS_TYPE_NOT_SUPPORTED


# --------------------------------------------------------------- requests
def test_parse_connect_requests() -> None:
    assert socks.parse_request(b"\x05\x01\x00\x01\x0a\x00\x00\x02\x00\x50") == \
        Request(socks.CMD_CONNECT, socks.ATYP_IPV4, "10.0.0.2", 80)
    assert socks.parse_request(b"\x05\x01\x00\x03\x0bexample.com\x01\xbb") == \
        Request(socks.CMD_CONNECT, socks.ATYP_DOMAIN, "example.com", 443)
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    assert socks.parse_request(b"\x05\x01\x00\x04" + v6 + b"\x1f\x90") == \
        Request(socks.CMD_CONNECT, socks.ATYP_IPV6, "2001:db8::1", 8080)


@pytest.mark.parametrize("head, code", [
    (b"\x04\x01\x00\x01", socks.REP_GENERAL_FAILURE),            # wrong version
    (b"\x05\x01\x00\x02", socks.REP_ADDRESS_TYPE_NOT_SUPPORTED),  # ATYP 2 does not exist
    (b"\x05\x01\x00\x05", socks.REP_ADDRESS_TYPE_NOT_SUPPORTED),
])
def test_bad_request_heads(head: bytes, code: int) -> None:
    with pytest.raises(SocksError) as e:
        socks.parse_request_head(head)
    assert e.value.code == code


@pytest.mark.parametrize("cmd", [socks.CMD_BIND, socks.CMD_UDP_ASSOCIATE, 0x09])
def test_only_connect_is_supported(cmd: int) -> None:
    with pytest.raises(SocksError) as e:
        socks.check_command(cmd)
    assert e.value.code == socks.REP_COMMAND_NOT_SUPPORTED
    socks.check_command(socks.CMD_CONNECT)


def test_truncated_request() -> None:
    with pytest.raises(SocksError):
        socks.parse_request(b"\x05\x01\x00\x01\x0a\x00\x00")


def test_methods_and_replies() -> None:
    assert socks.choose_method(b"\x02\x00") == socks.METHOD_NO_AUTH
    assert socks.choose_method(b"\x02") == socks.METHOD_NONE_ACCEPTABLE
    assert socks.choose_method(b"") == socks.METHOD_NONE_ACCEPTABLE
    assert socks.method_reply(0) == b"\x05\x00"
    assert socks.encode_reply(socks.REP_SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks.encode_reply(socks.REP_CONNECTION_REFUSED) == b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks.encode_reply(0, "::1", 1080) == b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x04\x38"


def test_reply_codes_are_rfc_1928_values() -> None:
    assert [socks.REP_SUCCEEDED, socks.REP_GENERAL_FAILURE, socks.REP_NOT_ALLOWED, socks.REP_NETWORK_UNREACHABLE,
            socks.REP_HOST_UNREACHABLE, socks.REP_CONNECTION_REFUSED, socks.REP_TTL_EXPIRED,
            socks.REP_COMMAND_NOT_SUPPORTED, socks.REP_ADDRESS_TYPE_NOT_SUPPORTED] == list(range(9))


# ------------------------------------------------------------- negotiation
class Pipe:
    """The client's bytes to read from; what the server wrote."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.written = b""

    async def read_exactly(self, n: int) -> bytes:
        if len(self.data) < n:
            raise EOFError
        out, self.data = self.data[:n], self.data[n:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


def negotiate(data: bytes) -> tuple[Request | SocksError, Pipe]:
    pipe = Pipe(data)
    try:
        result: Request | SocksError = asyncio.run(socks.negotiate(pipe.read_exactly, pipe.write))
    except SocksError as exc:
        result = exc
    return result, pipe


def test_negotiate_connect_to_a_name() -> None:
    req, pipe = negotiate(b"\x05\x02\x02\x00" + b"\x05\x01\x00\x03\x09localhost\x00\x50" + b"GET")
    assert req == Request(socks.CMD_CONNECT, socks.ATYP_DOMAIN, "localhost", 80)
    assert pipe.written == b"\x05\x00"      # the success reply is the caller's, after connecting
    assert pipe.data == b"GET"               # nothing read past the request


def test_negotiate_bind_gets_0x07() -> None:
    err, pipe = negotiate(b"\x05\x01\x00" + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert isinstance(err, SocksError) and err.code == socks.REP_COMMAND_NOT_SUPPORTED
    assert pipe.written == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)


def test_negotiate_udp_associate_gets_0x07() -> None:
    err, pipe = negotiate(b"\x05\x01\x00" + b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
    assert isinstance(err, SocksError) and err.code == socks.REP_COMMAND_NOT_SUPPORTED
    assert pipe.written[2:4] == b"\x05\x07"


def test_negotiate_unknown_address_type_gets_0x08() -> None:
    err, pipe = negotiate(b"\x05\x01\x00" + b"\x05\x01\x00\x07")
    assert isinstance(err, SocksError) and err.code == socks.REP_ADDRESS_TYPE_NOT_SUPPORTED
    assert pipe.written == b"\x05\x00" + b"\x05\x08\x00\x01" + bytes(6)


def test_negotiate_without_no_auth_method() -> None:
    err, pipe = negotiate(b"\x05\x01\x02")
    assert isinstance(err, SocksError) and err.code is None
    assert pipe.written == b"\x05\xff"


def test_negotiate_socks4_is_not_answered() -> None:
    err, pipe = negotiate(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
    assert isinstance(err, SocksError) and err.code is None
    assert pipe.written == b""
