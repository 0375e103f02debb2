"""A deterministic discrete-event simulator: two tou engines over two emulated links.

Client A and server B are :class:`~toucli.stack.endpoint.Endpoint` objects; A->B and
B->A are :class:`~toucli.link.Link` objects carrying *encoded* segments (the codec
in :mod:`toucli.stack.tcp` is exercised on every packet). Virtual time jumps
from one event to the next: a link delivery or an engine timer. Everything
random is drawn from generators seeded by ``seed``, so a run is reproducible.

Each side's application sends its whole payload as fast as the engine takes
it (``send`` until it returns 0, resume on :class:`Writable`), then shuts the
connection down; it reads everything as soon as :class:`Readable` says so.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from toucli.link import Link
from toucli.stack.config import ConnectionConfig
from toucli.stack.endpoint import Endpoint
from toucli.stack.events import Closed, Connected, Error, PeerClosed, Readable, Reset, Writable
from toucli.stack.segment import Segment
from toucli.stack.tcp import TcpDrop, decode_segment, encode_segment

PEER_A = "A"          # how B names A
PEER_B = "B"          # how A names B
PORT_A = 40000
PORT_B = 80
FEED_CHUNK = 256 << 10   # bytes offered to conn.send() at a time

_LATE = frozenset({"CLOSING", "LAST_ACK", "TIME_WAIT"})
LinkParams = dict[str, Any]   # keyword arguments of Link other than rng


def payload(size: int, seed: int, tag: bytes) -> bytes:
    """Deterministic pseudo-random bytes (so misplaced data cannot go unnoticed)."""
    return random.Random(hashlib.sha256(tag + seed.to_bytes(8, "big")).digest()).randbytes(size)


@dataclass
class Side:
    """One end's application: what it must send, what it got, how the connection ended."""

    name: str
    data: bytes
    conn: Any = None
    sent_off: int = 0
    shut: bool = False
    rx: bytearray = field(default_factory=bytearray)
    eof: bool = False
    data_after_eof: bool = False
    t_connected: float | None = None
    t_eof: float | None = None
    t_last_data: float | None = None   # when the last byte read so far arrived
    t_closed: float | None = None
    closed: bool = False
    resets: int = 0                 # Reset events, except late ones (below)
    late_resets: int = 0            # Reset in CLOSING, LAST_ACK or TIME_WAIT: both FINs exchanged
    errors: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)   # distinct states in the order seen
    stats: dict = field(default_factory=dict)

    def feed(self) -> None:
        """Give the connection as much data as it takes; shut down once all is queued."""
        conn = self.conn
        if conn is None or self.shut:
            return
        data = self.data
        while self.sent_off < len(data):
            n = conn.send(data[self.sent_off:self.sent_off + FEED_CHUNK])
            if n <= 0:
                return
            self.sent_off += n
        conn.shutdown()
        self.shut = True

    def read(self, now: float) -> None:
        while chunk := self.conn.recv():
            if self.eof:
                self.data_after_eof = True
            self.rx += chunk
            self.t_last_data = now

    def note_state(self) -> None:
        if self.conn is not None:
            name = self.conn.state.name
            if not self.states or self.states[-1] != name:
                self.states.append(name)


