"""Port forwarding over a tunnel, like ssh ``-L``/``-R``/``-D`` (docs/PROTOCOL.md §10).

Every forwarded TCP connection is its own inner TCP connection to inner port
:data:`FORWARD_PORT`. It starts with a *target request* naming what to do and
where (connect to host:port, listen on bind:port, or "this arrived on your
remote listener"), answered by a one-byte status. ``-L`` and ``-R`` connections
pipeline: the request and the local application's first bytes ride in the SYN
(TCP Fast Open) and data flows before the status arrives; ``-D`` waits for it,
because SOCKS must answer its client first.

Parts, each usable alone:

* forward specs (``[bind:]port:host:hostport``, ssh syntax) and ``HOST:PORT``
  parsing, IPv6 literals in brackets: :func:`parse_local`, :func:`parse_remote`,
  :func:`parse_dynamic`, :func:`parse_endpoint`;
* permit rules like sshd's ``PermitOpen``: :class:`Permits`;
* the target-request codec: :func:`encode_request`, :func:`read_request`,
  :func:`encode_status`, :func:`read_status`;
* local TCP plumbing: :func:`bind_tcp`, :func:`dial`;
* the two roles on a :class:`~toucli.tunnel.Tunnel`: :class:`ForwardServer`
  (``tou forward --serve``) and :class:`ForwardClient` (``tou forward PEER``),
  the client with :class:`Link`, which re-handshakes when a secure session dies.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable

from toucli import socks
from toucli.stack.connection import tfo_syn_room
from toucli.tunnel import (
    AuthenticationError, Channel, FdStream, Tunnel, TunnelError, format_address, splice,
)

FORWARD_PORT = 2               # inner TCP port of the forwarding service (docs/PROTOCOL.md §9)
REQUEST_VERSION = 1

# request types (docs/PROTOCOL.md §10.1)
TYPE_CONNECT = 1               # client -> server: connect to host:port
TYPE_LISTEN = 2                # client -> server: listen on bind:port; the connection stays open
TYPE_FORWARDED = 3             # server -> client: a connection arrived on that listener
TYPE_NAMES = {TYPE_CONNECT: "CONNECT", TYPE_LISTEN: "LISTEN", TYPE_FORWARDED: "FORWARDED"}

# status codes (docs/PROTOCOL.md §10.2): 0-8 are the SOCKS5 reply codes (RFC 1928 §6)
STATUS_OK = socks.REP_SUCCEEDED
STATUS_FAILURE = socks.REP_GENERAL_FAILURE
STATUS_NOT_ALLOWED = socks.REP_NOT_ALLOWED
STATUS_NETWORK_UNREACHABLE = socks.REP_NETWORK_UNREACHABLE
STATUS_HOST_UNREACHABLE = socks.REP_HOST_UNREACHABLE
STATUS_REFUSED = socks.REP_CONNECTION_REFUSED
STATUS_TIMEOUT = socks.REP_TTL_EXPIRED
STATUS_NOT_SUPPORTED = socks.REP_COMMAND_NOT_SUPPORTED
STATUS_ADDRESS_NOT_SUPPORTED = socks.REP_ADDRESS_TYPE_NOT_SUPPORTED
STATUS_BAD_REQUEST = 0x09      # malformed request or unknown version

MAX_REASON = 255
REQUEST_TIMEOUT = 10.0         # a peer must send its whole request within this
CLOSE_GRACE = 5.0              # a refused channel's FIN exchange may take this long
RETRY_DELAY = 1.0              # between reconnection / re-registration attempts
FIRST_DATA_WAIT = 0.010        # how long a new local connection may take to send its first bytes,
                               # which then ride in the SYN with the request (Fast Open)
ALL_INTERFACES = "*"
LOOPBACK = "localhost"

_PORT = struct.Struct("!H")


# ============================================================== forward specs
class SpecError(ValueError):
    """A malformed forward spec or endpoint (a usage error)."""


@dataclass(frozen=True)
class LocalForward:
    """``-L [bind:]port:host:hostport``: listen here, the server dials host:hostport."""

    bind: str | None
    port: int
    host: str
    hostport: int
    text: str = ""


@dataclass(frozen=True)
class RemoteForward:
    """``-R [bind:]port:host:hostport``: the server listens, this side dials host:hostport."""

    bind: str | None
    port: int
    host: str
    hostport: int
    text: str = ""


@dataclass(frozen=True)
class DynamicForward:
    """``-D [bind:]port``: a local SOCKS5 server; the server resolves and dials."""

    bind: str | None
    port: int
    text: str = ""


def split_fields(text: str) -> list[str]:
    """Split at ``:`` outside brackets; ``[::1]`` becomes ``::1``."""
    fields: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "[" and cur == "":
            end = text.find("]", i)
            if end < 0:
                raise SpecError(f"unclosed '[' in {text!r}")
            inner = text[i + 1:end]
            if not inner:
                raise SpecError(f"empty brackets in {text!r}")
            if end + 1 < len(text) and text[end + 1] != ":":
                raise SpecError(f"':' expected after ']' in {text!r}")
            fields.append(inner)
            i = end + 2
            if end + 1 == len(text):
                return fields
            continue
        if c == ":":
            fields.append(cur)
            cur = ""
        elif c in "[]":
            raise SpecError(f"unexpected {c!r} in {text!r} (IPv6 addresses go in brackets: [::1])")
        else:
            cur += c
        i += 1
    fields.append(cur)
    return fields


def parse_port(text: str, what: str = "port", *, zero: bool = False) -> int:
    if not text.isdigit():
        raise SpecError(f"{what} {text!r} is not a number")
    port = int(text)
    if not (0 if zero else 1) <= port <= 65535:
        raise SpecError(f"{what} {port} out of range ({0 if zero else 1}-65535)")
    return port


def _host(text: str, what: str) -> str:
    if not text:
        raise SpecError(f"empty {what}")
    if len(text.encode("idna") if not text.isascii() else text) > 255:
        raise SpecError(f"{what} longer than 255 bytes")
    return text


def _forward(text: str, cls: type, option: str) -> Any:
    fields = split_fields(text)
    if len(fields) == 3:
        bind = None
    elif len(fields) == 4:
        bind = fields.pop(0)
    else:
        raise SpecError(f"{option} {text!r}: expected [bind_address:]port:host:hostport")
    try:
        port = parse_port(fields[0], "port", zero=cls is RemoteForward)
        host = _host(fields[1], "host")
        hostport = parse_port(fields[2], "hostport")
    except SpecError as exc:
        raise SpecError(f"{option} {text!r}: {exc}") from None
    return cls(bind, port, host, hostport, text)


def parse_local(text: str) -> LocalForward:
    """ssh's ``-L [bind_address:]port:host:hostport``."""
    return _forward(text, LocalForward, "-L")


