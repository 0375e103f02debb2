"""Many connections behind one demultiplexer: listeners, ISNs, RSTs for strays.

Connections are found by ``(peer, local_port, remote_port)``; ``peer`` is an
opaque hashable naming the remote host or secure session. The endpoint owns the
listeners, derives initial sequence numbers with a keyed hash (RFC 6528), answers
segments for which no connection exists with RST (RFC 9293 §3.10.7.1), and keeps
one heap of deadlines so the caller sleeps until exactly one time.

ACK coalescing is in the caller's hands: feed a batch of received segments with
:meth:`Endpoint.receive`, then call :meth:`Endpoint.segments_to_send` once, and each
connection answers the whole batch with one cumulative ACK (out-of-order and
duplicate arrivals still get one ACK each, so no SACK information is lost). Calling
``segments_to_send`` after every segment gives classic per-segment behaviour.

TCP Fast Open (RFC 7413), when ``ConnectionConfig.fast_open`` is on: as a server the
endpoint makes cookies, an 8-byte keyed BLAKE2s MAC of the client's peer identity
under the endpoint secret (§4.1.2), accepts a SYN's data only with a valid cookie
and while fewer than ``max_tfo_pending`` such connections are still in SYN-RECEIVED
(§5.1), and hands a cookie out in the SYN-ACK when the SYN asked for one or brought
a wrong one. As a client it keeps the cookies it learned, with the server's MSS, in
``tfo_cookies`` (per peer, at most ``TFO_CACHE_SIZE``), and ``connect(..., data=)``
puts data in the SYN when it holds a cookie for the peer.

RTT sharing (RFC 9040 §5 temporal, §6 ensemble): ``path_rtt`` keeps, per peer, the
RTT estimator of the connection to it that was serviced last, with a sample (at most
``PATH_CACHE_SIZE`` peers; a reference, so the hot path allocates nothing). A new connection to that peer, active or passive, times
its SYN or SYN-ACK from them instead of the 1 s of RFC 6298 §2.1: a lost SYN on a
warm tunnel costs a few round trips, not a second. With no connection to go by,
``rtt_hint(peer)`` (given by the runtime: the round trip the secure session's
handshake measured) seeds the first one the same way, SRTT = the hint and RTTVAR =
half of it, as a first sample would (RFC 6298 §2.2).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
from collections import deque
from typing import Final, Callable, Hashable

from .config import ConnectionConfig
from .connection import Connection, State
from .errors import LocalError
from .events import Closed, Event
from .rtt import RttEstimator
from .segment import ACK, RST, SYN, Segment
from .seq import MASK, seq_gt

ISN_TICK: Final = 250_000   # RFC 6528 §3: M is a timer that ticks every 4 microseconds
TFO_COOKIE_LEN: Final = 8   # RFC 7413 §4.1.2 recommends 8 bytes
TFO_CACHE_SIZE: Final = 4096   # peers whose cookie a client remembers
PATH_CACHE_SIZE: Final = 4096  # peers whose RTT the endpoint remembers


class Endpoint:
    """A set of TCP connections and listeners sharing one event queue."""

    def __init__(self, config: ConnectionConfig | None = None, secret: bytes = b"",
                 *, max_half_open: int = 1024, max_tfo_pending: int = 256) -> None:
        if len(secret) < 16:
            raise LocalError("the ISN secret must be at least 16 bytes (RFC 6528 §3)")
        self.config = config or ConnectionConfig()
        self._secret = bytes(secret[:64])
        self.connections: dict[tuple, Connection] = {}
        self.listeners: set[int] = set()
        self.events: deque[Event] = deque()
        self.max_half_open = max_half_open
        self._half_open = 0
        self._heap: list[tuple[float, int, tuple]] = []
        self._armed: dict[tuple, float] = {}
        self._dirty: dict[tuple, Connection] = {}
        self._strays: list[tuple[Hashable, Segment]] = []
        self._seq = 0
        self.iss_override: int | None = None   # tests: force the next ISN
        self.rst_sent = 0
        self.syn_dropped = 0
        # TCP Fast Open (RFC 7413)
        self.tfo_cookies: dict[Hashable, tuple[bytes, int]] = {}   # client: peer -> (cookie, MSS)
        self.max_tfo_pending = max_tfo_pending
        self._tfo_pending = 0
        self.tfo_accepted = 0       # SYNs whose data was accepted
        self.tfo_refused = 0        # SYNs with data that was not (bad cookie, or too many pending)
        self.path_rtt: dict[Hashable, RttEstimator] = {}   # peer -> its path's latest estimator, RFC 9040
        self.rtt_hint: Callable[[Hashable], float | None] | None = None   # peer -> a round trip measured below TCP

    # ------------------------------------------------------------ identities
    def _hash(self, label: bytes, peer: Hashable, lport: int, rport: int) -> int:
        h = hashlib.blake2s(key=self._secret[:32], digest_size=8)
        h.update(label)
        h.update(repr(peer).encode())
        h.update(lport.to_bytes(2, "big") + rport.to_bytes(2, "big"))
        return int.from_bytes(h.digest()[:4], "big")

    def _isn(self, peer: Hashable, lport: int, rport: int, now: float) -> int:
        """ISN = M + F(localip, localport, remoteip, remoteport, secretkey) (RFC 6528 §3)."""
        if self.iss_override is not None:
            isn, self.iss_override = self.iss_override, None
            return isn & MASK
        return (int(now * ISN_TICK) + self._hash(b"isn", peer, lport, rport)) & MASK

    def tfo_cookie(self, peer: Hashable) -> bytes:
        """The Fast Open cookie of ``peer``: MAC(secret, peer identity) (RFC 7413 §4.1.2)."""
        h = hashlib.blake2s(key=self._secret[:32], digest_size=TFO_COOKIE_LEN, person=b"tou-tfo")
        h.update(repr(peer).encode())
        return h.digest()

    def _ts_offset(self, peer: Hashable, lport: int, rport: int) -> int:
        """Per-connection timestamp offset (RFC 7323 §7.1), so TSval leaks no uptime."""
        return self._hash(b"ts", peer, lport, rport)

    # ------------------------------------------------------------- the API
    def listen(self, port: int) -> None:
        if not 0 < port < 65536:
            raise LocalError(f"port out of range: {port}")
        self.listeners.add(port)

    def unlisten(self, port: int) -> None:
        self.listeners.discard(port)

    def connect(self, peer: Hashable, local_port: int, remote_port: int, now: float,
                config: ConnectionConfig | None = None, *, data: bytes = b"", hold: bool = False) -> Connection:
        """Active open towards ``peer``; ``data`` is queued at once (as ``conn.send``).

        ``hold``: the path to ``peer`` is not open yet; the SYN waits for :meth:`release`.

        With Fast Open on and a cookie cached for ``peer``, ``data`` (and anything
        else sent before the next :meth:`segments_to_send`) rides in the SYN, up to
        one MSS (RFC 7413 §4.1.2).
        """
        for p in (local_port, remote_port):
            if not 0 < p < 65536:
                raise LocalError(f"port out of range: {p}")
        key = (peer, local_port, remote_port)
        old = self.connections.get(key)
        if old is not None:
            if old.state != State.TIME_WAIT:
                raise LocalError(f"connection {local_port}->{remote_port} to {peer!r} exists")
            self._forget(old)
        conn = Connection(config or self.config, local_port, remote_port,
                          self._isn(peer, local_port, remote_port, now), now, peer=peer,
                          ts_offset=self._ts_offset(peer, local_port, remote_port), events=self.events)
        self.connections[key] = conn
        conn.wake = self._touch
        self._share_rtt(conn)
        tfo = None
        if conn.config.fast_open:
            conn.tfo_cache = self.tfo_cookies
            tfo = self.tfo_cookies.get(peer)
            if len(self.tfo_cookies) > TFO_CACHE_SIZE:
                del self.tfo_cookies[next(iter(self.tfo_cookies))]   # forget the oldest
        conn.connect(now, tfo, hold=hold)
        if data:
            conn.send(data)
        self._touch(conn)
        return conn

    def release(self, peer: Hashable, now: float) -> None:
        """The path to ``peer`` is open: the SYNs held for it leave now (``connect(hold=True)``)."""
        for conn in list(self.connections.values()):
            if conn.peer == peer:
                self._share_rtt(conn)          # the path may have been measured while it waited
                conn.release(now)

    def receive(self, peer: Hashable, seg: Segment, now: float) -> None:
        """Deliver one segment from ``peer``."""
        key = (peer, seg.dport, seg.sport)
        conn = self.connections.get(key)
        if conn is not None and conn.state == State.TIME_WAIT and seg.flags & SYN and not seg.flags & (ACK | RST):
            # RFC 9293 §3.10.7.4 / RFC 6191: a new incarnation may reuse a TIME-WAIT pair
            # when its SYN is above what the old one received.
            if seq_gt(seg.seq, (conn.irs + conn.rcv_nxt) & MASK) and seg.dport in self.listeners:
                self._forget(conn)
                conn = None
        if conn is None:
            self._no_connection(peer, seg, now)
            return
        conn.receive(seg, now)
        self._touch(conn)

    def _no_connection(self, peer: Hashable, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & RST:
            return
        if seg.dport in self.listeners and flags & SYN and not flags & ACK:
            if self._half_open >= self.max_half_open:
                self.syn_dropped += 1
                return
            conn = Connection(self.config, seg.dport, seg.sport,
                              self._isn(peer, seg.dport, seg.sport, now), now, peer=peer,
                              ts_offset=self._ts_offset(peer, seg.dport, seg.sport), events=self.events)
            conn.wake = self._touch
            self._share_rtt(conn)
            tfo_data = False
            give_cookie = None
            if self.config.fast_open and seg.tfo_cookie is not None:
                good = self.tfo_cookie(peer)
                valid = hmac.compare_digest(seg.tfo_cookie, good)
                if not valid:
                    give_cookie = good   # RFC 7413 §4.2.2: a request, or a stale cookie
                if seg.payload:
                    if valid and self._tfo_pending < self.max_tfo_pending:
                        tfo_data = True
                        self.tfo_accepted += 1
                    else:
                        self.tfo_refused += 1   # only the SYN is acknowledged; the client resends
            conn.accept_syn(seg, now, tfo_data=tfo_data, tfo_cookie=give_cookie)
            if tfo_data:
                self._tfo_pending += 1
                conn.tfo_counted = True
            self._half_open += 1
            self.connections[(peer, seg.dport, seg.sport)] = conn
            self._touch(conn)
            return
        self._strays.append((peer, reset_for(seg)))
        self.rst_sent += 1

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, key = heapq.heappop(heap)
            if self._armed.get(key) != t:
                continue   # lazily deleted
            del self._armed[key]
            conn = self.connections.get(key)
            if conn is None:
                continue
            conn.handle_timer(now)
            self._touch(conn)

    def segments_to_send(self, now: float) -> list[tuple[Hashable, Segment]]:
        out = self._strays
        self._strays = []
        dirty = self._dirty
        self._dirty = {}
        for conn in dirty.values():
            for seg in conn.segments_to_send(now):
                out.append((conn.peer, seg))
            self._schedule(conn)
        return out

    def next_deadline(self) -> float | None:
        if self._strays or self._dirty:
            return float("-inf")
        heap = self._heap
        while heap and self._armed.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def next_event(self) -> Event | None:
        if not self.events:
            return None
        ev = self.events.popleft()
        if isinstance(ev, Closed):
            key = (ev.conn.peer, ev.conn.local_port, ev.conn.remote_port)
            if self.connections.get(key) is ev.conn:
                self._forget(ev.conn)
        return ev

    def stats(self) -> dict:
        return {"connections": len(self.connections), "listeners": sorted(self.listeners),
                "rst_sent": self.rst_sent, "syn_dropped": self.syn_dropped,
                "tfo_accepted": self.tfo_accepted, "tfo_refused": self.tfo_refused,
                "tfo_pending": self._tfo_pending, "tfo_cookies": len(self.tfo_cookies)}

    # ------------------------------------------------------------ internals
    def _touch(self, conn: Connection) -> None:
        """After any input: the connection may have output and a new deadline."""
        key = (conn.peer, conn.local_port, conn.remote_port)
        self._dirty[key] = conn
        if conn.passive and not conn.counted_open and conn.state != State.SYN_RECEIVED:
            conn.counted_open = True
            self._half_open -= 1
            if conn.tfo_counted:
                conn.tfo_counted = False
                self._tfo_pending -= 1

    def _share_rtt(self, conn: Connection) -> None:
        """A new connection starts from what its peer's path is known to take (RFC 9040)."""
        known = self.path_rtt.get(conn.peer)
        if known is not None and known.srtt is not None:
            conn.rtt.seed(known.srtt, known.rttvar)
        elif self.rtt_hint is not None:
            hint = self.rtt_hint(conn.peer)
            if hint is not None and hint >= 0.0:
                conn.rtt.seed(hint, hint / 2.0)

    def _schedule(self, conn: Connection) -> None:
        key = (conn.peer, conn.local_port, conn.remote_port)
        if self.connections.get(key) is not conn:
            return
        rtt = conn.rtt
        path = self.path_rtt
        if rtt.srtt is not None and path.get(conn.peer) is not rtt:
            if conn.peer not in path and len(path) >= PATH_CACHE_SIZE:
                del path[next(iter(path))]   # forget the oldest peer
            path[conn.peer] = rtt
        t = conn.next_deadline()
        if t is None:
            self._armed.pop(key, None)
            return
        if self._armed.get(key) == t:
            return
        self._armed[key] = t
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, key))

    def _forget(self, conn: Connection) -> None:
        key = (conn.peer, conn.local_port, conn.remote_port)
        if self.connections.get(key) is conn:
            del self.connections[key]
            self._armed.pop(key, None)
            if self._dirty.pop(key, None) is not None:
                # Its Closed event was taken before its output: the RST still goes out.
                self._strays.extend((conn.peer, seg) for seg in conn.take_control())
            if conn.passive and not conn.counted_open:
                conn.counted_open = True
                self._half_open -= 1
            if conn.tfo_counted:
                conn.tfo_counted = False
                self._tfo_pending -= 1


def reset_for(seg: Segment) -> Segment:
    """The RST answering a segment that has no connection (RFC 9293 §3.10.7.1)."""
    if seg.flags & ACK:
        return Segment(seg.dport, seg.sport, seg.ack, 0, RST)
    return Segment(seg.dport, seg.sport, 0, (seg.seq + seg.seg_len) & MASK, RST | ACK)
