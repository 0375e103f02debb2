"""The asyncio runtime: one UDP socket, a transport, the TCP engine, channels for the application.

Layers, bottom up:

* :class:`~toucli.udp.UdpSocket`: batched datagram I/O, read from ``loop.add_reader``;
* a *transport* turning datagrams into ``(peer, Segment)`` and back. Two exist:
  :class:`PlainTransport` (cleartext TOU, TOU-WIRE §1: a 4-byte GUE header and a
  TCP segment with the address-free checksum; ``peer`` is the UDP address) and
  the secure channel's adapter (``peer`` is an authenticated session);
* the sans-I/O :class:`~toucli.stack.endpoint.Endpoint`, fed with at most
  :data:`BATCH_PER_CONNECTION` segments per connection before its output is
  drained (one ACK per batch without losing SACK information);
* :class:`Channel`: one inner TCP connection seen as an async byte stream
  whose ``write`` waits for send-buffer space and whose ``read`` returns what
  is buffered. Nothing in between buffers without bound: the engine's send
  and receive buffers are the only queues, so a slow reader at one end closes
  the TCP window and stops the writer at the other.

One timer, armed with ``loop.call_at`` at the earliest engine or transport
deadline, drives every retransmission, delayed ACK and keepalive.

Local byte streams (stdin, stdout, sockets, child processes) are
:class:`FdStream`; :func:`splice` copies between a stream and a channel in both
directions with FIN carried end to end (half-close), through a :class:`Pump`
that does it from event-loop callbacks, one loop turn per message.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import socket
import stat
import struct
import sys
import threading
from dataclasses import replace
from typing import Any, Awaitable, Callable, Hashable, Iterable, Protocol

from toucli.busypoll import ADAPTIVE_WINDOW, BusyPollSelector, coalesce_delay, of_loop
from toucli.filewriter import FileWriter
from toucli.heap import keep_freed_memory
from toucli.stack.config import ConnectionConfig
from toucli.stack.connection import Connection, State
from toucli.stack.endpoint import Endpoint
from toucli.stack.errors import LocalError
from toucli.stack.events import Closed, Connected, Error, PeerClosed, Readable, Reset, Writable
from toucli.stack.gue import PLAIN_HEADER, PLAIN_HEADER_LEN, GueHeader, parse_header
from toucli.stack.pmtu import BASE_PLPMTU_V4, BASE_PLPMTU_V6, Plpmtud, udp_payload_limit
from toucli.stack.segment import Buffer, Segment
from toucli.stack.tcp import TcpDrop, decode_segment, encode_segment
from toucli.stack.seq import MASK, seq_sub
from toucli.udp import MAX_UDP_PAYLOAD, SO_EE_ORIGIN_ICMP6, Address, IcmpReport, UdpSocket

STREAM_PORT = 1              # inner TCP port of the listen/connect byte stream (docs/PROTOCOL.md §9)
BATCH_PER_CONNECTION = 16    # segments fed to one connection before its output is drained
RECV_CALLS_PER_WAKEUP = 64   # bounded drain: other work runs between bursts
READ_CHUNK = 256 << 10       # bytes moved per local read
WRITE_CHUNK = 1 << 20        # bytes handed to one local write(v) at most
PIPE_SIZE = 1 << 20          # what a local pipe is grown to (the unprivileged maximum by default)
DEFAULT_PIPE_SIZE = 16 * 4096
F_SETPIPE_SZ = 1031          # linux/fcntl.h
F_GETPIPE_SZ = 1032
PATH_MTU = 1500
TCP_HEADER = 20
DEFAULT_KEEPALIVE = 30.0     # seconds until a silent peer is declared dead
DEFAULT_CC = "bbr"           # the runtime's congestion control (README "Congestion control")
CLOSE_TIMEOUT = 2.0          # graceful close on a signal: how long FINs may take
CLOSE_NOTIFY_COPIES = 3      # closing alerts sent per session on exit (each a datagram that may be lost)
PMTU_TICK = 0.2              # seconds between path-MTU timer checks (probe timeouts, black holes)
PMTU_BLACK_HOLE_RTOS = 2     # retransmission timeouts in a row, nothing acknowledged: a black hole (§4.3)
PMTU_PROBE_TIMEOUT = 2.0     # a probe unanswered for the RTO, at most this long, is lost (RFC 8899 PROBE_TIMER)
PMTU_PROBE_TIMER_MIN = 1.0   # ... and at least this long (RFC 8899 §5.1.1)
QUOTE_SEQ_SLACK = 1 << 16    # a probe's bytes lie below SND.UNA, by less than this
_QUOTED_TCP = struct.Struct("!HHI")   # source port, destination port, sequence number
# ICMP port/host/network unreachable on a connected socket: the peer's channels fail.
PEER_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130


class TunnelError(Exception):
    """A failure to report in one line, with the exit status it maps to."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AuthenticationError(TunnelError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_AUTH)


class SessionEndedByPeer(TunnelError):
    """The peer closed its secure session (close_notify) while connections were open."""


# ----------------------------------------------------------------- settings
def mss_for(family: int, transport_overhead: int, mtu: int = PATH_MTU) -> int:
    """Engine MSS: the path MTU less IP, UDP, the transport's bytes and the TCP header.

    Options come out of the MSS (RFC 9293 §3.7.1): the engine fits each segment's
    payload and options under it.
    """
    ip = 40 if family == socket.AF_INET6 else 20
    return mtu - ip - 8 - transport_overhead - TCP_HEADER


def cc_names() -> list[str]:
    """Congestion controllers ``--cc`` accepts (the engine's registry)."""
    from toucli.stack import cc
    return cc.names()


BBR_SEND_BUFFER = 16 << 20


def engine_config(family: int, transport_overhead: int, *, keepalive: float = DEFAULT_KEEPALIVE,
                  buffer: int | None = None, cc: str | None = None, mtu: int | None = None,
                  fast_open: bool = False) -> ConnectionConfig:
    """A :class:`ConnectionConfig` for a tunnel: MSS from the path, dead peers found within ``keepalive`` s.

    ``cc`` names the congestion controller (default :data:`DEFAULT_CC`; unknown:
    TunnelError, exit 2). ``mtu`` fixes the path MTU (``--mtu``); without it the
    MSS is the one for 1500-byte packets, which a tunnel with path-MTU discovery
    keeps for the data of a Fast Open SYN only. ``fast_open`` turns on RFC 7413.

    Keepalive (RFC 9293 §3.8.4) probes after ``keepalive/2`` s of silence, then three
    times ``keepalive/6`` s apart; data left unacknowledged for ``keepalive`` s also
    fails the connection (the user timeout, RFC 9293 §3.8.3), but never sooner than 10 s.
    """
    name = (cc or DEFAULT_CC).lower()
    if name not in cc_names():
        raise TunnelError(f"unknown congestion control {cc!r} (known: {', '.join(cc_names())})", EXIT_USAGE)
    cfg = ConnectionConfig(mss=mss_for(family, transport_overhead, mtu or PATH_MTU),
                           congestion_control=name, fast_open=fast_open)
    if name == "bbr":
        # Linux's RTO rules: the variance term at least 200 ms, and a resent head restarts
        # the timer. BBR keeps BDPs in flight, so a recovery's resends queue behind them,
        # and an RTO counted from the last cumulative ACK fired before they could be
        # answered and restarted BBR's start-up (RTO cycles at 300 ms / 2 %, removed in
        # the simulator: bench/RESULTS.md, 2026-11-27). With CUBIC at 5-10 % loss both
        # cost goodput in the simulator, so they stay off there.
        cfg.rto_min_var = 0.2
        cfg.rto_restart_on_head_resend = True
        # Linux's RTT sampling too: with SACK-only ACKs in recovery the damped SRTT kept
        # the empty-queue RTT while the queue doubled it (300 ms / 2 %, simulator).
        cfg.rtt_sack_samples = True
        # BBR bounds what it has in flight by its model (twice the measured BDP), so
        # it gets a send buffer for 300 ms at 100 Mbit/s with losses: each hole holds
        # the buffer for about two round trips. A loss-based controller fills any
        # window it is given, so CUBIC and NewReno keep 4 MiB.
        cfg.send_buffer = BBR_SEND_BUFFER
    if keepalive > 0:
        cfg.keepalive_idle = keepalive / 2
        cfg.keepalive_interval = keepalive / 6
        cfg.keepalive_probes = 3
        cfg.user_timeout = max(keepalive, 10.0)
    if buffer is not None:
        cfg.send_buffer = cfg.recv_buffer = buffer
        cfg.initial_recv_window = min(cfg.initial_recv_window, buffer)
    return cfg


