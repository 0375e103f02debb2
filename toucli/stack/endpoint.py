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
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from typing import Hashable

from .config import ConnectionConfig
from .connection import Connection, State
from .errors import LocalError
from .events import Closed, Event
from .segment import ACK, RST, SYN, Segment
from .seq import MASK, seq_gt

ISN_TICK = 250_000   # RFC 6528 §3: M is a timer that ticks every 4 microseconds


class Endpoint:
    """A set of TCP connections and listeners sharing one event queue."""

    def __init__(self, config: ConnectionConfig | None = None, secret: bytes = b"",
                 *, max_half_open: int = 1024) -> None:
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
                config: ConnectionConfig | None = None) -> Connection:
        """Active open towards ``peer``."""
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
        conn.connect(now)
        self._touch(conn)
        return conn

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
            conn.accept_syn(seg, now)
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
                "rst_sent": self.rst_sent, "syn_dropped": self.syn_dropped}

    # ------------------------------------------------------------ internals
    def _touch(self, conn: Connection) -> None:
        """After any input: the connection may have output and a new deadline."""
        key = (conn.peer, conn.local_port, conn.remote_port)
        self._dirty[key] = conn
        if conn.passive and not getattr(conn, "_counted_open", False) and conn.state != State.SYN_RECEIVED:
            conn._counted_open = True
            self._half_open -= 1

    def _schedule(self, conn: Connection) -> None:
        key = (conn.peer, conn.local_port, conn.remote_port)
        if self.connections.get(key) is not conn:
            return
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
            self._dirty.pop(key, None)
            if conn.passive and not getattr(conn, "_counted_open", False):
                conn._counted_open = True
                self._half_open -= 1


def reset_for(seg: Segment) -> Segment:
    """The RST answering a segment that has no connection (RFC 9293 §3.10.7.1)."""
    if seg.flags & ACK:
        return Segment(seg.dport, seg.sport, seg.ack, 0, RST)
    return Segment(seg.dport, seg.sport, 0, (seg.seq + seg.seg_len) & MASK, RST | ACK)