def parse_remote(text: str) -> RemoteForward:
    """ssh's ``-R [bind_address:]port:host:hostport``; port 0 lets the server pick one."""
    return _forward(text, RemoteForward, "-R")


def parse_dynamic(text: str) -> DynamicForward:
    """ssh's ``-D [bind_address:]port``."""
    fields = split_fields(text)
    if len(fields) == 1:
        bind = None
    elif len(fields) == 2:
        bind = fields.pop(0)
    else:
        raise SpecError(f"-D {text!r}: expected [bind_address:]port")
    try:
        port = parse_port(fields[0])
    except SpecError as exc:
        raise SpecError(f"-D {text!r}: {exc}") from None
    return DynamicForward(bind, port, text)


def parse_endpoint(text: str, *, host_required: bool = True) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[v6]:PORT``), or with ``host_required=False`` also ``PORT`` alone."""
    fields = split_fields(text)
    if len(fields) == 1 and not host_required:
        return None, parse_port(fields[0])
    if len(fields) != 2:
        raise SpecError(f"{text!r}: expected {'HOST:PORT' if host_required else '[ADDR:]PORT'}"
                        " (IPv6 in brackets: [::1]:PORT)")
    return _host(fields[0], "host"), parse_port(fields[1])


# ==================================================================== permits
@dataclass(frozen=True)
class Permit:
    """One ``--permit-open`` rule: ``host`` or ``None`` (``*``), ``port`` or ``None`` (``*``)."""

    host: str | None
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return self.host is None or same_host(self.host, host)


def same_host(a: str, b: str) -> bool:
    """Names compare case-insensitively; IP literals by value (``::1`` == ``0::1``). No DNS."""
    a, b = a.strip("[]"), b.strip("[]")
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.rstrip(".").lower() == b.rstrip(".").lower()


class Permits:
    """Which targets the server may connect to, like sshd's ``PermitOpen``.

    Rules: ``HOST:PORT`` with ``*`` for any host or any port, ``any`` (the
    default when no rule is given) or ``none``. A target is permitted when any
    rule matches the host *as the client named it*: no resolution, so
    ``localhost:80`` does not permit ``127.0.0.1:80``.
    """

    def __init__(self, rules: list[str] | tuple[str, ...] = ()) -> None:
        self.any = not rules
        self.rules: list[Permit] = []
        words = [r.strip() for r in rules]
        if "none" in words and len(words) > 1:
            raise SpecError("--permit-open none cannot be combined with other rules")
        for r in words:
            if r == "any":
                self.any = True
            elif r == "none":
                self.any = False
            else:
                self.rules.append(parse_permit(r))

    def allows(self, host: str, port: int) -> bool:
        return self.any or any(p.matches(host, port) for p in self.rules)

    def describe(self) -> str:
        if self.any:
            return "any"
        if not self.rules:
            return "none"
        return ", ".join(f"{_show_host(p.host or '*')}:{p.port or '*'}" for p in self.rules)


def parse_permit(text: str) -> Permit:
    try:
        fields = split_fields(text)
        if len(fields) != 2:
            raise SpecError("expected HOST:PORT")
        host = None if fields[0] == "*" else _host(fields[0], "host")
        port = None if fields[1] == "*" else parse_port(fields[1])
    except SpecError as exc:
        raise SpecError(f"--permit-open {text!r}: {exc} ('*' for any host or port; 'any'; 'none')") from None
    return Permit(host, port)


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def show(host: str, port: int) -> str:
    return f"{_show_host(host)}:{port}"


# ============================================================ request codec
@dataclass(frozen=True)
class TargetRequest:
    """The request at the start of a forwarding connection (docs/PROTOCOL.md §10.1)."""

    type: int
    host: str
    port: int

    def describe(self) -> str:
        return f"{TYPE_NAMES.get(self.type, hex(self.type))} {show(self.host, self.port)}"


class RequestError(Exception):
    """A request we answer with ``status`` (the message is sent as the reason)."""

    def __init__(self, message: str, status: int = STATUS_BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class Refused(TunnelError):
    """The far end answered a request with a non-zero status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason or socks.REPLY_TEXT.get(status, f"status {status}"))
        self.status = status
        self.reason = reason


def encode_request(rtype: int, host: str, port: int) -> bytes:
    """``VER TYPE ATYP ADDR PORT`` (ATYP and ADDR as SOCKS5, RFC 1928 §5)."""
    return bytes((REQUEST_VERSION, rtype)) + socks.encode_address(host) + _PORT.pack(port)


ReadExactly = Callable[[int], Awaitable[bytes]]


async def read_request(read_exactly: ReadExactly) -> TargetRequest:
    """Parse a request; :class:`RequestError` names the status to answer with."""
    ver, rtype, atyp = await read_exactly(3)
    if ver != REQUEST_VERSION:
        raise RequestError(f"unsupported request version {ver} (this tou speaks {REQUEST_VERSION})")
    try:
        first = await read_exactly(1)
        need = socks.address_length(atyp, first[0] if atyp == socks.ATYP_DOMAIN else None)
        rest = await read_exactly(need - 1 + 2)
        data = first + rest
        host = socks.decode_address(atyp, data)
    except socks.SocksError as exc:
        status = exc.code if exc.code == STATUS_ADDRESS_NOT_SUPPORTED else STATUS_BAD_REQUEST
        raise RequestError(str(exc), status) from None
    (port,) = _PORT.unpack_from(data, need)
    if rtype not in TYPE_NAMES:
        raise RequestError(f"request type {rtype} not supported", STATUS_NOT_SUPPORTED)
    return TargetRequest(rtype, host, port)


