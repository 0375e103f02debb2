"""Batched UDP I/O for the tunnel: a drain loop on receive, GSO/GRO where the kernel has them.

asyncio's datagram endpoint reads every datagram into a fresh 256 KiB buffer
and calls back once per datagram. :class:`UdpSocket` instead reads into one
reusable buffer in a bounded loop (the caller drives it from
``loop.add_reader``) and hands each datagram to a callback as a
``memoryview`` that is only valid during the call.

Linux offloads (``udp(7)``, kernel >= 4.18 / 5.0):

* **GSO** (``UDP_SEGMENT`` ancillary data on ``sendmsg``): several datagrams
  of one size to one address leave in a single system call; the kernel cuts
  them apart. Only the last may be shorter.
* **GRO** (``UDP_GRO`` socket option): the kernel may hand over several
  datagrams of one size as one buffer with a ``UDP_GRO`` control message
  giving the segment size; on loopback a GSO batch arrives this way uncut.

Both are probed when the socket is opened and switched off for good the first
time the kernel refuses them, after which the plain path is used.

Datagrams leave with the don't-fragment bit (``IP_PMTUDISC_PROBE``, ``ip(7)``):
never fragmented, and not limited by the kernel's cached path MTU either, so
the runtime's own path-MTU discovery (RFC 8899) learns what really gets through.

ICMP errors about sent datagrams (``IP_RECVERR`` / ``IPV6_RECVERR``, ``ip(7)``,
``ipv6(7)``) are read from the socket's error queue and handed to ``on_error``
as :class:`IcmpReport`: the original destination, the error, the MTU a Packet
Too Big names, and the quoted start of the datagram (for validation, RFC 8899
§4.6.1). With the option on, the kernel also reports such an error once through
the next ``recv``/``send`` on the socket, whatever its peer; those calls drain
the queue and carry on instead of failing.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import deque
from typing import Any, Callable, NamedTuple

SOL_UDP = 17
UDP_SEGMENT = 103          # linux/udp.h
UDP_GRO = 104              # linux/udp.h
GSO_MAX_SEGMENTS = 64      # UDP_MAX_SEGMENTS in older kernels (newer: 128)
GSO_MAX_BYTES = 65000      # the super-packet must fit one IP packet (64 KiB minus headers)
RECV_BUFFER = 65536        # a GRO buffer holds up to 64 KiB
SOCKET_BUFFER = 4 << 20    # requested SO_RCVBUF / SO_SNDBUF
PENDING_LIMIT = 4096       # datagrams queued while the socket would block; beyond: dropped (UDP)
IP_MTU_DISCOVER = 10       # linux/in.h
IPV6_MTU_DISCOVER = 23     # linux/in6.h
PMTUDISC_PROBE = 3         # IP_PMTUDISC_PROBE / IPV6_PMTUDISC_PROBE: DF set, the PMTU cache ignored
IP_MTU = 14                # linux/in.h: the route's MTU, on a connected socket
IPV6_MTU = 24              # linux/in6.h
MAX_UDP_PAYLOAD = 65507    # 65535 less the IPv4 (20) and UDP (8) headers
IP_RECVERR = 11            # linux/in.h
IPV6_RECVERR = 25          # linux/in6.h
MSG_ERRQUEUE = 0x2000      # linux/socket.h
SO_EE_ORIGIN_LOCAL = 1     # linux/errqueue.h: who reported the error
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
ERRQUEUE_READS = 64        # error-queue entries read per drain
QUOTE_BYTES = 512          # how much of a quoted datagram is kept
# What the kernel makes of ICMP errors (icmp_err_convert, icmpv6_err_convert): an
# errno from this set on recv/send may be a queued report, not this call's failure.
ICMP_ERRNOS = frozenset({errno.EMSGSIZE, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                         errno.EHOSTDOWN, errno.ENONET, errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                         errno.EPROTO, errno.EACCES})

_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)
_EE = struct.Struct("=IBBBBII")   # struct sock_extended_err (linux/errqueue.h)
_ERR_CMSG_SPACE = socket.CMSG_SPACE(_EE.size + 28)   # the error and the offender's sockaddr

Address = Any              # whatever the socket family uses: (host, port) or (host, port, flow, scope)
Handler = Callable[[memoryview, Address], None]


class IcmpReport(NamedTuple):
    """One entry of the socket's error queue (``ip(7)`` IP_RECVERR)."""

    errno: int            # what the kernel made of it (EMSGSIZE for Packet Too Big)
    origin: int           # SO_EE_ORIGIN_ICMP, _ICMP6 or _LOCAL
    type: int             # ICMP type and code
    code: int
    info: int             # for EMSGSIZE: the MTU (IP packet bytes) the reporter names
    dest: Address         # where the datagram the error is about was going
    quoted: bytes         # the start of that datagram's UDP payload, as quoted

    @property
    def packet_too_big(self) -> int | None:
        """The next-hop MTU of an ICMP Packet Too Big / Fragmentation Needed, else None."""
        if self.errno == errno.EMSGSIZE and self.origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) \
                and self.info > 0:
            return self.info
        return None


