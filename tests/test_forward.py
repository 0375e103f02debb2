"""Forwarding pieces: ssh forward specs, permit rules, the target-request codec (docs/PROTOCOL.md §10)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from toucli import forward as fw
from toucli.forward import DynamicForward, LocalForward, Permits, RemoteForward, SpecError


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize("text, expected", [
    ("8080:localhost:80", LocalForward(None, 8080, "localhost", 80)),
    ("127.0.0.1:8080:example.com:443", LocalForward("127.0.0.1", 8080, "example.com", 443)),
    (":8080:h:1", LocalForward("", 8080, "h", 1)),
    ("*:8080:h:1", LocalForward("*", 8080, "h", 1)),
    ("[::1]:8080:[2001:db8::1]:80", LocalForward("::1", 8080, "2001:db8::1", 80)),
    ("8080:[::1]:65535", LocalForward(None, 8080, "::1", 65535)),
])
def test_parse_local(text: str, expected: LocalForward) -> None:
    got = fw.parse_local(text)
    assert (got.bind, got.port, got.host, got.hostport) == (expected.bind, expected.port, expected.host,
                                                            expected.hostport)
    assert got.text == text


@pytest.mark.parametrize("text, words", [
    ("8080", "expected [bind_address:]port:host:hostport"),
    ("8080:localhost", "expected"),
    ("a:b:8080:localhost:80", "expected"),
    ("0:localhost:80", "out of range"),
    ("70000:localhost:80", "out of range"),
    ("8080:localhost:0", "out of range"),
    ("http:localhost:80", "not a number"),
    ("8080::80", "empty host"),
    ("8080:[::1:80", "unclosed"),
    ("8080:::1:80", "expected"),
    ("8080:[::1]x:80", "':' expected"),
])
def test_parse_local_errors(text: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        fw.parse_local(text)
    assert words in str(e.value) and text in str(e.value)


def test_parse_remote_allows_port_zero() -> None:
    assert fw.parse_remote("0:localhost:22") == RemoteForward(None, 0, "localhost", 22, "0:localhost:22")
    r = fw.parse_remote("[::]:2222:10.0.0.1:22")
    assert (r.bind, r.port) == ("::", 2222)


def test_remote_bind_sent_to_the_server() -> None:
    assert fw.remote_bind(fw.parse_remote("1:h:2")) == "localhost"       # ssh: loopback by default
    assert fw.remote_bind(fw.parse_remote(":1:h:2")) == "*"
    assert fw.remote_bind(fw.parse_remote("*:1:h:2")) == "*"
    assert fw.remote_bind(fw.parse_remote("10.1.2.3:1:h:2")) == "10.1.2.3"


def test_parse_dynamic() -> None:
    assert fw.parse_dynamic("1080") == DynamicForward(None, 1080, "1080")
    assert fw.parse_dynamic("[::1]:1080").bind == "::1"
    assert fw.parse_dynamic("*:1080").bind == "*"
    for bad in ("", "x", "1:2:3", "0", "65536"):
        with pytest.raises(SpecError):
            fw.parse_dynamic(bad)


def test_parse_endpoint() -> None:
    assert fw.parse_endpoint("example.net:7000") == ("example.net", 7000)
    assert fw.parse_endpoint("[::1]:7000") == ("::1", 7000)
    assert fw.parse_endpoint("7000", host_required=False) == (None, 7000)
    assert fw.parse_endpoint("0.0.0.0:7000", host_required=False) == ("0.0.0.0", 7000)
    for bad in ("7000", "::1:7000", "host:", "host:port", "host:99999"):
        with pytest.raises(SpecError):
            fw.parse_endpoint(bad)


# ---------------------------------------------------------------- permits
def test_no_rule_permits_any_like_sshd() -> None:
    p = Permits()
    assert p.allows("anything.example", 1) and p.describe() == "any"


def test_none_permits_nothing() -> None:
    p = Permits(["none"])
    assert not p.allows("localhost", 80) and p.describe() == "none"
    with pytest.raises(SpecError):
        Permits(["none", "localhost:80"])


def test_permit_patterns() -> None:
    p = Permits(["localhost:80", "*:443", "db.internal:*", "[::1]:22", "10.0.0.1:5432"])
    assert p.allows("localhost", 80)
    assert p.allows("LOCALHOST", 80)                 # names are case-insensitive
    assert not p.allows("localhost", 81)
    assert not p.allows("127.0.0.1", 80)             # no resolution: the name as the client gave it
    assert p.allows("example.com", 443)
    assert p.allows("db.internal", 1) and p.allows("db.internal", 65535)
    assert not p.allows("db.internal2", 1)
    assert p.allows("0:0::1", 22)                    # IP literals compare by value
    assert not p.allows("::2", 22)
    assert p.allows("10.0.0.1", 5432) and not p.allows("10.0.0.10", 5432)
    assert p.describe() == "localhost:80, *:443, db.internal:*, [::1]:22, 10.0.0.1:5432"


@pytest.mark.parametrize("bad", ["localhost", "localhost:http", ":80", "a:b:c", "*:0"])
def test_bad_permit_rules(bad: str) -> None:
    with pytest.raises(SpecError) as e:
        fw.parse_permit(bad)
    assert "--permit-open" in str(e.value)


# ---------------------------------------------------------- request codec
def read_from(data: bytes):
    buf = bytearray(data)

    async def read_exactly(n: int) -> bytes:
        if len(buf) < n:
            raise EOFError
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return read_exactly, buf


def test_request_bytes() -> None:
    assert fw.encode_request(fw.TYPE_CONNECT, "127.0.0.1", 80) == bytes.fromhex("0101017f0000010050")
    assert fw.encode_request(fw.TYPE_CONNECT, "example.com", 443) == b"\x01\x01\x03\x0bexample.com\x01\xbb"
    assert fw.encode_request(fw.TYPE_LISTEN, "localhost", 0) == b"\x01\x02\x03\x09localhost\x00\x00"
    assert fw.encode_request(fw.TYPE_FORWARDED, "::1", 8080) == b"\x01\x03\x04" + bytes(15) + b"\x01\x1f\x90"


@pytest.mark.parametrize("rtype, host, port", [
    (fw.TYPE_CONNECT, "192.0.2.7", 1), (fw.TYPE_CONNECT, "2001:db8::7", 65535),
    (fw.TYPE_LISTEN, "*", 0), (fw.TYPE_FORWARDED, "some.name", 22),
])
def test_request_round_trip_reads_nothing_more(rtype: int, host: str, port: int) -> None:
    read, rest = read_from(fw.encode_request(rtype, host, port) + b"payload")
    req = asyncio.run(fw.read_request(read))
    assert req == fw.TargetRequest(rtype, host, port)
    assert rest == b"payload"


@pytest.mark.parametrize("data, status", [
    (b"\x02\x01\x01\x7f\x00\x00\x01\x00\x50", fw.STATUS_BAD_REQUEST),          # version 2
    (b"\x01\x01\x02\x7f\x00\x00\x01\x00\x50", fw.STATUS_ADDRESS_NOT_SUPPORTED),  # ATYP 2
    (b"\x01\x01\x03\x00\x00\x50", fw.STATUS_BAD_REQUEST),                       # empty name
    (b"\x01\x09\x01\x7f\x00\x00\x01\x00\x50", fw.STATUS_NOT_SUPPORTED),         # type 9
])
def test_bad_requests_name_their_status(data: bytes, status: int) -> None:
    read, _ = read_from(data)
    with pytest.raises(fw.RequestError) as e:
        asyncio.run(fw.read_request(read))
    assert e.value.status == status


def test_truncated_request_is_eof() -> None:
    read, _ = read_from(b"\x01\x01\x03\x0bexample")
    with pytest.raises(EOFError):
        asyncio.run(fw.read_request(read))


def test_status_bytes() -> None:
    assert fw.encode_status(fw.STATUS_OK) == b"\x00"
    assert fw.encode_status(fw.STATUS_OK, port=8080) == b"\x00\x1f\x90"
    assert fw.encode_status(fw.STATUS_NOT_ALLOWED, "no") == b"\x02\x02no"
    assert fw.encode_status(fw.STATUS_REFUSED) == b"\x05\x00"
    long = fw.encode_status(fw.STATUS_FAILURE, "é" * 200)      # 400 bytes of UTF-8: cut at a character
    assert long[1] == 254 and long[2:].decode("utf-8") == "é" * 127


def test_status_round_trip() -> None:
    for data, with_port, expected in [
        (b"\x00", False, (0, "", None)),
        (b"\x00\x00\x16", True, (0, "", 22)),
        (b"\x02\x0bnot allowed", False, (2, "not allowed", None)),
        (b"\x05\x00", True, (5, "", None)),
    ]:
        read, rest = read_from(data + b"x")
        assert asyncio.run(fw.read_status(read, with_port=with_port)) == expected
        assert rest == b"x"


def test_parse_status_takes_only_the_status_off_a_pipelined_stream() -> None:
    # what a pipelined bridge sees: the status, then the target's bytes in the same read
    assert fw.parse_status(b"\x00HTTP/1.1") == (0, "", 1)
    assert fw.parse_status(b"\x02\x0bnot allowed") == (2, "not allowed", 13)
    assert fw.parse_status(b"\x05\x00") == (5, "", 2)
    for incomplete in (b"", b"\x05", b"\x02\x0bnot allowe"):
        assert fw.parse_status(incomplete) is None


def test_status_for_errors() -> None:
    assert fw.status_for(ConnectionRefusedError(errno.ECONNREFUSED, "x")) == 5
    assert fw.status_for(OSError(errno.ENETUNREACH, "x")) == 3
    assert fw.status_for(OSError(errno.EHOSTUNREACH, "x")) == 4
    assert fw.status_for(OSError(errno.ETIMEDOUT, "x")) == 6
    assert fw.status_for(asyncio.TimeoutError()) == 6
    assert fw.status_for(socket.gaierror(socket.EAI_NONAME, "x")) == 4
    assert fw.status_for(OSError(errno.EACCES, "x")) == 2
    assert fw.status_for(OSError(errno.EIO, "x")) == 1


def test_dial_maps_refused_and_unresolvable() -> None:
    with socket.socket() as s:          # a port with nothing listening: bound, never listen()ed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(fw.DialError) as e:
            asyncio.run(fw.dial("127.0.0.1", port, 5))
    assert e.value.status == fw.STATUS_REFUSED and "Connection refused" in str(e.value)
    with pytest.raises(fw.DialError) as e:
        asyncio.run(fw.dial("no-such-host.invalid", 80, 5))
    assert e.value.status == fw.STATUS_HOST_UNREACHABLE and "cannot resolve" in str(e.value)


# ------------------------------------------------------------ local binds
def test_bind_addresses_follow_ssh() -> None:
    lo = fw.bind_addresses(None, False, socket.AF_INET)
    assert lo == [(socket.AF_INET, "127.0.0.1")]
    assert fw.bind_addresses("localhost", True, socket.AF_INET) == lo
    assert fw.bind_addresses(None, True, socket.AF_INET) == [(socket.AF_INET, "0.0.0.0")]
    assert fw.bind_addresses("*", False, socket.AF_INET) == [(socket.AF_INET, "0.0.0.0")]
    assert fw.bind_addresses("", False, socket.AF_INET) == [(socket.AF_INET, "0.0.0.0")]
    assert fw.bind_addresses("127.0.0.2", False) == [(socket.AF_INET, "127.0.0.2")]
    if socket.has_ipv6:
        assert (socket.AF_INET6, "::1") in fw.bind_addresses(None, False)


def test_bind_tcp_port_zero_is_one_port_on_every_loopback() -> None:
    socks_ = fw.bind_tcp(None, 0)
    try:
        assert len({s.getsockname()[1] for s in socks_}) == 1
        assert {s.getsockname()[0] for s in socks_} <= {"127.0.0.1", "::1"}
    finally:
        for s in socks_:
            s.close()


def test_bind_tcp_in_use_raises() -> None:
    first = fw.bind_tcp("127.0.0.1", 0)
    try:
        with pytest.raises(OSError) as e:
            fw.bind_tcp("127.0.0.1", first[0].getsockname()[1])
        assert e.value.errno == errno.EADDRINUSE
    finally:
        for s in first:
            s.close()