def encode_status(status: int, reason: str = "", port: int | None = None) -> bytes:
    """``STATUS`` then, on success of LISTEN, ``PORT``; on failure ``LEN REASON``."""
    if status == STATUS_OK:
        return bytes((status,)) + (_PORT.pack(port) if port is not None else b"")
    text = reason.encode("utf-8")[:MAX_REASON]
    while text:
        try:
            text.decode("utf-8")
            break
        except UnicodeDecodeError:      # cut inside a character
            text = text[:-1]
    return bytes((status, len(text))) + text


async def read_status(read_exactly: ReadExactly, *, with_port: bool = False) -> tuple[int, str, int | None]:
    """``(status, reason, port)``; ``port`` only for a successful LISTEN (``with_port``)."""
    (status,) = await read_exactly(1)
    if status == STATUS_OK:
        if with_port:
            (port,) = _PORT.unpack(await read_exactly(2))
            return status, "", port
        return status, "", None
    (n,) = await read_exactly(1)
    reason = (await read_exactly(n)).decode("utf-8", "replace") if n else ""
    return status, reason, None


def parse_status(buf: bytes) -> tuple[int, str, int] | None:
    """``(status, reason, length)`` of a CONNECT/FORWARDED status at the start of ``buf``; None if incomplete."""
    if not buf:
        return None
    if buf[0] == STATUS_OK:
        return STATUS_OK, "", 1
    if len(buf) < 2 or len(buf) < 2 + buf[1]:
        return None
    n = buf[1]
    return buf[0], buf[2:2 + n].decode("utf-8", "replace"), 2 + n


def channel_reader(ch: Channel) -> ReadExactly:
    """``read_exactly(n)`` on a channel; never reads past ``n`` (the rest stays for the data path)."""

    async def read_exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = await ch.read(n - len(buf))
            if not data:
                raise EOFError("connection closed in the middle of a request")
            buf += data
        return buf

    return read_exactly


def socket_reader(sock: socket.socket) -> ReadExactly:
    loop = asyncio.get_running_loop()

    async def read_exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = await loop.sock_recv(sock, n - len(buf))
            if not data:
                raise EOFError("local client closed")
            buf += data
        return buf

    return read_exactly


async def close_channel(ch: Channel, timeout: float = CLOSE_GRACE) -> None:
    """FIN, drain whatever still comes, wait for the exchange; RST when it takes too long."""
    ch.write_eof()
    try:
        async def drain() -> None:
            while await ch.read():
                pass
            await ch.wait_closed()
        await asyncio.wait_for(drain(), timeout)
    except (asyncio.TimeoutError, TunnelError):
        ch.abort("closed")


# ============================================================= local sockets
def _loopbacks(family: int) -> list[tuple[int, str]]:
    out = []
    if family in (socket.AF_UNSPEC, socket.AF_INET):
        out.append((socket.AF_INET, "127.0.0.1"))
    if family in (socket.AF_UNSPEC, socket.AF_INET6) and socket.has_ipv6:
        out.append((socket.AF_INET6, "::1"))
    return out


def bind_addresses(bind: str | None, gateway: bool, family: int = socket.AF_UNSPEC,
                   port: int = 0) -> list[tuple[int, str]]:
    """Where to listen (ssh semantics): no bind -> loopback (all with ``-g``); ``localhost`` ->
    loopback; ``""``/``*`` -> every interface; else the address or what the name resolves to."""
    if bind is None:
        bind = ALL_INTERFACES if gateway else LOOPBACK
    if bind == LOOPBACK:
        return _loopbacks(family)
    if bind in ("", ALL_INTERFACES):
        if family == socket.AF_INET:
            return [(socket.AF_INET, "0.0.0.0")]
        return [(socket.AF_INET6, "::")] if socket.has_ipv6 else [(socket.AF_INET, "0.0.0.0")]
    infos = socket.getaddrinfo(bind, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    seen: list[tuple[int, str]] = []
    for fam, _, _, _, sa in infos:
        if (fam, sa[0]) not in seen:
            seen.append((fam, sa[0]))
    return seen


def bind_tcp(bind: str | None, port: int, *, gateway: bool = False,
             family: int = socket.AF_UNSPEC) -> list[socket.socket]:
    """Listening TCP sockets for ``[bind:]port``; raises OSError (or socket.gaierror).

    With two loopback addresses, ``::1`` missing (no IPv6) is not an error. Port 0
    picks a port on the first address and uses it for the others.
    """
    socks_out: list[socket.socket] = []
    addrs = bind_addresses(bind, gateway, family, port)
    try:
        for i, (fam, host) in enumerate(addrs):
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
                s.bind((host, port))
                s.listen(socket.SOMAXCONN)
                s.setblocking(False)
            except OSError as exc:
                s.close()
                optional = (i > 0 and fam == socket.AF_INET6 and host == "::1"
                            and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT))
                if optional:
                    continue
                raise
            socks_out.append(s)
            if port == 0:
                port = s.getsockname()[1]
    except BaseException:
        for s in socks_out:
            s.close()
        raise
    return socks_out


class DialError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_ERRNO_STATUS = {
    errno.ECONNREFUSED: STATUS_REFUSED,
    errno.ENETUNREACH: STATUS_NETWORK_UNREACHABLE,
    errno.ENETDOWN: STATUS_NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: STATUS_HOST_UNREACHABLE,
    errno.EHOSTDOWN: STATUS_HOST_UNREACHABLE,
    errno.ETIMEDOUT: STATUS_TIMEOUT,
    errno.EACCES: STATUS_NOT_ALLOWED,
    errno.EPERM: STATUS_NOT_ALLOWED,
    errno.EAFNOSUPPORT: STATUS_ADDRESS_NOT_SUPPORTED,
}