@dataclass
class Result:
    """What happened in one :func:`transfer`."""

    a: Side
    b: Side
    now: float                      # virtual time when the run stopped
    iterations: int
    timed_out: bool                 # hit time_limit or the iteration cap
    stalled: bool                   # nothing left to happen but the transfer was not finished
    decode_drops: Counter
    link_ab: dict
    link_ba: dict
    targeted_drops: Counter = field(default_factory=Counter)

    @property
    def ab_ok(self) -> bool:
        """Every byte A sent reached B once, in order, followed by EOF."""
        return self.b.eof and bytes(self.b.rx) == self.a.data and not self.b.data_after_eof

    @property
    def ba_ok(self) -> bool:
        return self.a.eof and bytes(self.a.rx) == self.b.data and not self.a.data_after_eof

    @property
    def clean_close(self) -> bool:
        """Both connections reached CLOSED (via TIME_WAIT or LAST_ACK), no reset, no error.

        A reset that hits a connection in CLOSING, LAST_ACK or TIME_WAIT does not
        count here (it is counted in ``late_resets``): both FINs had been
        exchanged, the data is checked separately, and RFC 9293 §3.10.7.4 closes
        such a connection without signalling the user. It happens when the peer
        closed and forgot the connection (short TIME-WAIT) and then answers a
        retransmitted FIN or a late ACK with RST.
        """
        return all(s.closed and not s.resets and not s.errors for s in (self.a, self.b))

    @property
    def ok(self) -> bool:
        return self.ab_ok and self.ba_ok and self.clean_close and not self.decode_drops

    @property
    def t_done(self) -> float | None:
        """When the last byte (and EOF) of both directions had been read."""
        if self.a.t_eof is None or self.b.t_eof is None:
            return None
        return max(self.a.t_eof, self.b.t_eof)

    def retransmitted_segments(self) -> int:
        return self.a.stats.get("retransmitted_segments", 0) + self.b.stats.get("retransmitted_segments", 0)

    def describe(self) -> str:
        """A one-paragraph summary for assertion messages."""
        def side(s: Side, peer: Side) -> str:
            return (f"{s.name}: sent {s.sent_off}/{len(s.data)} shut={s.shut} got {len(s.rx)}/{len(peer.data)} "
                    f"eof={s.eof} closed={s.closed} resets={s.resets} late_resets={s.late_resets} "
                    f"errors={s.errors} states={s.states} "
                    f"retrans={s.stats.get('retransmitted_segments')} rto={s.stats.get('rto_count')}")
        return (f"now={self.now:.3f} it={self.iterations} timed_out={self.timed_out} stalled={self.stalled} "
                f"decode_drops={dict(self.decode_drops)} targeted_drops={dict(self.targeted_drops)}"
                f"\n  {side(self.a, self.b)}\n  {side(self.b, self.a)}"
                f"\n  A->B {self.link_ab}\n  B->A {self.link_ba}")


def _secret(seed: int, tag: bytes) -> bytes:
    return hashlib.sha256(b"netsim secret " + tag + seed.to_bytes(8, "big")).digest()


def make_endpoint(config: ConnectionConfig, secret: bytes, iss: int | None = None) -> Endpoint:
    """An Endpoint; ``iss`` forces the initial send sequence number (wraparound tests)."""
    ep = Endpoint(config, secret)
    if iss is not None:
        ep.iss_override = iss
    return ep