class UdpSocket:
    """A non-blocking UDP socket with batched receive and segmented send."""

    def __init__(self, sock: socket.socket, *, gso: bool = True, gro: bool = True) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self.connected_to: Address | None = None
        self.gso = gso and _probe_gso(sock)
        self.gro = gro and _enable_gro(sock)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self.pending: deque[tuple[bytes, Address]] = deque()
        self.on_blocked: Callable[[], None] | None = None   # set by the runtime: watch for writability
        self.on_error: Callable[[IcmpReport], None] | None = None   # error-queue entries
        # counters
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.recv_calls = 0
        self.send_calls = 0
        self.send_drops = 0
        self.icmp_in = 0
        self.df = _set_dont_fragment(sock)
        self.recverr = _enable_recverr(sock)
        _grow_buffers(sock)

    # -------------------------------------------------------------- set-up
    @classmethod
    def bind(cls, host: str, port: int, family: int = socket.AF_INET, **kw: bool) -> "UdpSocket":
        """A socket bound to ``host:port``; ``::`` is dual-stack (v4 peers appear v4-mapped)."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6 and host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, **kw)

    def route_mtu(self, addr: Address) -> int | None:
        """The MTU of the local interface the route to ``addr`` leaves by (``ip(7)`` IP_MTU).

        RFC 8899 §5.1.2 bounds the search by it (MAX_PLPMTU). Asked of a throwaway
        socket connected to ``addr``, so this socket stays unconnected. None if the
        kernel does not say.
        """
        probe = None
        try:
            probe = socket.socket(self.family, socket.SOCK_DGRAM)
            host = self.sock.getsockname()[0]
            if host not in ("0.0.0.0", "::"):
                probe.bind((host, 0))              # the route this socket's datagrams take
            probe.connect(addr)
            if self.family == socket.AF_INET6:
                return probe.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            return probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
        except OSError:
            return None
        finally:
            if probe is not None:
                probe.close()

    def connect(self, addr: Address) -> None:
        """Fix the peer: only its datagrams are received, and ICMP errors become ECONNREFUSED."""
        self.sock.connect(addr)
        self.connected_to = self.sock.getpeername()

    def fileno(self) -> int:
        return self.sock.fileno()

    def local_address(self) -> Address:
        return self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------- receive
    def receive(self, handler: Handler, max_calls: int = 64) -> int:
        """Read until the socket is empty or ``max_calls`` reads were made.

        Calls ``handler(datagram, address)`` for each datagram (GRO buffers are
        cut at the segment size). Returns the number of datagrams. A wakeup with
        nothing to read, or an ICMP error reported through the read, drains the
        error queue. Other errors (and, with no error queue, ECONNREFUSED and the
        like on a connected socket) propagate.
        """
        sock, buf, view = self.sock, self._buf, self._view
        count = 0
        if self.gro:
            recvmsg_into = sock.recvmsg_into
            for _ in range(max_calls):
                try:
                    n, anc, _flags, addr = recvmsg_into((buf,), _CMSG_SPACE)
                except (BlockingIOError, InterruptedError):
                    if not count and self.recverr:
                        self.drain_errors()
                    break
                except OSError as exc:
                    if not self._reported(exc):
                        raise
                    continue
                self.recv_calls += 1
                self.bytes_in += n
                seg = 0
                for level, kind, data in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = _INT.unpack_from(data)[0]
                if seg and seg < n:
                    for off in range(0, n, seg):
                        handler(view[off:min(off + seg, n)], addr)
                        count += 1
                else:
                    handler(view[:n], addr)
                    count += 1
        else:
            recvfrom_into = sock.recvfrom_into
            for _ in range(max_calls):
                try:
                    n, addr = recvfrom_into(buf)
                except (BlockingIOError, InterruptedError):
                    if not count and self.recverr:
                        self.drain_errors()
                    break
                except OSError as exc:
                    if not self._reported(exc):
                        raise
                    continue
                self.recv_calls += 1
                self.bytes_in += n
                handler(view[:n], addr)
                count += 1
        self.datagrams_in += count
        return count

    def _reported(self, exc: OSError, sending: bool = False) -> bool:
        """A recv or send failed with ``exc``: True when it is an ICMP error the error
        queue reports (drained now, the call may go on), False when it is the call's own.
        A read never fails with these for its own sake; a send may (EMSGSIZE for a datagram
        too big for the interface), so for a send the queue must hold an ICMP entry."""
        if exc.errno not in ICMP_ERRNOS:
            return False
        if self.recverr:
            return self.drain_errors() > 0 or not sending
        # No error queue: only a connected socket hears of ICMP errors. A Packet Too Big
        # is left to path-MTU discovery; the rest (ECONNREFUSED ...) end the peer.
        return exc.errno == errno.EMSGSIZE

    def drain_errors(self) -> int:
        """Read the error queue, handing each entry to ``on_error``; the number of ICMP ones."""
        icmp = 0
        recvmsg = self.sock.recvmsg
        for _ in range(ERRQUEUE_READS):
            try:
                data, anc, _flags, addr = recvmsg(QUOTE_BYTES, _ERR_CMSG_SPACE, MSG_ERRQUEUE)
            except OSError:          # empty (EAGAIN), or nothing of the kind on this system
                break
            for level, kind, raw in anc:
                if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)) \
                        or len(raw) < _EE.size:
                    continue
                err, origin, icmp_type, code, _pad, info, _data = _EE.unpack_from(raw)
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                    icmp += 1
                    self.icmp_in += 1
                if self.on_error is not None:
                    self.on_error(IcmpReport(err, origin, icmp_type, code, info, addr, data))
        return icmp

    # ---------------------------------------------------------------- send
    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """Send datagrams in order, grouping runs to one address into GSO batches.

        When the socket would block the rest is queued (up to ``PENDING_LIMIT``
        datagrams, then dropped like a full router queue) and ``on_blocked`` is
        called; :meth:`flush_pending` continues once the socket is writable.
        """
        if self.pending:
            self._queue(datagrams, 0)
            return
        n = len(datagrams)
        i = 0
        retried = -1
        gso = self.gso
        while i < n:
            data, addr = datagrams[i]
            j = i + 1
            if gso and j < n:
                size = len(data)
                limit = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(size, 1))
                while j < n and j - i < limit:
                    d2, a2 = datagrams[j]
                    if a2 != addr or len(d2) > size:
                        break
                    j += 1
                    if len(d2) < size:
                        break          # a shorter datagram ends a GSO batch
            try:
                if j - i > 1:
                    self._send_gso(datagrams, i, j, addr)
                else:
                    self._send_one(data, addr)
            except (BlockingIOError, InterruptedError):
                self._queue(datagrams, i)
                return
            except OSError as exc:
                if retried != i and self._reported(exc, sending=True):
                    retried = i                # an earlier datagram's ICMP error: send this again
                    continue
                if j - i > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.gso = gso = False     # refused by the kernel or device: plain sends from now on
                    continue
                if exc.errno in (errno.ENOBUFS, errno.EMSGSIZE, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                 errno.ENETUNREACH, errno.EPERM, errno.EADDRNOTAVAIL):
                    self.send_drops += j - i   # lost like any datagram; TCP recovers
                    i = j
                    continue
                raise
            i = j

    def send_probe(self, data: bytes, addr: Address) -> bool:
        """Send one path-MTU probe now; False when the local stack refuses its size (EMSGSIZE).

        A probe that would block, or that any other error stops, counts as sent
        (the probe timer declares it lost): it must not wait behind a queue.
        """
        for attempt in range(2):
            try:
                self._send_one(data, addr)
            except (BlockingIOError, InterruptedError):
                self.send_drops += 1
            except OSError as exc:
                if attempt == 0 and self._reported(exc, sending=True):
                    continue                   # an earlier datagram's ICMP error: try again
                self.send_drops += 1
                if exc.errno == errno.EMSGSIZE:
                    return False
            break
        return True

    def _send_one(self, data: bytes, addr: Address) -> None:
        if self.connected_to is not None:
            self.sock.send(data)
        else:
            self.sock.sendto(data, addr)
        self.send_calls += 1
        self.datagrams_out += 1
        self.bytes_out += len(data)

    def _send_gso(self, datagrams: list[tuple[bytes, Address]], i: int, j: int, addr: Address) -> None:
        parts = [d for d, _ in datagrams[i:j]]
        size = len(parts[0])
        anc = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
        if self.connected_to is not None:
            sent = self.sock.sendmsg(parts, anc)
        else:
            sent = self.sock.sendmsg(parts, anc, 0, addr)
        self.send_calls += 1
        self.datagrams_out += j - i
        self.bytes_out += sent

    def _queue(self, datagrams: list[tuple[bytes, Address]], start: int) -> None:
        pending = self.pending
        was_empty = not pending
        for k in range(start, len(datagrams)):
            if len(pending) >= PENDING_LIMIT:
                self.send_drops += len(datagrams) - k
                break
            pending.append(datagrams[k])
        if was_empty and pending and self.on_blocked is not None:
            self.on_blocked()

    def flush_pending(self) -> bool:
        """Send what was queued while blocked; True when the queue is empty."""
        pending = self.pending
        while pending:
            batch = list(pending)
            pending.clear()
            self.send(batch)
            if pending:
                return False
        return True


def _probe_gso(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return bool(sock.getsockopt(SOL_UDP, UDP_GRO))
    except OSError:
        return False


def _set_dont_fragment(sock: socket.socket) -> bool:
    """DF on every datagram (both families on a dual-stack socket); False where unsupported."""
    return _set_ip_option(sock, IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_PROBE)


def _enable_recverr(sock: socket.socket) -> bool:
    """Queue ICMP errors about sent datagrams (both families on a dual-stack socket)."""
    return _set_ip_option(sock, IP_RECVERR, IPV6_RECVERR, 1)


def _set_ip_option(sock: socket.socket, v4: int, v6: int, value: int) -> bool:
    """Set an IPv4 option, and on an IPv6 socket its IPv6 twin too (v4-mapped peers use
    the first); True when at least one took."""
    levels = [(socket.IPPROTO_IP, v4)]
    if sock.family == socket.AF_INET6:
        levels.insert(0, (socket.IPPROTO_IPV6, v6))
    ok = False
    for level, opt in levels:
        try:
            sock.setsockopt(level, opt, value)
            ok = True
        except OSError:
            pass
    return ok


def _grow_buffers(sock: socket.socket) -> None:
    """Ask for large socket buffers: a burst of a whole window must not overflow them."""
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):   # SO_RCVBUFFORCE / SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