def status_for(exc: BaseException) -> int:
    """The status (= SOCKS5 reply code) for a failed connect."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return STATUS_TIMEOUT
    if isinstance(exc, socket.gaierror):
        return STATUS_HOST_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno in _ERRNO_STATUS:
        return _ERRNO_STATUS[exc.errno]
    return STATUS_FAILURE


async def dial(host: str, port: int, timeout: float, family: int = socket.AF_UNSPEC) -> socket.socket:
    """A connected non-blocking TCP socket to ``host:port`` (names resolved here), or DialError.

    Addresses are tried in order within one overall ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    where = show(host, port)
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host.strip("[]"), port, family=family, type=socket.SOCK_STREAM), timeout)
    except socket.gaierror as exc:
        raise DialError(f"cannot resolve {host}: {exc.strerror}", STATUS_HOST_UNREACHABLE) from None
    except asyncio.TimeoutError:
        raise DialError(f"resolving {host} timed out", STATUS_TIMEOUT) from None
    last: BaseException | None = None
    for fam, stype, proto, _, sa in infos:
        left = deadline - loop.time()
        if left <= 0:
            last = asyncio.TimeoutError()
            break
        s = socket.socket(fam, stype, proto)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, sa), left)
        except (OSError, asyncio.TimeoutError) as exc:
            s.close()
            last = exc
            continue
        except BaseException:
            s.close()
            raise
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    if last is None:
        raise DialError(f"{where}: no address", STATUS_HOST_UNREACHABLE)
    if isinstance(last, asyncio.TimeoutError):
        raise DialError(f"connecting to {where} timed out after {timeout:g} s", STATUS_TIMEOUT)
    text = os.strerror(last.errno) if isinstance(last, OSError) and last.errno else str(last)
    raise DialError(f"cannot connect to {where}: {text}", status_for(last))