# --------------------------------------------------------------- transports
class Transport(Protocol):
    """What the runtime needs below the TCP engine (cleartext or secure)."""

    name: str
    overhead: int          # bytes a datagram carries on top of the TCP segment
    max_datagram: int      # the largest datagram it can build (UDP payload bytes)

    def open(self, addr: Address, now: float) -> Hashable: ...
    def ready(self, peer: Hashable) -> bool: ...
    def path_rtt(self, peer: Hashable) -> float | None: ...
    def address(self, peer: Hashable) -> Address: ...
    def decode(self, data: memoryview, addr: Address, now: float, out: list) -> None: ...
    def encode(self, peer: Hashable, seg: Segment) -> tuple[bytes, Address] | None: ...
    def failure(self, event: Any) -> tuple[Hashable, TunnelError] | None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...
    def close_sessions(self, now: float, unclean: set[Hashable]) -> None: ...
    def next_deadline(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...
    def describe(self, peer: Hashable) -> str: ...
    def quoted_peer(self, addr: Address, quoted: bytes, peers: Iterable[Hashable]) -> tuple[Hashable, int | None] | None: ...


class PlainTransport:
    """Cleartext TOU (TOU-WIRE §1): GUE header ``00 06 00 00`` then the TCP segment.

    Connections are told apart by (UDP peer address, TCP ports): ``peer`` is the address.
    """

    name = "cleartext"
    overhead = PLAIN_HEADER_LEN
    max_datagram = MAX_UDP_PAYLOAD

    def __init__(self) -> None:
        self.drops = 0

    def open(self, addr: Address, now: float) -> Hashable:
        return addr

    def ready(self, peer: Hashable) -> bool:
        return True

    def path_rtt(self, peer: Hashable) -> float | None:
        return None

    def address(self, peer: Hashable) -> Address:
        return peer

    def decode(self, data: memoryview, addr: Address, now: float, out: list) -> None:
        if data[:PLAIN_HEADER_LEN] == PLAIN_HEADER:
            start = PLAIN_HEADER_LEN
        else:
            hdr = parse_header(data)
            if not isinstance(hdr, GueHeader) or hdr.transform is not None:
                self.drops += 1
                return
            start = hdr.payload_offset
        seg = decode_segment(data[start:])
        if isinstance(seg, TcpDrop):
            self.drops += 1
            return
        out.append((addr, seg))

    def encode(self, peer: Hashable, seg: Segment) -> tuple[bytes, Address]:
        return PLAIN_HEADER + encode_segment(seg), peer

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return []

    def close_sessions(self, now: float, unclean: set[Hashable]) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def next_event(self) -> Any:
        return None

    def failure(self, event: Any) -> tuple[Hashable, TunnelError] | None:
        return None

    def describe(self, peer: Hashable) -> str:
        return format_address(peer)

    def quoted_peer(self, addr: Address, quoted: bytes, peers: Iterable[Hashable]) -> tuple[Hashable, int | None] | None:
        """Which of ``peers`` sent the datagram an ICMP error quotes, and where the quoted
        TCP header starts (the tunnel checks its ports and sequence number); None if not ours."""
        if quoted[:PLAIN_HEADER_LEN] != PLAIN_HEADER or len(quoted) < PLAIN_HEADER_LEN + 8:
            return None
        for peer in peers:
            if tuple(peer[:2]) == tuple(addr[:2]):
                return peer, PLAIN_HEADER_LEN
        return None


class SecureTransport:
    """The secure channel (:mod:`toucli.session`): DTLS records in GUE; ``peer`` is a ``Session``.

    A session is :meth:`ready` once its handshake is done; until then the tunnel
    holds the SYNs of its connections in the engine (``Endpoint.connect(hold=True)``).
    """

    name = "DTLS"

    def __init__(self, endpoint: Any) -> None:
        from toucli.session import GUE_HEADER_LEN
        from toucli.record import MAX_PLAINTEXT, RECORD_HEADER_LEN

        self.ep = endpoint
        self.overhead = GUE_HEADER_LEN + RECORD_HEADER_LEN + 8 + 16   # AES-GCM: explicit nonce + tag
        self.max_datagram = self.overhead + MAX_PLAINTEXT                # one record per datagram
        self.drops = 0

    def open(self, addr: Address, now: float) -> Hashable:
        return self.ep.connect(addr, now)

    def ready(self, peer: Any) -> bool:
        """A held SYN may leave: the session is up, or the client's proof is on its way
        (only payload-free segments are sealed before the server's proof arrives)."""
        return peer.state != "handshake" or peer.opening

    def path_rtt(self, peer: Any) -> float | None:
        """The round trip the session's DTLS handshake measured (seeds TCP's first RTO)."""
        return peer.handshake_rtt

    def address(self, peer: Any) -> Address:
        return peer.peer_addr

    def decode(self, data: memoryview, addr: Address, now: float, out: list) -> None:
        # ``data`` is a view of the socket's buffer, valid during this call: the session
        # reads it in place, and what it returns are fresh decrypted records, whose
        # payloads the segments keep as views.
        for session, raw in self.ep.datagram_received(data, addr, now):
            seg = decode_segment(raw, verify_checksum=False, view=True)   # the AEAD protects it (TOU-WIRE §3.3)
            if isinstance(seg, TcpDrop):
                self.drops += 1
                continue
            out.append((session, seg))

    def encode(self, peer: Any, seg: Segment) -> tuple[bytes, Address] | None:
        if peer.state == "handshake" and len(seg.payload):
            # A Fast Open SYN sent while the proofs are in flight: no data goes before
            # the server's proof (PROTOCOL.md §8.1), so the SYN goes without it, and
            # TCP sends the data after the handshake, as for a cookie the server did
            # not take (the SYN-ACK acknowledges the SYN only, RFC 7413 §4.2.2).
            seg = Segment(seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.wnd, b"",
                          urg=seg.urg, mss=seg.mss, wscale=seg.wscale, sack_perm=seg.sack_perm,
                          sack=seg.sack, tsval=seg.tsval, tsecr=seg.tsecr, tfo_cookie=seg.tfo_cookie)
        datagram = self.ep.seal_segment(peer, encode_segment(seg, checksum=False))
        if datagram is None:
            return None
        return datagram, peer.peer_addr

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self.ep.datagrams_to_send(now)

    def close_sessions(self, now: float, unclean: set[Hashable]) -> None:
        """Tell every peer we are gone, in :data:`CLOSE_NOTIFY_COPIES` records, so that
        it learns it even if our last ACK was lost (PROTOCOL.md §8.4): close_notify
        when all our connections with it ended with both FINs (it ends those that only
        waited for that ACK as complete), user_canceled when we reset one or left one
        open (it resets them all at once instead of after a keepalive timeout)."""
        from toucli.session import ALERT_CLOSE_NOTIFY, ALERT_USER_CANCELED

        for session in self.ep.sessions():
            alert = ALERT_USER_CANCELED if session in unclean else ALERT_CLOSE_NOTIFY
            self.ep.close(session, now, copies=CLOSE_NOTIFY_COPIES, alert=alert)

    def next_deadline(self) -> float | None:
        return self.ep.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.ep.handle_timer(now)

    def next_event(self) -> Any:
        return self.ep.next_event()

    def failure(self, event: Any) -> tuple[Hashable, TunnelError] | None:
        """Events that end the session's connections: authentication failure (exit 3), closure (1)."""
        from toucli.session import REASON_CLOSED_BY_PEER, AuthenticationFailed, SessionClosed

        session = getattr(event, "session", None)
        if session is None:
            return None
        if isinstance(event, AuthenticationFailed):
            return session, AuthenticationError(event.reason)
        if isinstance(event, SessionClosed):
            if event.reason == REASON_CLOSED_BY_PEER:
                return session, SessionEndedByPeer(f"secure session with {format_address(session.peer_addr)} "
                                                   f"ended: {event.reason}")
            if event.reason.startswith("authentication failed"):
                return session, AuthenticationError(event.reason)
            return session, TunnelError(f"secure session with {format_address(session.peer_addr)} "
                                        f"ended: {event.reason}")
        return None

    def quoted_peer(self, addr: Address, quoted: bytes, peers: Iterable[Hashable]) -> tuple[Hashable, int | None] | None:
        """The session whose record an ICMP error quotes (its session ID, epoch and a
        sequence number it used: :meth:`SecureEndpoint.session_for_quote`); the TCP
        header is encrypted, so there is none to check."""
        session = self.ep.session_for_quote(addr, quoted)
        return (session, None) if session is not None else None

    def describe(self, peer: Hashable) -> str:
        addr = getattr(peer, "peer_addr", peer)
        who = getattr(peer, "peer_identity", None)
        return format_address(addr) + (f" ({who})" if who is not None else "")


def format_address(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


# ------------------------------------------------------------------ channel
class Channel:
    """One inner TCP connection as an async byte stream."""

    def __init__(self, tunnel: "Tunnel", conn: Connection) -> None:
        loop = tunnel.loop
        self.tunnel = tunnel
        self.conn = conn
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.peer_closed = False
        self.eof_sent = False
        self.error: TunnelError | None = None
        self.started = loop.time()
        self.last_activity = self.started
        self.bytes_in = 0        # delivered to the application
        self.bytes_out = 0       # accepted from the application
        self.label: str | None = None   # what the dashboard shows, e.g. a forwarded target
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self.notify: Callable[[str], None] | None = None   # a Pump: told of "r", "w" and "fail" at once
        if conn.state == State.ESTABLISHED:
            self.connected.set_result(None)

    @property
    def peer(self) -> Hashable:
        return self.conn.peer

    def describe(self) -> str:
        return self.tunnel.transport.describe(self.conn.peer)

    # ---- application side
    def take(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Up to ``max_bytes`` in-order bytes buffered now; ``b""`` when none are."""
        data = self.conn.recv(max_bytes)
        if data:
            self.bytes_in += len(data)
            self.last_activity = self.tunnel.loop.time()
            self.tunnel.kick()          # the window may have opened
        return data

    def take_chunks(self, max_bytes: int = READ_CHUNK) -> list[Buffer]:
        """Like :meth:`take`, as the buffers the engine holds, uncopied (for ``writev``)."""
        chunks = self.conn.recv_chunks(max_bytes)
        if chunks:
            self.bytes_in += sum(map(len, chunks))
            self.last_activity = self.tunnel.loop.time()
            self.tunnel.kick()          # the window may have opened
        return chunks

    @property
    def at_eof(self) -> bool:
        """Nothing more will arrive: the peer's FIN, or the connection ended."""
        return self.peer_closed or self.done.done()

    def offer(self, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the send buffer takes now; the count. Raises TunnelError."""
        if self.error is not None:
            raise self.error
        try:
            n = self.conn.send(data)
        except LocalError:
            raise self.error or TunnelError("connection closed") from None
        if n:
            self.bytes_out += n
            self.last_activity = self.tunnel.loop.time()
        return n

    async def read(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Up to ``max_bytes`` in-order bytes; ``b""`` after the peer's FIN. Raises TunnelError on failure."""
        while True:
            data = self.take(max_bytes)
            if data:
                return data
            if self.error is not None:
                raise self.error
            if self.at_eof:
                return b""
            self._reader = self.tunnel.loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    async def write(self, data: bytes) -> None:
        """Queue all of ``data``, waiting for send-buffer space as the peer acknowledges."""
        view = memoryview(data)
        while view:
            n = self.offer(view)
            if n:
                view = view[n:]
                self.tunnel.kick()
            if view:
                self._writer = self.tunnel.loop.create_future()
                try:
                    await self._writer
                finally:
                    self._writer = None

    def write_eof(self) -> None:
        """Half-close: FIN after the queued data (RFC 9293 §3.10.4)."""
        if self.eof_sent or self.error is not None or self.conn.state == State.CLOSED:
            return
        self.eof_sent = True
        try:
            self.conn.shutdown()
        except LocalError:
            return
        self.tunnel.kick()
        self.tunnel.watch_close(self)

    def abort(self, reason: str = "connection aborted") -> None:
        """Send RST and fail pending reads/writes."""
        if not self.done.done():
            self.tunnel._reset_peers.add(self.conn.peer)
            self.conn.abort()
            self._fail(TunnelError(reason))
            self.tunnel.kick()

    @property
    def finished(self) -> bool:
        """Both FINs exchanged and ours acknowledged, or the connection is gone."""
        st = self.conn.state
        return st in (State.TIME_WAIT, State.CLOSED) or self.done.done()

    @property
    def all_data_acked(self) -> bool:
        """Everything we sent was acknowledged (only our FIN may still be outstanding)."""
        c = self.conn
        return c.fin_off is not None and c.snd_una >= c.fin_off

    async def wait_closed(self) -> None:
        await asyncio.shield(self.done)

    # ---- engine side
    def _wake(self, which: str) -> None:
        fut = self._reader if which == "r" else self._writer
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self.notify is not None:
            self.notify(which)

    def _fail(self, error: TunnelError) -> None:
        if self.done.done():
            return
        self.error = error
        for fut in (self.connected, self._reader, self._writer):
            if fut is not None and not fut.done():
                fut.set_exception(error)
                fut.exception()     # retrieved: a failure may have nobody waiting for it
        self.done.set_exception(error)
        self.done.exception()
        if self.notify is not None:
            self.notify("fail")

    def _finish(self) -> None:
        self._wake("r")
        self._wake("w")
        if not self.done.done():
            self.done.set_result(None)
        if not self.connected.done():
            self.connected.set_exception(TunnelError("connection closed before it was established"))
            self.connected.exception()


# ----------------------------------------------------------- path MTU
class PathMtu:
    """Path-MTU discovery for one peer (RFC 8899): the :class:`Plpmtud` machine and its probes.

    Sizes are UDP payloads. A probe is a TCP segment of one of the peer's
    connections carrying already-acknowledged sequence space
    (:meth:`Connection.mtu_probe`), padded so that the datagram, with the
    transport's header (GUE, or GUE and a DTLS record), is exactly the size to
    test; the peer's D-SACK acknowledges it (RFC 8899 §4.1). Both transports
    carry it unchanged, and the peer's byte stream never sees it.
    """

    def __init__(self, peer: Hashable, now: float, max_plpmtu: int, ipv6: bool) -> None:
        base = BASE_PLPMTU_V6 if ipv6 else BASE_PLPMTU_V4
        self.peer = peer
        self.ipv6 = ipv6
        self.pm = Plpmtud(now, max_plpmtu=max(max_plpmtu, base), ipv6=ipv6, base=min(base, max_plpmtu),
                          probe_timeout=PMTU_PROBE_TIMEOUT, black_hole_losses=PMTU_BLACK_HOLE_RTOS)
        self.probe: tuple[Connection, int] | None = None   # connection and size of the probe in flight
        self.rtos: dict[Connection, tuple[int, int]] = {}    # per connection: (rto_count, bytes_acked) seen


# ------------------------------------------------------------------- tunnel
class Tunnel:
    """The runtime for one UDP socket: transport, engine, timer and channels."""

    def __init__(self, usock: UdpSocket, transport: Transport, config: ConnectionConfig, *,
                 on_accept: Callable[[Channel], None] | None = None,
                 on_event: Callable[[Any], None] | None = None,
                 secret: bytes | None = None, pmtu: bool = False) -> None:
        """``pmtu``: discover the path MTU per peer (without it the MSS stays ``config.mss``).

        No segment may outgrow ``transport.max_datagram``, so the MSS is capped by it.
        With ``pmtu`` the SYN announces that cap (what this end can receive, RFC 9293
        §3.7.1); ``config.mss`` becomes ``send_mss``, the size of a Fast Open SYN's
        data, and an established connection sends what its peer's search confirmed.
        """
        keep_freed_memory()
        self.loop = asyncio.get_running_loop()
        self.usock = usock
        self.transport = transport
        cap = self.mss_for_datagram(transport.max_datagram)
        if pmtu:
            config = replace(config, mss=cap, send_mss=min(config.send_mss or config.mss, cap))
        elif config.mss > cap:
            config = replace(config, mss=cap, send_mss=None)
        self.config = config
        self.ep = Endpoint(config, secret or os.urandom(32))
        self.ep.rtt_hint = transport.path_rtt
        self.on_accept = on_accept
        self.on_event = on_event          # transport (session) events
        self.channels: dict[Connection, Channel] = {}
        self._closing: set[Channel] = set()
        self._reset_peers: set[Hashable] = set()   # peers we reset a connection to (close_sessions)
        self._held: set[Hashable] = set()          # peers whose transport is not ready: SYNs wait
        self._scheduled = False
        self._servicing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._closed = False
        self._rx: list[tuple[Hashable, Segment]] = []
        self._counts: dict[tuple, int] = {}
        self.udp_error: OSError | None = None
        self.pmtu = pmtu
        self.paths: dict[Hashable, PathMtu] = {}
        self._probing: list[PathMtu] = []
        self._pmtu_timer: asyncio.TimerHandle | None = None
        self._icmp: list[IcmpReport] = []
        self.ptb_accepted = 0          # Packet Too Big messages that moved a path's search
        self.ptb_ignored = 0           # ... that did not validate or changed nothing
        poller = of_loop(self.loop)
        self._poller = poller
        self.loop.add_reader(usock.fileno(), self._on_readable)
        usock.on_blocked = self._on_blocked
        usock.on_error = self._on_icmp

    # ---- API
    def listen(self, port: int = STREAM_PORT) -> None:
        self.ep.listen(port)

    def unlisten(self, port: int = STREAM_PORT) -> None:
        self.ep.unlisten(port)

    def connect(self, addr: Address, remote_port: int = STREAM_PORT, *, peer: Hashable | None = None,
                data: bytes = b"") -> Channel:
        """Open an inner connection to ``addr`` (``Channel.connected`` resolves on the handshake).

        ``peer``: reuse an open transport peer (a secure session, or ``Channel.peer``
        of an accepted connection) instead of opening a new one to ``addr``.
        ``data``: the first bytes to send; with Fast Open on (``config.fast_open``)
        and a cookie from an earlier connection to the same peer they ride in the
        SYN (RFC 7413 §3), else they follow the handshake. They count as written.
        """
        now = self.loop.time()
        if peer is None:
            peer = self.transport.open(addr, now)
        used = {c.local_port for c in self.ep.connections.values() if c.peer == peer}
        while True:
            lport = random.randint(49152, 65535)
            if lport not in used:
                break
        hold = not self.transport.ready(peer)
        if hold:
            self._held.add(peer)
        conn = self.ep.connect(peer, lport, remote_port, now, data=data, hold=hold)
        ch = Channel(self, conn)
        ch.bytes_out = len(data)
        self.channels[conn] = ch
        self.kick()
        return ch

    def kick(self) -> None:
        """Schedule one service round (output, events, timer) for this loop iteration.

        Not needed during a service round: the round sends again after every batch
        of events it dispatched.
        """
        if not self._scheduled and not self._closed and not self._servicing:
            self._scheduled = True
            self.loop.call_soon(self._service)

    def watch_close(self, ch: Channel) -> None:
        self._closing.add(ch)

    async def close_all(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Graceful end: FIN on every channel, wait up to ``timeout`` s, reset the rest."""
        for ch in list(self.channels.values()):
            ch.write_eof()
        pending = [ch.done for ch in self.channels.values() if not ch.finished]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for ch in list(self.channels.values()):
            if not ch.finished:
                ch.abort("closed on a signal")
        self.flush()

    def flush(self) -> None:
        """Run one service round now: send what the connections have, in this callback
        (a pump's fresh bytes, the final ACK before exiting). Inside a round: nothing to do."""
        if not self._closed and not self._servicing:
            self._service()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        unclean = self._reset_peers | {ch.conn.peer for ch in self.channels.values()
                                       if not ch.finished or ch.error is not None}
        self.transport.close_sessions(self.loop.time(), unclean)
        self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._pmtu_timer is not None:
            self._pmtu_timer.cancel()
        try:
            self.loop.remove_reader(self.usock.fileno())
            self.loop.remove_writer(self.usock.fileno())
        except (ValueError, OSError):
            pass
        self.usock.close()

    # ---- I/O
    def _on_readable(self) -> None:
        clock = self.loop.time
        rx = self._rx
        decode = self.transport.decode
        ep = self.ep
        counts = self._counts

        def handle(data: memoryview, addr: Address) -> None:
            # Each datagram is taken in at its own time: one wake-up may read thousands,
            # and segments sent in between (below) are answered within it on loopback;
            # the wake-up's time would make those answers older than their questions.
            now = clock()
            decode(data, addr, now, rx)
            if not rx:
                return
            for peer, seg in rx:
                ep.receive(peer, seg, now)
                key = (peer, seg.dport, seg.sport)
                c = counts.get(key, 0) + 1
                if c >= BATCH_PER_CONNECTION:
                    counts.clear()
                    self._output(now)
                else:
                    counts[key] = c
            rx.clear()

        usock = self.usock
        failed: OSError | None = None
        try:
            usock.receive(handle, RECV_CALLS_PER_WAKEUP)
        except OSError as exc:
            if exc.errno not in PEER_UNREACHABLE:
                raise
            # The socket reports the ICMP error before the datagrams already queued
            # (the peer's RST or closing alert): those go first and say why it ended.
            failed = exc
            try:
                usock.receive(handle, RECV_CALLS_PER_WAKEUP)
            except OSError:
                pass
        counts.clear()
        now = clock()
        self._service(now)
        if failed is not None:
            self._udp_failed(failed)
            self._service(now)
        poller = self._poller
        if poller is not None and poller.note_traffic(usock.fileno(), usock.datagrams_in + usock.datagrams_out,
                                                      usock.bytes_in + usock.bytes_out):
            # Bulk traffic: how long a wait may sleep to read several datagrams per wake-up.
            poller.coalesce = coalesce_delay(self._min_rtt()) if poller.bulk else 0.0

    def _min_rtt(self) -> float | None:
        """The path's own round trip, queues left out: the least of our connections' minimum
        RTTs, a receiver's measured from the data it takes in (``Connection.path_rtt``)."""
        best: float | None = None
        for conn in self.ep.connections.values():
            rtt = conn.path_rtt
            if rtt is not None and (best is None or rtt < best):
                best = rtt
        return best

    def _on_icmp(self, report: IcmpReport) -> None:
        """An ICMP error from the socket's error queue: handled in the next service round."""
        self._icmp.append(report)
        self.kick()

    def _handle_icmp(self, now: float) -> None:
        """Packet Too Big feeds path-MTU discovery; on a connected socket, port/host/network
        unreachable fail the peer (as ECONNREFUSED from a read would); the rest is noise."""
        reports, self._icmp = self._icmp, []
        for rep in reports:
            mtu = rep.packet_too_big
            if mtu is not None:
                self._pmtu_ptb(rep, mtu, now)
            elif self.usock.connected_to is not None and rep.errno in PEER_UNREACHABLE:
                self._on_readable()      # what the peer sent before it went (an RST) goes first
                self._udp_failed(OSError(rep.errno, os.strerror(rep.errno)))

    def _udp_failed(self, exc: OSError) -> None:
        """A socket error: ECONNREFUSED (ICMP port unreachable) fails the connected peer's channels."""
        if exc.errno in PEER_UNREACHABLE:
            self.udp_error = exc
            where = format_address(self.usock.connected_to) if self.usock.connected_to else "peer"
            text = {errno.ECONNREFUSED: f"connection refused: nothing listens on UDP {where}"}.get(
                exc.errno, f"{where}: {exc.strerror}")
            for ch in list(self.channels.values()):
                if not ch.done.done():
                    ch.conn.abort()
                    ch._fail(TunnelError(text))
            return
        raise exc

    def _on_blocked(self) -> None:
        self.loop.add_writer(self.usock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        if self.usock.flush_pending():
            self.loop.remove_writer(self.usock.fileno())

    def _output(self, now: float) -> None:
        tr = self.transport
        if self._held:
            for peer in [p for p in self._held if tr.ready(p)]:
                self._held.discard(peer)
                self.ep.release(peer, now)
        segs = self.ep.segments_to_send(now)
        out = tr.datagrams_to_send(now)
        if segs:
            encode = tr.encode
            for peer, seg in segs:
                d = encode(peer, seg)
                if d is not None:
                    out.append(d)
        if out:
            try:
                self.usock.send(out)
            except OSError as exc:
                self._udp_failed(exc)

    def _service(self, now: float | None = None) -> None:
        """Dispatch events, drain output (and dispatch what that raised), re-arm the timer."""
        self._scheduled = False
        if self._closed:
            return
        if now is None:
            now = self.loop.time()
        self._servicing = True
        try:
            # Events first: what arrived goes to the application (a local socket write that
            # wakes its reader) before this round builds and seals our own segments.
            more = self._dispatch()
            for _ in range(8):
                self._output(now)
                more = self._dispatch()
                if not more:
                    break
        finally:
            self._servicing = False
        if more:
            self.kick()                 # events kept coming: what they caused goes out next turn
        if self._icmp:
            self._handle_icmp(now)
        if self._probing:
            self._pmtu_poll(now)
        if self._closing:
            for ch in list(self._closing):
                if ch.finished:
                    self._closing.discard(ch)
                    ch._finish()
                elif ch.conn.state in (State.FIN_WAIT_2, State.LAST_ACK, State.CLOSING):
                    ch._wake("r")
        self._arm()

    def _dispatch(self) -> bool:
        """Hand engine and transport events to their channels; True if any came."""
        any_event = False
        ep = self.ep
        while True:
            ev = ep.next_event()
            if ev is None:
                break
            any_event = True
            conn = ev.conn
            ch = self.channels.get(conn)
            if isinstance(ev, Readable):
                if ch is not None:
                    ch._wake("r")
            elif isinstance(ev, Writable):
                if ch is not None:
                    ch._wake("w")
            elif isinstance(ev, Connected):
                if self.pmtu:
                    self._pmtu_connected(conn)
                if ch is None:
                    ch = Channel(self, conn)
                    if not ch.connected.done():
                        # It was established, though its peer's FIN or RST, in the same
                        # batch, may have moved it on already: a reset is not a refusal.
                        ch.connected.set_result(None)
                    self.channels[conn] = ch
                    if self.on_accept is not None:
                        self.on_accept(ch)
                    else:
                        ch.abort("not accepting connections")
                elif not ch.connected.done():
                    ch.connected.set_result(None)
            elif isinstance(ev, PeerClosed):
                if ch is not None:
                    ch.peer_closed = True
                    ch._wake("r")
                    if ch.eof_sent:
                        self._closing.add(ch)
            elif isinstance(ev, Reset):
                if ch is not None:
                    if ch.connected.done():
                        ch._fail(TunnelError(f"connection reset by {ch.describe()}"))
                    else:
                        ch._fail(TunnelError(f"connection refused by {ch.describe()} (nothing listens there)"))
            elif isinstance(ev, Error):
                if ch is not None:
                    reason = ev.reason or "connection failed"
                    ch._fail(TunnelError(f"{ch.describe()}: {reason}"))
            elif isinstance(ev, Closed):
                if ch is not None:
                    del self.channels[conn]
                    self._closing.discard(ch)
                    if conn.fin_off is None or conn.snd_una <= conn.fin_off:
                        # Closed with our FIN unacknowledged: an RST in LAST-ACK or CLOSING,
                        # which RFC 9293 §3.10.7.4 closes quietly; the peer did not finish.
                        ch._fail(TunnelError(f"connection reset by {ch.describe()}"))
                    ch._finish()
        tr = self.transport
        while True:
            tev = tr.next_event()
            if tev is None:
                break
            any_event = True
            failed = tr.failure(tev)
            if failed is not None:
                session, error = failed
                self._reset_peers.discard(session)
                for ch in list(self.channels.values()):
                    if ch.conn.peer is session and not ch.done.done():
                        # The peer closed its session after both FINs crossed: it had all
                        # our data and is gone. In LAST-ACK/CLOSING only the ACK of our FIN
                        # went missing; in TIME-WAIT nothing did (its close_notify can come
                        # back within the wake-up that took its FIN, before the round that
                        # finishes the channel). What we buffered is still read out.
                        clean = isinstance(error, SessionEndedByPeer) and (
                            ch.finished or ch.conn.state in (State.LAST_ACK, State.CLOSING))
                        ch.conn.abort()
                        if clean:
                            ch._finish()
                        else:
                            ch._fail(error)
            if self.on_event is not None:
                self.on_event(tev)
        return any_event

    def _arm(self) -> None:
        t = self.ep.next_deadline()
        t2 = self.transport.next_deadline()
        if t2 is not None and (t is None or t2 < t):
            t = t2
        if t is None:
            return
        if t == float("-inf"):
            self.kick()
            return
        if t < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = t
            self._timer = self.loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self.loop.time()
        self.ep.handle_timer(now)
        self.transport.handle_timer(now)
        self._service(now)

    # ---- path MTU (RFC 8899)
    def mss_for_datagram(self, size: int) -> int:
        """The ``set_mss`` argument for UDP payloads of ``size`` bytes (as :func:`mss_for` counts)."""
        return size - self.transport.overhead - TCP_HEADER

    def _pmtu_connected(self, conn: Connection) -> None:
        """A connection is up: it uses its peer's current PLPMTU, and the peer's search starts."""
        peer = conn.peer
        path = self.paths.get(peer)
        now = self.loop.time()
        if path is None:
            addr = self.transport.address(peer)
            ipv6 = self.usock.family == socket.AF_INET6 and not str(addr[0]).startswith("::ffff:")
            largest = self.config.mss + self.transport.overhead + TCP_HEADER
            route = self.usock.route_mtu(addr)       # RFC 8899 §5.1.2: MAX_PLPMTU <= the interface's
            if route is not None:
                largest = min(largest, udp_payload_limit(route, ipv6))
            path = self.paths[peer] = PathMtu(peer, now, largest, ipv6)
        conn.set_mss(self.mss_for_datagram(path.pm.plpmtu))
        path.rtos[conn] = (conn.rto_count, conn.bytes_acked)
        self._pmtu_probe(path, now)
        if self._pmtu_timer is None:
            self._pmtu_timer = self.loop.call_later(PMTU_TICK, self._pmtu_tick)

    def _pmtu_conn(self, path: PathMtu) -> Connection | None:
        """A connection of ``path``'s peer able to carry a probe."""
        for conn in path.rtos:
            if conn.state in (State.ESTABLISHED, State.CLOSE_WAIT) and conn.sack_ok:
                return conn
        return None

    def _pmtu_probe(self, path: PathMtu, now: float) -> None:
        """Send the probe the machine asks for, if any, on one of the peer's connections."""
        if path.probe is not None or self._closed:
            return
        conn = self._pmtu_conn(path)
        if conn is None:
            return
        # an answer takes a round trip; RFC 8899 §5.1.1: PROBE_TIMER never below 1 s
        path.pm.probe_timeout = min(PMTU_PROBE_TIMEOUT, max(PMTU_PROBE_TIMER_MIN, conn.rtt.rto))
        size = path.pm.probe_size(now)
        if size is None:
            self._pmtu_apply(path)
            return
        fixed = self.transport.overhead + TCP_HEADER + (12 if conn.ts_ok else 0)
        n = size - fixed
        datagram = None
        for _ in range(2):                     # the transport's size may differ from the estimate
            seg = conn.mtu_probe(n, now)
            try:
                d = self.transport.encode(conn.peer, seg) if seg is not None else None
            except ValueError:                 # more than a record holds (a cipher with less overhead)
                d = None
            if d is None:
                break
            if len(d[0]) == size:
                datagram = d
                break
            n += size - len(d[0])
        path.probe = (conn, size)
        if path not in self._probing:
            self._probing.append(path)
        if datagram is None or not self.usock.send_probe(*datagram):
            path.probe = None                  # refused locally (EMSGSIZE): lost at once
            path.pm.probe_lost(size, now)
            self._pmtu_apply(path)

    def _pmtu_ptb(self, rep: IcmpReport, mtu: int, now: float) -> None:
        """A Packet Too Big (RFC 8899 §4.6): validated against what this end sent to the
        peer (§4.6.1), then the peer's search takes its size as the bound and next probe;
        a probe in flight that was larger is lost."""
        found = self.transport.quoted_peer(rep.dest, rep.quoted, self.paths) if self.pmtu else None
        path = self.paths.get(found[0]) if found is not None else None
        if path is None or (found[1] is not None and not self._quote_in_window(path, rep.quoted, found[1])):
            self.ptb_ignored += 1
            return
        size = udp_payload_limit(mtu, ipv6=rep.origin == SO_EE_ORIGIN_ICMP6)
        if not path.pm.packet_too_big(size, now):
            self.ptb_ignored += 1
            return
        self.ptb_accepted += 1
        if path.probe is not None and path.probe[1] > size:
            path.probe = None
        self._pmtu_apply(path)
        self._pmtu_probe(path, now)

    @staticmethod
    def _quote_in_window(path: PathMtu, quoted: bytes, off: int) -> bool:
        """A quoted cleartext TCP header belongs to one of the path's connections: its ports,
        and a sequence number from the last 64 KiB below SND.UNA (a probe) up to SND.MAX."""
        sport, dport, seq = _QUOTED_TCP.unpack_from(quoted, off)
        for conn in path.rtos:
            if conn.local_port == sport and conn.remote_port == dport:
                d = seq_sub(seq, (conn.iss + conn.snd_una) & MASK)
                return -QUOTE_SEQ_SLACK <= d <= conn.snd_max - conn.snd_una
        return False

    def _pmtu_poll(self, now: float) -> None:
        """After input: answered probes move the search on."""
        for path in list(self._probing):
            if path.probe is None:
                self._probing.remove(path)
                continue
            conn, size = path.probe
            if conn.mtu_probe_answered:
                conn.mtu_probe_answered = False
                path.probe = None
                self._probing.remove(path)
                path.pm.probe_acked(size, now)
                self._pmtu_apply(path)
                self._pmtu_probe(path, now)

    def _pmtu_apply(self, path: PathMtu) -> None:
        """The PLPMTU moved: every connection of the peer follows (RFC 8899 §5.3)."""
        if not path.pm.changed:
            return
        path.pm.changed = False
        mss = self.mss_for_datagram(path.pm.plpmtu)
        now = self.loop.time()
        for conn in path.rtos:
            conn.set_mss(mss, now)
        self.kick()

    def _pmtu_tick(self) -> None:
        """Every PMTU_TICK s: probe timeouts, the raise timer, black-hole detection (RFC 8899 §4.3)."""
        self._pmtu_timer = None
        if self._closed:
            return
        now = self.loop.time()
        for peer, path in list(self.paths.items()):
            timed_out = delivered = False
            for conn in list(path.rtos):
                if conn.state == State.CLOSED or conn.state == State.TIME_WAIT:
                    del path.rtos[conn]
                    continue
                rtos, acked = path.rtos[conn]
                if conn.bytes_acked > acked:
                    delivered = True
                elif conn.rto_count > rtos and conn.flight >= conn.eff_mss:
                    timed_out = True               # a full segment's worth timed out
                path.rtos[conn] = (conn.rto_count, conn.bytes_acked)
            if delivered:
                path.pm.full_size_acked(now)
            elif timed_out:
                path.pm.full_size_lost(now)        # at most one loss per tick and path
            if not path.rtos:
                if path.probe is not None and path in self._probing:
                    self._probing.remove(path)
                del self.paths[peer]           # nothing left to probe with; a new connection starts over
                continue
            if path.probe is not None:
                conn, size = path.probe
                deadline = path.pm.next_deadline()
                if conn.state == State.CLOSED or (deadline is not None and now >= deadline):
                    path.probe = None
                    path.pm.probe_lost(size, now)
            else:
                deadline = path.pm.next_deadline()
                if deadline is not None and now >= deadline:
                    path.pm.handle_timer(now)
            self._pmtu_apply(path)
            self._pmtu_probe(path, now)
        if self.paths:
            self._pmtu_timer = self.loop.call_later(PMTU_TICK, self._pmtu_tick)

    def peer_plpmtu(self, peer: Hashable) -> int | None:
        """The UDP payload size in use towards ``peer`` (None: no discovery for it)."""
        path = self.paths.get(peer)
        return path.pm.plpmtu if path is not None else None

    @property
    def path_mtu(self) -> int:
        """The path MTU (IP packet bytes) in use: ``--mtu``, else the largest one discovery
        settled on among the peers, else the starting size 1500 (shown by the statistics)."""
        if self.paths:
            return max(p.pm.plpmtu + (48 if p.ipv6 else 28) for p in self.paths.values())
        ip_udp = 48 if self.usock.family == socket.AF_INET6 else 28
        mss = self.config.send_mss or self.config.mss
        return mss + self.transport.overhead + TCP_HEADER + ip_udp

    def stats(self) -> dict:
        u = self.usock
        return {"datagrams_in": u.datagrams_in, "datagrams_out": u.datagrams_out,
                "recv_calls": u.recv_calls, "send_calls": u.send_calls, "send_drops": u.send_drops,
                "gso": u.gso, "gro": u.gro, "path_mtu": self.path_mtu,
                "pmtu_probes": sum(p.pm.probes_sent for p in self.paths.values()),
                "pmtu_black_holes": sum(p.pm.black_holes for p in self.paths.values()),
                "icmp_in": u.icmp_in, "ptb_accepted": self.ptb_accepted, "ptb_ignored": self.ptb_ignored,
                **self.ep.stats()}


# ------------------------------------------------------------ local streams
class FdStream:
    """A local byte stream over a file descriptor (stdin, stdout, a socket, a pipe).

    Pipes and sockets are made non-blocking and moved by a :class:`Pump` from
    event-loop callbacks; regular files and ``/dev/null`` (which cannot be polled)
    are read blocking, right away, and written by a :class:`FileWriter` thread; a
    terminal is read by a helper thread so the loop never blocks and the terminal's
    file status flags stay untouched.
    """

    def __init__(self, fd: int, *, sock: socket.socket | None = None, owned: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = fd
        self.sock = sock
        self.owned = owned
        self.closed = False
        self.eof_written = False
        mode = os.fstat(fd).st_mode
        if sock is not None or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self.kind = "poll"
        elif os.isatty(fd):
            self.kind = "tty"
        else:
            self.kind = "file"
        self._was_blocking: bool | None = None
        self.owner: object | None = None          # the Pump whose chunk is half written (shared sinks)
        self.waiting: list[Callable[[], None]] = []   # pumps waiting for the owner to finish
        if self.kind == "poll":
            self._was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
        if stat.S_ISFIFO(mode):
            _grow_pipe(fd)
        self._thread_queue: asyncio.Queue[bytes | BaseException] | None = None
        self._writer: FileWriter | None = None

    def file_writer(self) -> FileWriter:
        """The thread that writes this regular file (kind ``"file"``), started on first use."""
        if self._writer is None:
            self._writer = FileWriter(self.fd, self.loop)
        return self._writer

    def _flush(self) -> None:
        """Wait until the writer thread has written everything queued."""
        if self._writer is not None:
            self._writer.close()

    async def read(self, n: int = READ_CHUNK) -> bytes:
        """Read a file or a terminal (a :class:`Pump` reads pollable descriptors itself)."""
        if self.kind == "tty":
            return await self._tty_read(n)
        return os.read(self.fd, n)

    def write_eof(self) -> None:
        """Tell the reader at the other end that no more data comes."""
        if self.eof_written or self.closed:
            return
        self.eof_written = True
        self._flush()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        elif self.fd <= 2:
            self._restore()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.fd)
            os.close(null)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._flush()
        self._restore()
        if self.sock is not None:
            self.sock.close()
        elif self.owned:
            os.close(self.fd)

    def _restore(self) -> None:
        if self._was_blocking is not None:
            try:
                os.set_blocking(self.fd, self._was_blocking)
            except OSError:
                pass
            self._was_blocking = None

    async def _tty_read(self, n: int) -> bytes:
        if self._thread_queue is None:
            self._thread_queue = asyncio.Queue(maxsize=1)
            q, loop, fd = self._thread_queue, self.loop, self.fd

            def reader() -> None:
                while True:
                    try:
                        data: bytes | BaseException = os.read(fd, n)
                    except OSError as exc:
                        data = exc
                    fut = asyncio.run_coroutine_threadsafe(q.put(data), loop)
                    try:
                        fut.result()
                    except Exception:
                        return
                    if not data or isinstance(data, BaseException):
                        return

            threading.Thread(target=reader, name="tou-tty", daemon=True).start()
        item = await self._thread_queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def _grow_pipe(fd: int) -> None:
    """Let a pipe of the default size (64 KiB, ``pipe(7)``) hold :data:`PIPE_SIZE` bytes
    (``fcntl(2)`` F_SETPIPE_SZ): 64 KiB costs the process at the other end a wake-up and
    a system call per 64 KiB at most. A size someone chose is left alone."""
    try:
        if fcntl.fcntl(fd, F_GETPIPE_SZ) == DEFAULT_PIPE_SIZE:
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:              # over the user's pipe limit, or not Linux: keep what it has
        pass


class Pump:
    """Copies between local file descriptors and a channel from event-loop callbacks.

    A coroutine copy loop costs, per chunk and direction, a future, a task switch
    and an ``epoll_ctl`` pair, which for interactive traffic is most of what a
    round trip spends in tou. Here a pollable source stays registered with the
    loop: its callback reads, hands the bytes to the connection and sends the
    segments in the same loop turn. What the channel delivers is written to the
    sink from the tunnel's own event dispatch, in the turn the datagram arrived.

    Backpressure both ways: the source is not watched while the send buffer is
    full (until the channel is writable again); the channel is not read while the
    sink would block (until the sink is writable), so its receive window closes.
    Regular files and terminals, which cannot be polled, are read by a coroutine.
    """

    def __init__(self, ch: Channel, source: FdStream | None, sink: FdStream | None, *,
                 gate: Any = None, on_source_eof: Callable[[], None] | None = None,
                 close_sink: bool = True, reader_gone_ok: bool = True) -> None:
        self.ch = ch
        self.tunnel = ch.tunnel
        self.reader_gone_ok = reader_gone_ok
        self.loop = ch.tunnel.loop
        self.source = source
        self.sink = sink
        self.gate = gate                  # forward.StatusGate: take(data) -> data, end()
        self.on_source_eof = on_source_eof
        self.close_sink = close_sink
        self.ended: asyncio.Future[None] = self.loop.create_future()   # both directions, or the failure
        self._up_open = True
        self._down_open = True
        self._held: memoryview | None = None         # source bytes the send buffer has not taken yet
        self._unwritten: list[Buffer] | None = None  # channel bytes the sink has not taken yet
        self._source_watched = False
        self._sink_watched = False
        self._up_task: asyncio.Future[None] | None = None
        self._over = False                           # run() returned: callbacks do nothing

    async def run(self) -> None:
        """Copy until both directions ended and our FIN was acknowledged; raise what stopped it."""
        ch = self.ch
        ch.notify = self._notify
        try:
            if self.source is None:
                self._source_eof()
            elif self.source.kind == "poll":
                self._watch_source(True)
            else:
                self._up_task = asyncio.ensure_future(self._up_unpolled())
            self._deliver()
            await self.ended
            await _until_finished(ch)
        finally:
            self._over = True
            ch.notify = None
            self._watch_source(False)
            self._watch_sink(False)
            self._release_sink()
            if self.sink is not None and self._on_sink_writable in self.sink.waiting:
                self.sink.waiting.remove(self._on_sink_writable)
            if self._up_task is not None and not self._up_task.done():
                self._up_task.cancel()
                try:
                    await self._up_task
                except BaseException:
                    pass

    # ---- source -> channel
    def _watch_source(self, on: bool) -> None:
        if on == self._source_watched or self.source is None:
            return
        self._source_watched = on
        if on:
            self.loop.add_reader(self.source.fd, self._on_source)
        else:
            self.loop.remove_reader(self.source.fd)

    def _on_source(self) -> None:
        assert self.source is not None
        if self._over or self.ended.done():
            self._watch_source(False)
            return
        try:
            data = os.read(self.source.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._source_failed(exc)
            return
        if not data:
            self._source_eof()
            return
        self._push(memoryview(data))

    def _push(self, view: memoryview) -> None:
        try:
            n = self.ch.offer(view)
        except TunnelError as exc:
            self._stop(exc)
            return
        if n < len(view):
            self._held = view[n:]
            self._watch_source(False)
        elif self._held is not None:
            self._held = None
            self._watch_source(True)
        if n:
            self.tunnel.flush()

    def _source_eof(self) -> None:
        self._watch_source(False)
        self._up_open = False
        self.ch.write_eof()
        if self.on_source_eof is not None:
            self.on_source_eof()
        self._check_done()

    def _source_failed(self, exc: OSError) -> None:
        """A read error is not an end of input: the peer must not take what it got for
        all of it, so the connection is reset (RST), not closed (FIN)."""
        err = TunnelError(f"reading the input failed: {exc.strerror or exc}; "
                          f"the connection to {self.ch.describe()} was reset")
        self._up_open = False
        self._stop(err)
        self.ch.abort(str(err))
        self.tunnel.flush()

    def _sink_failed(self, exc: OSError) -> None:
        """A write error on the output (a full disk, EIO, a reader that went away): the
        peer must not take what it sent for delivered, so the connection is reset."""
        what = ("its reader went away" if isinstance(exc, (BrokenPipeError, ConnectionResetError))
                else exc.strerror or str(exc))
        err = TunnelError(f"writing the output failed: {what}; the connection to {self.ch.describe()} was reset")
        err.__cause__ = exc
        self._down_open = False
        self._stop(err)
        self.ch.abort(str(err))
        self.tunnel.flush()

    async def _up_unpolled(self) -> None:
        assert self.source is not None
        try:
            while True:
                try:
                    data = await self.source.read(READ_CHUNK)
                except OSError as exc:
                    self._source_failed(exc)
                    return
                if not data:
                    break
                await self.ch.write(data)
        except TunnelError as exc:
            self._stop(exc)
            return
        self._source_eof()

    # ---- channel -> sink
    def _notify(self, which: str) -> None:
        if self._over or self.ended.done():
            return
        try:
            if which == "w":
                if self._held is not None:
                    self._push(self._held)
            else:                          # "r", or "fail": deliver what is left, then see the error
                self._deliver()
        except Exception as exc:           # never into the tunnel's dispatch
            self._stop(exc)

    def _deliver(self) -> None:
        if not self._down_open or self._unwritten is not None or self.ended.done():
            return
        ch = self.ch
        sink, gate = self.sink, self.gate
        writer = sink.file_writer() if sink is not None and sink.kind == "file" else None
        while True:
            if writer is not None:
                if writer.error is not None:
                    self._sink_failed(writer.error)
                    return
                if writer.full:                  # the receive window closes until it catches up
                    writer.notify(self._on_writer)
                    return
            if gate is None:
                chunks = ch.take_chunks(WRITE_CHUNK)
                if not chunks:
                    break
            else:
                data = ch.take(READ_CHUNK)
                if not data:
                    break
                try:
                    data = gate.take(data)
                except TunnelError as exc:
                    self._stop(exc)
                    return
                chunks = [data] if data else []
            if not chunks or sink is None:
                continue
            if writer is not None:
                writer.put(chunks)
            elif not self._write(chunks):
                return
        if ch.error is not None:
            self._stop(ch.error)
        elif ch.at_eof:
            if writer is not None and not writer.idle:
                writer.notify(self._on_writer)   # the peer's FIN goes on once the file has it all
                return
            if writer is not None and writer.error is not None:
                self._sink_failed(writer.error)
                return
            self._down_open = False
            try:
                if self.gate is not None:
                    self.gate.end()
            except TunnelError as exc:
                self._stop(exc)
                return
            if self.sink is not None and self.close_sink:
                self.sink.write_eof()
            self._check_done()

    def _write(self, bufs: list[Buffer]) -> bool:
        """Write all of ``bufs`` to the sink (one ``writev`` while it takes everything);
        False if it would block (the rest waits) or failed.

        A sink shared by several pumps (``listen -k`` on stdout) gets whole chunks: a
        pump whose chunk is cut short owns the sink until the rest is out, and the
        others wait their turn (:attr:`FdStream.owner`).
        """
        sink = self.sink
        assert sink is not None
        if sink.owner is not None and sink.owner is not self:
            self._unwritten = bufs
            sink.waiting.append(self._on_sink_writable)
            return False
        fd = sink.fd
        while bufs:
            try:
                n = os.writev(fd, bufs) if len(bufs) > 1 else os.write(fd, bufs[0])
            except (BlockingIOError, InterruptedError):
                self._unwritten = bufs
                sink.owner = self
                self._watch_sink(True)
                return False
            except (BrokenPipeError, ConnectionResetError) as exc:
                if not self.reader_gone_ok:
                    self._sink_failed(exc)
                    return False
                self._stop(_ReaderGone())          # first: the abort below notifies this pump
                self.ch.abort("local reader went away")
                return False
            except OSError as exc:
                self._sink_failed(exc)
                return False
            bufs = _advance(bufs, n)
        self._release_sink()
        return True

    def _on_writer(self) -> None:
        """The file writer made room, finished, or failed."""
        if self._over:
            return
        try:
            self._deliver()
        except Exception as exc:
            self._stop(exc)
        self.tunnel.kick()                 # the receive window may have opened

    def _release_sink(self) -> None:
        sink = self.sink
        if sink is not None and sink.owner is self:
            sink.owner = None
            waiting, sink.waiting = sink.waiting, []
            for wake in waiting:
                wake()

    def _watch_sink(self, on: bool) -> None:
        if on == self._sink_watched or self.sink is None:
            return
        self._sink_watched = on
        if on:
            self.loop.add_writer(self.sink.fd, self._on_sink_writable)
        else:
            self.loop.remove_writer(self.sink.fd)

    def _on_sink_writable(self) -> None:
        bufs, self._unwritten = self._unwritten, None
        self._watch_sink(False)
        if self._over:
            return
        try:
            if self.ended.done() or (bufs is not None and not self._write(bufs)):
                return
            self._deliver()
        except Exception as exc:
            self._stop(exc)
        self.tunnel.kick()                 # the receive window may have opened

    # ---- end
    def _check_done(self) -> None:
        if not self._up_open and not self._down_open and not self.ended.done():
            self.ended.set_result(None)

    def _stop(self, exc: BaseException) -> None:
        self._watch_source(False)
        self._watch_sink(False)
        self._release_sink()
        if not self.ended.done():
            self.ended.set_exception(exc)
            self.ended.exception()         # retrieved: run() may have been cancelled first


def _advance(bufs: list[Buffer], n: int) -> list[Buffer]:
    """What is left of ``bufs`` after a write took ``n`` bytes of them."""
    i = 0
    while i < len(bufs) and n >= len(bufs[i]):
        n -= len(bufs[i])
        i += 1
    rest = bufs[i:] if i else bufs
    if n:
        rest = [memoryview(rest[0])[n:], *rest[1:]]
    return rest


async def splice(ch: Channel, source: FdStream | None, sink: FdStream | None, *,
                 gate: Any = None, on_source_eof: Callable[[], None] | None = None,
                 close_sink: bool = True, reader_gone_ok: bool = True) -> None:
    """Copy ``source`` -> ``ch`` and ``ch`` -> ``sink`` until both directions ended (a :class:`Pump`).

    The source's EOF becomes our FIN; the peer's FIN closes the sink's write side
    (unless ``close_sink`` is false). ``source=None`` sends FIN at once; ``sink=None``
    discards what arrives; ``gate`` (``take``/``end``) sees the incoming bytes first.
    Raises TunnelError when the channel fails or the sink cannot be written (the
    connection is then reset); a sink whose reader went away (EPIPE) resets the
    connection too, and ends quietly when ``reader_gone_ok`` (a forwarded socket's
    application closing is its right; netcat's standard output closing is a failure).
    """
    try:
        await Pump(ch, source, sink, gate=gate, on_source_eof=on_source_eof, close_sink=close_sink,
                   reader_gone_ok=reader_gone_ok).run()
    except _ReaderGone:
        return


class _ReaderGone(Exception):
    pass


LAST_ACK_GRACE = 2.0   # both FINs exchanged and all data acknowledged: wait this long for the last ACK


async def _until_finished(ch: Channel) -> None:
    """Wait until our FIN is acknowledged (TIME-WAIT or CLOSED).

    In LAST-ACK/CLOSING with every data byte acknowledged only the ACK of our FIN
    is missing; after :data:`LAST_ACK_GRACE` s the exchange counts as complete. Only
    then: before our FIN has left (the engine sends it right behind the last data, so
    this is brief) there is no ACK to be lenient about, and closing the session would
    tell the receiver "gone" before "done". Both states imply the peer's FIN is in.
    """
    if ch.finished:
        if ch.error is not None:
            raise ch.error
        return
    try:
        await asyncio.wait_for(asyncio.shield(ch.done), LAST_ACK_GRACE)
        return
    except asyncio.TimeoutError:
        pass
    while not ch.finished:
        if ch.all_data_acked and ch.conn.state in (State.LAST_ACK, State.CLOSING):
            return
        await asyncio.wait({ch.done}, timeout=LAST_ACK_GRACE)
    if ch.error is not None:
        raise ch.error


# ------------------------------------------------------------------ running
class Signals:
    """SIGINT/SIGTERM for a running command: the first asks for a graceful stop, the second is final.

    ``stopping`` resolves with the exit status to use: 130 after SIGINT
    (128 + 2, the shell's convention), 0 after SIGTERM (a service asked to stop
    did not fail).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import signal

        self.loop = loop
        self.stopping: asyncio.Future[int] = loop.create_future()
        self.main: asyncio.Task | None = None
        self.final_code: int | None = None
        self._installed = []
        for sig, code in ((signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_OK)):
            try:
                loop.add_signal_handler(sig, self._on_signal, code)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_signal(self, code: int) -> None:
        if not self.stopping.done():
            self.stopping.set_result(code)
        elif self.main is not None and not self.main.done():
            self.final_code = self.stopping.result()
            self.main.cancel()

    def remove(self) -> None:
        for sig in self._installed:
            self.loop.remove_signal_handler(sig)


async def work_or_signal(work: Awaitable[int], sig: Signals, tunnel: Tunnel) -> int:
    """The exit status of ``work``, or, if a signal comes first, of the signal
    (``work`` is cancelled and the tunnel's connections are closed gracefully)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task, sig.stopping}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    await tunnel.close_all()
    return sig.stopping.result()


def run(main: Callable[[Signals], Any], *, verbose: int = 0, busy_poll: float | None = None) -> int:
    """Run ``main(signals)`` in a fresh event loop; return its exit status.

    The loop polls before it sleeps (:class:`~toucli.busypoll.BusyPollSelector`): with
    ``busy_poll`` None (the default), adaptively, up to ``ADAPTIVE_WINDOW``; with
    ``busy_poll`` > 0, for that many seconds after traffic; with 0, never. Bulk traffic on
    a long path coalesces its wake-ups in every mode. A
    :class:`TunnelError` becomes one line on stderr (a traceback too with ``-v``) and its
    exit status; a second signal ends at once with the first signal's status.
    """
    async def runner() -> int:
        loop = asyncio.get_running_loop()
        signals = Signals(loop)
        signals.main = asyncio.current_task()
        inner = asyncio.ensure_future(main(signals))
        try:
            return await inner
        except asyncio.CancelledError:
            inner.cancel()
            return signals.final_code if signals.final_code is not None else EXIT_INTERRUPTED
        finally:
            signals.remove()

    window = ADAPTIVE_WINDOW if busy_poll is None else busy_poll
    def factory() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(BusyPollSelector(window, adaptive=busy_poll is None))
    try:
        with asyncio.Runner(loop_factory=factory) as runner_:
            return runner_.run(runner())
    except TunnelError as exc:
        if verbose:
            import traceback
            traceback.print_exc()
        print(f"tou: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