def transfer(
    link_params: LinkParams | tuple[LinkParams, LinkParams],
    size_a_to_b: int,
    size_b_to_a: int,
    seed: int = 0,
    config: ConnectionConfig | tuple[ConnectionConfig, ConnectionConfig] | None = None,
    time_limit: float = 300.0,
    max_iterations: int = 2_000_000,
    iss: tuple[int | None, int | None] = (None, None),
    drop: Callable[[str, Segment], bool] | None = None,
) -> Result:
    """Run one connection A->B: A sends ``size_a_to_b`` bytes, B ``size_b_to_a``; both close.

    ``link_params`` are :class:`Link` keyword arguments for both directions, or
    a pair (A->B, B->A). ``iss`` forces either side's initial sequence
    number. ``drop(direction, segment)`` ("A->B" or "B->A"), if given, sees
    every segment an engine emits and discards those it returns True for
    (targeted loss, on top of the links' random loss). Stops when both
    connections are closed, when nothing can happen any more (stalled), or at
    ``time_limit`` virtual seconds / ``max_iterations`` loop turns.
    """
    p_ab, p_ba = link_params if isinstance(link_params, tuple) else (link_params, link_params)
    cfg_a, cfg_b = config if isinstance(config, tuple) else (config or ConnectionConfig(),) * 2
    master = random.Random(seed)
    link_ab = Link(random.Random(master.getrandbits(64)), **p_ab)
    link_ba = Link(random.Random(master.getrandbits(64)), **p_ba)
    ep_a = make_endpoint(cfg_a, _secret(seed, b"A"), iss[0])
    ep_b = make_endpoint(cfg_b, _secret(seed, b"B"), iss[1])
    ep_b.listen(PORT_B)
    a = Side("A", payload(size_a_to_b, seed, b"A->B"))
    b = Side("B", payload(size_b_to_a, seed, b"B->A"))
    drops: Counter = Counter()
    dropped: Counter = Counter()   # segments discarded by ``drop``

    # per endpoint: (endpoint, its application, outgoing link, direction name)
    ends = ((ep_a, a, link_ab, "A->B"), (ep_b, b, link_ba, "B->A"))

    def events(ep: Endpoint, side: Side, now: float) -> bool:
        seen = False
        while (ev := ep.next_event()) is not None:
            seen = True
            if side.conn is None:
                side.conn = ev.conn
            elif ev.conn is not side.conn:
                side.errors.append(f"event for a second connection: {ev!r}")
                continue
            if isinstance(ev, Connected):
                side.t_connected = now
                side.feed()
            elif isinstance(ev, Writable):
                side.feed()
            elif isinstance(ev, Readable):
                side.read(now)
            elif isinstance(ev, PeerClosed):
                side.read(now)
                side.eof = True
                side.t_eof = now
            elif isinstance(ev, Reset):
                if side.states and side.states[-1] in _LATE:
                    side.late_resets += 1
                else:
                    side.resets += 1
            elif isinstance(ev, Error):
                side.errors.append(ev.reason or "error")
            elif isinstance(ev, Closed):
                side.read(now)
                side.closed = True
                side.t_closed = now
                side.stats = side.conn.stats()
            side.note_state()
        return seen

    def flush(ep: Endpoint, link: Link, direction: str, now: float) -> None:
        for _peer, seg in ep.segments_to_send(now):
            if drop is not None and drop(direction, seg):
                dropped[direction] += 1
                continue
            link.send(encode_segment(seg), now)

    def settle(now: float) -> None:
        """Let both applications react and both engines emit, until quiet."""
        for _ in range(1000):
            busy = False
            for ep, side, link, direction in ends:
                busy |= events(ep, side, now)
                side.note_state()
                flush(ep, link, direction, now)
            if not busy:
                return

    def arrive(link: Link, ep: Endpoint, peer: str, now: float) -> None:
        for pkt in link.deliver(now):
            seg = decode_segment(pkt)
            if isinstance(seg, TcpDrop):
                drops[seg.name] += 1
            else:
                ep.receive(peer, seg, now)

    now = 0.0
    a.conn = ep_a.connect(PEER_B, PORT_A, PORT_B, now)
    settle(now)
    it = 0
    timed_out = stalled = False
    while not (a.closed and b.closed):
        it += 1
        if it > max_iterations:
            timed_out = True
            break
        times = [t for t in (link_ab.next_delivery(), link_ba.next_delivery(),
                             ep_a.next_deadline(), ep_b.next_deadline()) if t is not None]
        if not times:
            stalled = True
            break
        t = min(times)
        if t > time_limit:
            timed_out = True
            break
        if t > now:
            now = t
        arrive(link_ab, ep_b, PEER_A, now)
        arrive(link_ba, ep_a, PEER_B, now)
        for ep in (ep_a, ep_b):
            d = ep.next_deadline()
            if d is not None and d <= now:
                ep.handle_timer(now)
        settle(now)
    for s in (a, b):
        if s.conn is not None and not s.stats:
            s.stats = s.conn.stats()
    return Result(a, b, now, it, timed_out, stalled, drops, link_ab.stats(), link_ba.stats(), dropped)