def _linger_zero(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def abort_socket(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the local application sees the connection fail, not end."""
    _linger_zero(sock)
    sock.close()


def syn_room(tunnel: Tunnel, peer: Hashable) -> int:
    """Payload bytes a SYN to ``peer`` carries now: 0 without Fast Open or a cached cookie.

    RFC 7413 §4.1.2: what the engine puts in the SYN (:func:`tfo_syn_room`: one
    segment of the size it starts sending with and no more than the server's MSS,
    kept with the cookie, less the SYN's options), and no more than the path MTU
    validated so far for ``peer`` allows.
    """
    cfg = tunnel.config
    entry = tunnel.ep.tfo_cookies.get(peer) if cfg.fast_open else None
    if entry is None or not entry[0]:
        return 0
    room = tfo_syn_room(cfg, entry[0], entry[1])
    plpmtu = tunnel.peer_plpmtu(peer)
    if plpmtu is not None:
        room = min(room, tfo_syn_room(cfg, entry[0], tunnel.mss_for_datagram(plpmtu)))
    return room


async def read_first(sock: socket.socket, limit: int, wait: float) -> bytes:
    """What a just-accepted local connection sends within ``wait`` s, at most ``limit`` bytes.

    ``b""`` when nothing came (or ``limit`` is 0); whatever was not read stays in the socket.
    """
    if limit <= 0 or wait <= 0:
        return b""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, limit), wait)
    except (asyncio.TimeoutError, OSError):
        return b""


class StatusGate:
    """The local end of a pipelined bridge: takes the far end's status (docs/PROTOCOL.md §10.2)
    off the front of what the channel delivers before anything reaches the local socket.

    Data flows towards the far end before the status arrives; a refusal raises
    :class:`Refused` from :meth:`take`, an EOF before the status a TunnelError from :meth:`end`.
    Without a status within ``timeout`` s the channel is aborted. ``reset``: a
    refusal resets the local connection instead of closing it.
    """

    def __init__(self, ch: Channel, what: str, timeout: float, *, reset: bool = False) -> None:
        self.ch = ch
        self.what = what
        self.reset = reset
        self.ok = False               # the status said success
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = ch.tunnel.loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self.ok:
            self.ch.abort(f"no answer to {self.what}")

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take(self, data: bytes) -> bytes:
        """What of ``data`` (from the channel) goes on to the local socket; raises
        :class:`Refused` on a refusal."""
        if self.ok:
            return data
        self._buf += data
        parsed = parse_status(self._buf)
        if parsed is None:
            return b""
        status, reason, used = parsed
        self.cancel()
        if status != STATUS_OK:
            raise Refused(status, reason)
        self.ok = True
        data, self._buf = self._buf[used:], b""
        return data

    def end(self) -> None:
        """The channel's EOF: an error unless the status came first."""
        if not self.ok:
            self.cancel()
            raise TunnelError("the peer closed without answering (is it 'tou forward --serve'?)")


async def bridge(ch: Channel, sock: socket.socket, *, gate: StatusGate | None = None) -> None:
    """Copy between a local socket and a channel until both directions end (half-close carried).

    A channel failure resets the local socket; nothing is raised, except with a
    ``gate`` (pipelining: the status is still to come on ``ch``) when the channel
    fails before a success status: then :class:`Refused` (the local socket is
    closed, or reset with ``gate.reset``) or TunnelError (reset).
    """
    stream = FdStream(sock.fileno(), sock=sock)
    failed = False
    error: TunnelError | None = None
    try:
        await splice(ch, stream, stream, gate=gate)
    except Refused as exc:
        error = exc
        failed = gate is not None and gate.reset
    except TunnelError as exc:
        failed = True
        if gate is not None and not gate.ok:
            error = exc
    except asyncio.CancelledError:
        failed = True
        ch.abort("stopped")
        raise
    finally:
        if gate is not None:
            gate.cancel()
        if failed:
            _linger_zero(sock)
        stream.close()
    if error is not None:
        raise error


async def accept_loop(lsock: socket.socket, handle: Callable[[socket.socket, Any], Awaitable[None]],
                      tasks: set[asyncio.Task], log: Callable[[str], None]) -> None:
    """Accept forever; each connection runs ``handle`` in its own task (kept in ``tasks``)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, addr = await loop.sock_accept(lsock)
        except (ConnectionAbortedError, InterruptedError):
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log(f"cannot accept on {format_address(lsock.getsockname())}: {exc.strerror}")
                await asyncio.sleep(0.1)
                continue
            raise
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        t = asyncio.ensure_future(handle(conn, addr))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


# =================================================================== logging
@dataclass
class Log:
    """Diagnostics on stderr: ``event`` unless ``--quiet``, ``info`` from ``-v`` on."""

    verbose: int = 0
    quiet: bool = False
    write: Callable[[str], None] = field(default=lambda line: None)

    def event(self, message: str) -> None:
        if not self.quiet:
            self.write(f"tou: {message}")

    def info(self, message: str, level: int = 1) -> None:
        if self.verbose >= level and not self.quiet:
            self.write(f"tou: {message}")


# ==================================================================== server
class ForwardServer:
    """``tou forward --serve``: answers target requests on inner port :data:`FORWARD_PORT`.

    CONNECT is checked against :class:`Permits`, then dialled; LISTEN needs
    ``allow_listen`` and keeps a TCP listener open as long as its inner
    connection lives, turning each accepted connection into a FORWARDED inner
    connection back to the client. A refusal ends only that one connection.
    """

    def __init__(self, tunnel: Tunnel, permits: Permits, log: Log, *, allow_listen: bool = False,
                 dial_timeout: float = 10.0, family: int = socket.AF_UNSPEC) -> None:
        self.tunnel = tunnel
        self.permits = permits
        self.log = log
        self.allow_listen = allow_listen
        self.dial_timeout = dial_timeout
        self.family = family
        self.tasks: set[asyncio.Task] = set()
        self.listeners: dict[Channel, list[socket.socket]] = {}
        tunnel.on_accept = self.accept
        tunnel.listen(FORWARD_PORT)

    def accept(self, ch: Channel) -> None:
        t = asyncio.ensure_future(self.handle(ch))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def handle(self, ch: Channel) -> None:
        who = ch.describe()
        try:
            try:
                req = await asyncio.wait_for(read_request(channel_reader(ch)), REQUEST_TIMEOUT)
            except RequestError as exc:
                self.log.event(f"bad request from {who}: {exc}")
                await self._refuse(ch, exc.status, str(exc))
                return
            except (EOFError, asyncio.TimeoutError):
                self.log.info(f"{who}: no complete request within {REQUEST_TIMEOUT:g} s")
                ch.abort("no request")
                return
            ch.label = show(req.host, req.port)
            if req.type == TYPE_CONNECT:
                await self._connect(ch, req, who)
            elif req.type == TYPE_LISTEN:
                await self._listen(ch, req, who)
            else:
                await self._refuse(ch, STATUS_NOT_SUPPORTED, f"{TYPE_NAMES[req.type]} is not a request to a server")
        except TunnelError as exc:
            self.log.info(f"{who}: {exc}")
        except Exception as exc:      # one connection's trouble must not end the server
            self.log.event(f"{who}: {type(exc).__name__}: {exc}")
            ch.abort("internal error")

    async def _refuse(self, ch: Channel, status: int, reason: str) -> None:
        await ch.write(encode_status(status, reason))
        await close_channel(ch)

    async def _connect(self, ch: Channel, req: TargetRequest, who: str) -> None:
        target = show(req.host, req.port)
        if not self.permits.allows(req.host, req.port):
            self.log.event(f"refused {target} for {who}: not permitted (--permit-open {self.permits.describe()})")
            await self._refuse(ch, STATUS_NOT_ALLOWED, f"{target} is not permitted (--permit-open)")
            return
        try:
            sock = await dial(req.host, req.port, self.dial_timeout, self.family)
        except DialError as exc:
            self.log.info(f"{who}: {exc}")
            await self._refuse(ch, exc.status, str(exc))
            return
        self.log.info(f"{who}: connected to {target}")
        try:
            await ch.write(encode_status(STATUS_OK))
        except BaseException:
            sock.close()
            raise
        await bridge(ch, sock)

    async def _listen(self, ch: Channel, req: TargetRequest, who: str) -> None:
        where = show(req.host, req.port)
        if not self.allow_listen:
            self.log.event(f"refused remote listen on {where} for {who}: --allow-remote-listen not given")
            await self._refuse(ch, STATUS_NOT_ALLOWED,
                               "remote listening is not allowed (the server runs without --allow-remote-listen)")
            return
        try:
            lsocks = bind_tcp(req.host, req.port, family=self.family)
        except OSError as exc:
            text = exc.strerror or str(exc)
            self.log.event(f"remote listen on {where} for {who} failed: {text}")
            await self._refuse(ch, status_for(exc), f"server cannot listen on {where}: {text}")
            return
        port = lsocks[0].getsockname()[1]
        self.listeners[ch] = lsocks
        tasks: set[asyncio.Task] = set()
        accepts = [asyncio.ensure_future(accept_loop(
            s, lambda conn, addr: self._forward_back(ch, req.host, port, conn, addr), tasks, self.log.event))
            for s in lsocks]
        try:
            await ch.write(encode_status(STATUS_OK, port=port))
            self.log.event(f"listening on {', '.join(format_address(s.getsockname()) for s in lsocks)} "
                           f"for {who} (remote forward)")
            while await ch.read():       # the client sends nothing more; EOF or failure ends it
                pass
            ch.write_eof()
        except TunnelError as exc:
            self.log.info(f"{who}: remote forward on port {port} ended: {exc}")
        finally:
            for a in accepts:
                a.cancel()
            for s in lsocks:
                s.close()
            self.listeners.pop(ch, None)
            self.log.event(f"stopped listening on port {port} for {who}")

    async def _forward_back(self, control: Channel, host: str, port: int, conn: socket.socket, addr: Any) -> None:
        # Pipelined like the client's -L: with Fast Open and a cookie the request and the
        # connecting application's first bytes ride in the SYN; the status is read on the way.
        peer = control.peer
        request = encode_request(TYPE_FORWARDED, host, port)
        first = await read_first(conn, syn_room(self.tunnel, peer) - len(request), FIRST_DATA_WAIT)
        och = self.tunnel.connect(peer, FORWARD_PORT, peer=peer, data=request + first)
        where = f"remote forward of {format_address(addr)} on port {port}"
        try:
            await asyncio.wait_for(asyncio.shield(och.connected), self.dial_timeout)
        except (TunnelError, asyncio.TimeoutError) as exc:
            self.log.event(f"{where}: {exc or 'client did not answer'}")
            abort_socket(conn)
            och.abort("failed")
            return
        try:
            await bridge(och, conn, gate=StatusGate(och, f"FORWARDED {show(host, port)}", self.dial_timeout,
                                                    reset=True))
        except Refused as exc:
            self.log.info(f"{where}: client: {exc.reason}")
            await close_channel(och)
        except TunnelError as exc:
            self.log.event(f"{where}: {exc}")
            och.abort("failed")


# ====================================================================== link
class Link:
    """The client's path to the server: a peer for :meth:`Tunnel.connect`, re-opened when it dies.

    Cleartext has no session: the peer is the server's address and is always up.
    The secure channel's session is re-handshaken whenever it closes (a restarted
    server is found by the session's liveness pings); while it is down,
    :meth:`wait_up` waits. An authentication failure is fatal (``fatal``).
    """

    def __init__(self, tunnel: Tunnel, addr: Any, log: Log, *, secure: bool) -> None:
        self.tunnel = tunnel
        self.addr = addr
        self.log = log
        self.secure = secure
        self.loop = tunnel.loop
        self.up = asyncio.Event()
        self.fatal: asyncio.Future[None] = self.loop.create_future()
        self.peer: Hashable | None = None
        self.ever_up = False
        self.reconnecting = False
        self.generation = 0
        self._retry: asyncio.TimerHandle | None = None
        self.closed = False
        if not secure:
            self.peer = addr
            self.up.set()
        tunnel.on_event = self.on_event

    @property
    def where(self) -> str:
        return format_address(self.addr)

    def start(self) -> None:
        if self.secure and self.peer is None and not self.closed:
            self.peer = self.tunnel.transport.open(self.addr, self.loop.time())
            self.generation += 1
            self.tunnel.kick()

    def on_event(self, ev: Any) -> None:
        from toucli.session import AuthenticationFailed, SessionClosed, SessionEstablished

        session = getattr(ev, "session", None)
        if isinstance(ev, SessionEstablished) and session is self.peer:
            self.up.set()
            if self.reconnecting:
                self.log.event(f"reconnected to {self.where}")
            else:
                self.log.info(f"secure session with {self.where} established ({ev.peer_identity})")
            self.ever_up = True
            self.reconnecting = False
        elif isinstance(ev, AuthenticationFailed):
            self._fatal(AuthenticationError(ev.reason))
        elif isinstance(ev, SessionClosed) and session is self.peer and session is not None:
            if ev.reason.startswith("authentication failed"):
                self._fatal(AuthenticationError(ev.reason))
                return
            self.up.clear()
            self.peer = None
            if self.closed:
                return
            if self.ever_up and not self.reconnecting:
                self.log.event(f"secure session with {self.where} ended: {ev.reason}; reconnecting")
            else:
                self.log.info(f"session with {self.where}: {ev.reason}; retrying")
            self.reconnecting = self.ever_up or self.reconnecting
            self._retry = self.loop.call_later(RETRY_DELAY, self.start)

    def _fatal(self, exc: TunnelError) -> None:
        if not self.fatal.done():
            self.fatal.set_exception(exc)
            self.fatal.exception()

    async def wait_up(self, deadline: float) -> Hashable:
        """The current peer once the link is up; TunnelError at ``deadline``."""
        while not self.up.is_set() or self.peer is None:
            left = deadline - self.loop.time()
            if left <= 0:
                state = "reconnecting to" if self.ever_up else "cannot reach"
                raise TunnelError(f"{state} the tou server at {self.where}")
            try:
                await asyncio.wait_for(self.up.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.peer

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()


# ==================================================================== client
class ForwardClient:
    """``tou forward PEER -L/-R/-D``: local listeners and remote registrations over one :class:`Link`."""

    def __init__(self, tunnel: Tunnel, link: Link, log: Log, *, wait: float = 10.0,
                 gateway: bool = False, family: int = socket.AF_UNSPEC,
                 first_data_wait: float = FIRST_DATA_WAIT) -> None:
        self.tunnel = tunnel
        self.link = link
        self.log = log
        self.wait = wait
        self.first_data_wait = first_data_wait
        self.gateway = gateway
        self.family = family
        self.loop = tunnel.loop
        self.tasks: set[asyncio.Task] = set()
        self.listen_tasks: list[asyncio.Task] = []
        self.lsocks: list[socket.socket] = []
        self.remote: dict[tuple[str, int], RemoteForward] = {}
        self.registrations: list[asyncio.Task] = []
        # LISTEN requests waiting for the server's reply: the server listens (and
        # may forward a connection) before its reply with the port reaches us.
        self.listening: set[asyncio.Future] = set()
        tunnel.on_accept = self.accept
        tunnel.listen(FORWARD_PORT)

    # ---- opening inner connections
    async def _connect(self, rtype: int, host: str, port: int, local: socket.socket | None = None) -> Channel:
        """An inner connection carrying the request, its handshake complete; the status is not read.

        With Fast Open (RFC 7413) and a cookie from an earlier connection on this
        session, the request rides in the SYN: the server dials the target half a
        round trip after this call instead of one and a half. With ``local`` (a
        just-accepted local connection), what it sends within ``first_data_wait`` s
        rides along, so the target has the application's first bytes at that
        time too. Waits up to ``wait`` s for the link; a secure session that dies
        before the inner handshake completes is retried on the next one.
        """
        deadline = self.loop.time() + self.wait
        request = encode_request(rtype, host, port)
        first: bytes | None = None
        while True:
            peer = await self.link.wait_up(deadline)
            if first is None:
                first = b""
                if local is not None:
                    room = syn_room(self.tunnel, peer) - len(request)
                    first = await read_first(local, room, self.first_data_wait)
            ch = self.tunnel.connect(self.link.addr, FORWARD_PORT, peer=peer, data=request + first)
            ch.label = show(host, port)        # shown by the statistics dashboard
            try:
                await asyncio.wait_for(asyncio.shield(ch.connected), max(0.0, deadline - self.loop.time()))
            except asyncio.TimeoutError:
                ch.abort("connect timeout")
                raise TunnelError(f"no answer from the tou server at {self.link.where} "
                                  f"within {self.wait:g} s") from None
            except TunnelError:
                if self.link.secure and self.link.peer is not peer and self.loop.time() < deadline:
                    continue       # the session died under us: try on the next one
                raise
            return ch

    async def open(self, rtype: int, host: str, port: int) -> Channel:
        """An inner connection whose request was accepted (status 0); Refused or TunnelError otherwise.

        For callers that must know the answer before data flows (SOCKS, LISTEN).
        """
        start = self.loop.time()
        ch = await self._connect(rtype, host, port)
        try:
            status, reason, _ = await asyncio.wait_for(read_status(channel_reader(ch)),
                                                       max(1.0, start + self.wait - self.loop.time()))
        except EOFError:
            ch.abort("no status")
            raise TunnelError(f"the peer at {self.link.where} closed without answering "
                              "(is it 'tou forward --serve'?)") from None
        except asyncio.TimeoutError:
            ch.abort("no status")
            raise TunnelError(f"no answer to {TYPE_NAMES[rtype]} {show(host, port)}") from None
        if status != STATUS_OK:
            self._close_later(ch)
            raise Refused(status, reason)
        return ch

    def _close_later(self, ch: Channel) -> None:
        t = asyncio.ensure_future(close_channel(ch))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # ---- local listeners
    def listen_local(self, spec: LocalForward | DynamicForward) -> list[socket.socket]:
        """Bind ``spec``'s local port(s) and start accepting; TunnelError (exit 1) when binding fails."""
        option = "-L" if isinstance(spec, LocalForward) else "-D"
        try:
            lsocks = bind_tcp(spec.bind, spec.port, gateway=self.gateway, family=self.family)
        except socket.gaierror as exc:
            raise TunnelError(f"{option} {spec.text}: cannot resolve {spec.bind}: {exc.strerror}") from None
        except OSError as exc:
            where = show(spec.bind or "localhost", spec.port)
            raise TunnelError(f"{option} {spec.text}: cannot listen on {where}: {exc.strerror or exc}") from None
        handler = self._local if isinstance(spec, LocalForward) else self._socks
        for s in lsocks:
            self.lsocks.append(s)
            self.listen_tasks.append(asyncio.ensure_future(
                accept_loop(s, lambda conn, addr, spec=spec: handler(spec, conn, addr), self.tasks, self.log.event)))
            self.log.info(f"{option} {spec.text}: listening on {format_address(s.getsockname())}")
        return lsocks

    async def _local(self, spec: LocalForward, conn: socket.socket, addr: Any) -> None:
        # Pipelined: the request and the application's first bytes go in the SYN, and the
        # bridge starts without waiting for the status, which StatusGate takes off the
        # stream before the application sees any byte.
        target = show(spec.host, spec.hostport)
        try:
            ch = await self._connect(TYPE_CONNECT, spec.host, spec.hostport, local=conn)
        except TunnelError as exc:
            self.log.event(f"-L {spec.text}: closing connection from {format_address(addr)}: {exc}")
            abort_socket(conn)
            return
        except BaseException:
            abort_socket(conn)
            raise
        self.log.info(f"-L {spec.text}: {format_address(addr)} -> {target}", 2)
        try:
            await bridge(ch, conn, gate=StatusGate(ch, f"CONNECT {target}", max(1.0, self.wait)))
        except Refused as exc:
            self.log.event(f"-L {spec.text}: server: {exc}")
            self._close_later(ch)
        except TunnelError as exc:
            self.log.event(f"-L {spec.text}: closing connection from {format_address(addr)}: {exc}")
            ch.abort("failed")

    async def _socks(self, spec: DynamicForward, conn: socket.socket, addr: Any) -> None:
        write = lambda data: self.loop.sock_sendall(conn, data)   # noqa: E731
        try:
            req = await asyncio.wait_for(socks.negotiate(socket_reader(conn), write), REQUEST_TIMEOUT)
        except (socks.SocksError, EOFError, OSError, asyncio.TimeoutError) as exc:
            self.log.info(f"-D {spec.text}: {format_address(addr)}: SOCKS: {exc or 'timeout'}")
            conn.close()
            return
        target = show(req.host, req.port)
        try:
            ch = await self.open(TYPE_CONNECT, req.host, req.port)
        except Refused as exc:
            code = exc.status if 0 < exc.status <= socks.REP_ADDRESS_TYPE_NOT_SUPPORTED else socks.REP_GENERAL_FAILURE
            self.log.event(f"-D {spec.text}: {target}: server: {exc}")
            await self._socks_fail(conn, code)
            return
        except TunnelError as exc:
            self.log.event(f"-D {spec.text}: {target}: {exc}")
            await self._socks_fail(conn, socks.REP_GENERAL_FAILURE)
            return
        except BaseException:
            conn.close()
            raise
        try:
            await write(socks.encode_reply(socks.REP_SUCCEEDED))
        except OSError:
            ch.abort("SOCKS client went away")
            conn.close()
            return
        self.log.info(f"-D {spec.text}: {format_address(addr)} -> {target}", 2)
        await bridge(ch, conn)

    async def _socks_fail(self, conn: socket.socket, code: int) -> None:
        try:
            await self.loop.sock_sendall(conn, socks.encode_reply(code))
        except OSError:
            pass
        conn.close()

    # ---- remote forwards
    async def register(self, spec: RemoteForward) -> int:
        """Ask the server to listen for ``spec``; the port it bound. Refused/TunnelError on failure.

        Keeps a task reading the LISTEN connection; when it dies the forward is
        registered again (on the new session after a reconnect), every
        :data:`RETRY_DELAY` s until it works.
        """
        ch, port = await self._listen_request(spec)
        task = asyncio.ensure_future(self._hold(spec, ch, port))
        self.registrations.append(task)
        return port

    async def _listen_request(self, spec: RemoteForward) -> tuple[Channel, int]:
        done = self.loop.create_future()
        self.listening.add(done)
        try:
            return await self._ask_listen(spec)
        finally:
            self.listening.discard(done)
            done.set_result(None)

    async def _ask_listen(self, spec: RemoteForward) -> tuple[Channel, int]:
        bind = remote_bind(spec)
        ch = await self.open(TYPE_LISTEN, bind, spec.port)
        try:
            hi_lo = await asyncio.wait_for(channel_reader(ch)(2), self.wait)
        except (EOFError, asyncio.TimeoutError):
            ch.abort("no port")
            raise TunnelError(f"-R {spec.text}: the server did not say which port it bound") from None
        (port,) = _PORT.unpack(hi_lo)
        self.remote[(canonical_host(bind), port)] = spec
        where = show(bind, port)
        self.log.event(f"-R {spec.text}: the server listens on {where}") if spec.port == 0 else \
            self.log.info(f"-R {spec.text}: the server listens on {where}")
        return ch, port

    async def _hold(self, spec: RemoteForward, ch: Channel, port: int) -> None:
        bind = remote_bind(spec)
        while True:
            try:
                while await ch.read():
                    pass
                reason = "the server closed it"
            except TunnelError as exc:
                reason = str(exc)
            self.remote.pop((canonical_host(bind), port), None)
            ch.abort("re-registering")
            self.log.event(f"-R {spec.text}: remote listener lost ({reason}); registering again")
            while True:
                await asyncio.sleep(RETRY_DELAY)
                try:
                    ch, port = await self._listen_request(spec)
                    self.log.event(f"-R {spec.text}: registered again")
                    break
                except TunnelError as exc:
                    self.log.info(f"-R {spec.text}: {exc}; retrying")

    def accept(self, ch: Channel) -> None:
        """An inner connection from the server: FORWARDED from one of our remote listeners."""
        t = asyncio.ensure_future(self._forwarded(ch))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _forwarded(self, ch: Channel) -> None:
        try:
            try:
                req = await asyncio.wait_for(read_request(channel_reader(ch)), REQUEST_TIMEOUT)
            except RequestError as exc:
                await ch.write(encode_status(exc.status, str(exc)))
                await close_channel(ch)
                return
            except (EOFError, asyncio.TimeoutError):
                ch.abort("no request")
                return
            spec = await self._remote_forward(req) if req.type == TYPE_FORWARDED else None
            if spec is None:
                why = (f"no remote forward for {show(req.host, req.port)}" if req.type == TYPE_FORWARDED
                       else f"{TYPE_NAMES[req.type]} is not accepted by a forward client")
                self.log.event(f"refused {req.describe()} from the server: {why}")
                await ch.write(encode_status(STATUS_NOT_ALLOWED if req.type == TYPE_FORWARDED
                                             else STATUS_NOT_SUPPORTED, why))
                await close_channel(ch)
                return
            try:
                sock = await dial(spec.host, spec.hostport, self.wait, self.family)
            except DialError as exc:
                self.log.event(f"-R {spec.text}: {exc}")
                await ch.write(encode_status(exc.status, str(exc)))
                await close_channel(ch)
                return
            try:
                await ch.write(encode_status(STATUS_OK))
            except BaseException:
                sock.close()
                raise
            self.log.info(f"-R {spec.text}: connection -> {show(spec.host, spec.hostport)}", 2)
            await bridge(ch, sock)
        except TunnelError as exc:
            self.log.info(f"remote forward: {exc}")

    async def _remote_forward(self, req: TargetRequest) -> RemoteForward | None:
        """The remote forward a FORWARDED request is for, once registrations in flight have their reply."""
        key = (canonical_host(req.host), req.port)
        if key not in self.remote and self.listening:
            await asyncio.wait(list(self.listening), timeout=self.wait)
        return self.remote.get(key)

    async def close(self) -> None:
        for t in self.listen_tasks + self.registrations:
            t.cancel()
        for s in self.lsocks:
            s.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.listen_tasks, *self.registrations, *self.tasks, return_exceptions=True)


def remote_bind(spec: RemoteForward) -> str:
    """The bind address a LISTEN request carries: ``localhost`` by default, ``*`` for all interfaces."""
    if spec.bind is None:
        return LOOPBACK
    return ALL_INTERFACES if spec.bind == "" else spec.bind


def canonical_host(host: str) -> str:
    """The host as it reads after a trip through the request codec (IP literals normalized)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


__all__ = [
    "FORWARD_PORT", "REQUEST_VERSION", "TYPE_CONNECT", "TYPE_LISTEN", "TYPE_FORWARDED",
    "STATUS_OK", "STATUS_NOT_ALLOWED", "STATUS_BAD_REQUEST",
    "SpecError", "LocalForward", "RemoteForward", "DynamicForward",
    "parse_local", "parse_remote", "parse_dynamic", "parse_endpoint", "split_fields",
    "Permit", "Permits", "parse_permit", "same_host",
    "TargetRequest", "RequestError", "Refused", "encode_request", "read_request", "encode_status",
    "read_status", "parse_status", "syn_room", "read_first", "StatusGate", "FIRST_DATA_WAIT",
    "bind_tcp", "bind_addresses", "dial", "DialError", "status_for",
    "Log", "ForwardServer", "ForwardClient", "Link",
]
