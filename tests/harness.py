"""A crafted-segment test harness for the TCP engine, with explicit virtual time.

In the style of smoltcp's ``send!``/``recv!`` tests: the test plays the remote
peer by hand. It feeds the engine hand-built :class:`Segment` objects at chosen
instants and asserts the *exact* segments and events that come back.

Virtual time only moves forward, and only when the test says so. Before any
input at time ``at`` the harness fires every engine timer due up to ``at``
(as a real driver would), so no timer output is ever lost: every segment the
engine emits lands in one output queue, stamped with the time it was emitted,
and every event in one event queue. ``expect*`` calls consume those queues.

Two modes:

* default: an :class:`~toucli.stack.endpoint.Endpoint` with a fixed secret and
  ``iss_override`` so the first connection's ISN is known;
* ``bare=True``: a lone :class:`~toucli.stack.connection.Connection` built with
  an explicit ``ts_offset``, so TSval = ``int(now*1000) + ts_offset`` is
  predictable (RFC 7323 tests).

Expected segments may hold :data:`ANY` in any field to accept whatever the
engine put there (e.g. ``tsval=ANY`` in endpoint mode, whose timestamp offset
is a keyed hash).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Hashable, Iterable

from toucli.stack.config import ConnectionConfig
from toucli.stack.connection import Connection, State
from toucli.stack.endpoint import Endpoint
from toucli.stack.events import Connected, Event
from toucli.stack.segment import ACK, SYN, Segment
from toucli.stack.seq import MASK

__all__ = ["ANY", "Harness", "HarnessError", "PEER", "LOCAL_PORT", "REMOTE_PORT", "SECRET",
           "segment_diff", "test_config"]

PEER = "peer"
LOCAL_PORT = 40000    # the engine's port for active opens
REMOTE_PORT = 80      # the hand-played peer's port for active opens
SECRET = bytes(range(32))

_FIELDS = ("sport", "dport", "seq", "ack", "flags", "wnd", "urg", "mss", "wscale",
           "sack_perm", "sack", "tsval", "tsecr", "tfo_cookie", "payload")
_MAX_TIMER_STEPS = 100_000
EPS = 1e-9   # deadlines computed as sums of floats (0.1 + 0.2) count as due at the rounded time


class _Any:
    """Matches any value in an expected segment field."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class HarnessError(AssertionError):
    """A mismatch between what the test expected and what the engine did."""


def test_config(**overrides: Any) -> ConnectionConfig:
    """A small, predictable configuration: no timestamps, no window scaling, RFC 6298 RTO.

    MSS 1000 and a 64000-byte receive buffer give round numbers: the engine
    advertises ``wnd=64000`` until data is buffered.
    """
    base = dict(mss=1000, send_buffer=1 << 20, recv_buffer=64000, initial_recv_window=64000,
                window_scaling=False, timestamps=False, sack=True, congestion_control="newreno",
                pacing=False, rto_min_var=0.0)
    base.update(overrides)
    return ConnectionConfig(**base)


test_config.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _wrap(x: Any) -> Any:
    """Reduce a sequence number mod 2**32 (``ANY`` passes through)."""
    return x & MASK if isinstance(x, int) else x


def _fmt_value(name: str, v: Any) -> str:
    if name == "payload" and isinstance(v, (bytes, bytearray)):
        b = bytes(v)
        return f"<{len(b)} bytes {b[:12]!r}{'...' if len(b) > 12 else ''}>"
    return repr(v)


def segment_diff(expected: Segment, actual: Segment) -> list[str]:
    """Field-by-field differences (``ANY`` in ``expected`` matches anything)."""
    out = []
    for name in _FIELDS:
        e = getattr(expected, name)
        a = getattr(actual, name)
        if e is ANY:
            continue
        if name == "payload":
            if bytes(e) != bytes(a):
                out.append(f"  payload: expected {_fmt_value(name, e)}, got {_fmt_value(name, a)}")
        elif e != a:
            out.append(f"  {name}: expected {e!r}, got {a!r}")
    return out


def _render(segs: Iterable[Any]) -> str:
    lines = [f"    {s if isinstance(s, str) else repr(s)}" for s in segs]
    return "\n".join(lines) if lines else "    (nothing)"


class Harness:
    """Drives one engine with crafted segments at explicit virtual times."""

    def __init__(
        self,
        config: ConnectionConfig | None = None,
        *,
        iss: int = 1000,
        bare: bool = False,
        ts_offset: int = 0,
        secret: bytes = SECRET,
        local_port: int = LOCAL_PORT,
        remote_port: int = REMOTE_PORT,
        peer: Hashable = PEER,
        max_half_open: int = 1024,
        start: float = 0.0,
    ) -> None:
        self.config = config if config is not None else test_config()
        self.iss = iss & MASK
        self.peer = peer
        self.local_port = local_port
        self.remote_port = remote_port
        self.now = start
        self.bare = bare
        self.ts_offset = ts_offset
        self.output: deque[tuple[float, Hashable, Segment]] = deque()
        self.events: deque[tuple[float, Event]] = deque()
        self.conn: Connection | None = None
        self.ep: Endpoint | None = None
        self.peer_iss: int | None = None   # the hand-played peer's ISN, once chosen
        if bare:
            self.conn = Connection(self.config, local_port, remote_port, self.iss, start,
                                   peer=peer, ts_offset=ts_offset)
        else:
            self.ep = Endpoint(self.config, secret, max_half_open=max_half_open)
            self.ep.iss_override = self.iss

    # ------------------------------------------------------------ time
    def _goto(self, at: float | None) -> None:
        """Move virtual time to ``at`` firing every timer due on the way."""
        if at is None:
            return
        if at < self.now - EPS:
            raise HarnessError(f"virtual time goes forward only: now={self.now}, asked {at}")
        self.advance(to=at)

    def deadline(self) -> float | None:
        """The engine's next timer deadline (``None`` when no timer is armed)."""
        if self.ep is not None:
            d = self.ep.next_deadline()
            if d == -math.inf:
                raise HarnessError("endpoint has undrained output (next_deadline() is -inf)")
            return d
        assert self.conn is not None
        return self.conn.next_deadline()

    def advance(self, to: float) -> None:
        """Fire each timer due at or before ``to`` at its own deadline, then set now = ``to``."""
        if to < self.now - EPS:
            raise HarnessError(f"virtual time goes forward only: now={self.now}, asked {to}")
        for _ in range(_MAX_TIMER_STEPS):
            d = self.deadline()
            if d is None or d > to + EPS:
                break
            self.now = max(self.now, d)
            self._timer(self.now)
        else:  # pragma: no cover - an engine that re-arms a timer in the past
            raise HarnessError(f"timer storm: more than {_MAX_TIMER_STEPS} expiries before t={to}")
        self.now = max(self.now, to)

    def step(self) -> float:
        """Fire only the next timer (at its deadline) and return that time."""
        d = self.deadline()
        if d is None:
            raise HarnessError("step(): no timer armed")
        self.now = max(self.now, d)
        self._timer(self.now)
        return self.now

    def _timer(self, now: float) -> None:
        if self.ep is not None:
            self.ep.handle_timer(now)
        else:
            assert self.conn is not None
            self.conn.handle_timer(now)
        self._drain()

    def _drain(self) -> None:
        now = self.now
        if self.ep is not None:
            for peer, seg in self.ep.segments_to_send(now):
                self.output.append((now, peer, seg))
            while True:
                ev = self.ep.next_event()
                if ev is None:
                    break
                self.events.append((now, ev))
        else:
            assert self.conn is not None
            for seg in self.conn.segments_to_send(now):
                self.output.append((now, self.peer, seg))
            while self.conn.events:
                self.events.append((now, self.conn.events.popleft()))

    # ----------------------------------------------------------- input
    def connect(self, at: float | None = None, *, local_port: int | None = None,
                remote_port: int | None = None, peer: Hashable = None,
                iss: int | None = None, config: ConnectionConfig | None = None) -> Connection:
        """Active open at ``at``; the connection becomes ``self.conn`` (if it is the first)."""
        self._goto(at)
        if self.bare:
            assert self.conn is not None
            self.conn.connect(self.now)
            conn = self.conn
        else:
            assert self.ep is not None
            if iss is not None:
                self.ep.iss_override = iss & MASK
            conn = self.ep.connect(self.peer if peer is None else peer,
                                   self.local_port if local_port is None else local_port,
                                   self.remote_port if remote_port is None else remote_port,
                                   self.now, config)
            if self.conn is None:
                self.conn = conn
        self._drain()
        return conn

    def listen(self, port: int | None = None) -> None:
        """Passive open: the endpoint accepts SYNs to ``port`` (default: ``local_port``)."""
        if self.ep is None:
            raise HarnessError("listen() needs endpoint mode")
        self.ep.listen(self.local_port if port is None else port)

    def recv(self, seg: Segment, at: float | None = None, *, peer: Hashable = None) -> None:
        """The engine receives ``seg`` (from the hand-played peer) at time ``at``."""
        self._goto(at)
        if self.ep is not None:
            p = self.peer if peer is None else peer
            self.ep.receive(p, seg, self.now)
            if self.conn is None:
                self.conn = self.ep.connections.get((p, seg.dport, seg.sport))
        else:
            assert self.conn is not None
            self.conn.receive(seg, self.now)
        self._drain()

    def call(self, fn: Callable[..., Any], *args: Any, at: float | None = None) -> Any:
        """Run an application call at time ``at`` and collect what it produced."""
        self._goto(at)
        result = fn(*args)
        self._drain()
        return result

    def send(self, data: bytes, at: float | None = None) -> int:
        assert self.conn is not None
        return self.call(self.conn.send, data, at=at)

    def read(self, max_bytes: int = -1, at: float | None = None) -> bytes:
        assert self.conn is not None
        return self.call(self.conn.recv, max_bytes, at=at)

    def shutdown(self, at: float | None = None) -> None:
        assert self.conn is not None
        self.call(self.conn.shutdown, at=at)

    def abort(self, at: float | None = None) -> None:
        assert self.conn is not None
        self.call(self.conn.abort, at=at)

    # ------------------------------------------------------- segments
    def inp(self, seq: int, ack: int = 0, flags: int = ACK, wnd: int = 64000,
            payload: bytes = b"", **opts: Any) -> Segment:
        """A segment from the peer to the engine (ports filled in)."""
        opts.setdefault("sport", self.remote_port)
        opts.setdefault("dport", self.local_port)
        sport, dport = opts.pop("sport"), opts.pop("dport")
        return Segment(sport, dport, _wrap(seq), _wrap(ack), flags, wnd, payload, **opts)

    def out(self, seq: int, ack: int = 0, flags: int = ACK, wnd: int = 64000,
            payload: bytes = b"", **opts: Any) -> Segment:
        """A segment the engine is expected to send to the peer (ports filled in)."""
        opts.setdefault("sport", self.local_port)
        opts.setdefault("dport", self.remote_port)
        sport, dport = opts.pop("sport"), opts.pop("dport")
        return Segment(sport, dport, _wrap(seq), _wrap(ack), flags, wnd, payload, **opts)

    # --------------------------------------------------------- output
    def pop_output(self) -> list[tuple[float, Hashable, Segment]]:
        """Take everything emitted so far as ``(time, peer, segment)``."""
        out = list(self.output)
        self.output.clear()
        return out

    def pop_segments(self) -> list[Segment]:
        return [s for _, _, s in self.pop_output()]

    def expect(self, *expected: Segment, at: float | None = None, peer: Hashable = None) -> list[Segment]:
        """Exactly ``expected`` (in order) was emitted since the last check.

        ``at``: each was emitted at that virtual time; ``peer``: each went to that peer.
        """
        got = self.pop_output()
        segs = [s for _, _, s in got]
        problems = []
        if len(segs) != len(expected):
            problems.append(f"expected {len(expected)} segment(s), got {len(segs)}")
        for i, (e, (t, p, a)) in enumerate(zip(expected, got)):
            d = segment_diff(e, a)
            if d:
                problems.append(f"segment #{i}:\n" + "\n".join(d))
            if at is not None and not math.isclose(t, at, rel_tol=0, abs_tol=1e-9):
                problems.append(f"segment #{i}: emitted at t={t}, expected t={at}")
            if peer is not None and p != peer:
                problems.append(f"segment #{i}: sent to {p!r}, expected {peer!r}")
        if problems:
            raise HarnessError(
                "output mismatch at t=%s:\n%s\n  expected:\n%s\n  got:\n%s" % (
                    self.now, "\n".join(problems), _render(expected),
                    _render(f"t={t:.6f} {p!r} {s!r}" for t, p, s in got)))
        return segs

    def expect_nothing(self, at: float | None = None) -> None:
        """No segment and no event is pending (after moving time to ``at``, if given)."""
        self._goto(at)
        if self.output or self.events:
            raise HarnessError(
                "expected nothing at t=%s, got:\n%s\n  events: %s" % (
                    self.now, _render(f"t={t:.6f} {s!r}" for t, _, s in self.output),
                    [type(e).__name__ for _, e in self.events]))

    def pop_events(self) -> list[Event]:
        out = [e for _, e in self.events]
        self.events.clear()
        return out

    def expect_events(self, *types: type) -> list[Event]:
        """Exactly events of these types (in order) occurred since the last check."""
        got = self.pop_events()
        if [type(e) for e in got] != list(types):
            raise HarnessError(f"events: expected {[t.__name__ for t in types]}, "
                               f"got {[type(e).__name__ for e in got]}")
        return got

    def expect_state(self, state: State, conn: Connection | None = None) -> None:
        c = conn if conn is not None else self.conn
        assert c is not None
        if c.state != state:
            raise HarnessError(f"state: expected {state.name}, got {c.state.name}")

    def done(self) -> None:
        """Assert that no output and no event was left unchecked."""
        self.expect_nothing()

    # ------------------------------------------------------- scenarios
    def establish(self, *, peer_iss: int = 5000, peer_wnd: int = 64000, at: float = 0.0,
                  rtt: float = 0.01, **synack_opts: Any) -> Connection:
        """Active open completed by a hand-made SYN-ACK ``rtt`` later; checks SYN, ACK, Connected.

        ``synack_opts`` are the peer's SYN-ACK options (default: ``mss=1000, sack_perm=True``).
        """
        synack_opts.setdefault("mss", 1000)
        synack_opts.setdefault("sack_perm", True)
        conn = self.connect(at=at)
        syn = self.pop_segments()
        if len(syn) != 1 or syn[0].flags != SYN:
            raise HarnessError(f"establish(): expected one SYN, got {syn}")
        self.peer_iss = peer_iss & MASK
        self.recv(self.inp(peer_iss, self.iss + 1, SYN | ACK, peer_wnd, **synack_opts), at=at + rtt)
        ack = self.pop_segments()
        if len(ack) != 1 or ack[0].flags != ACK:
            raise HarnessError(f"establish(): expected one ACK, got {ack}")
        self.expect_events(Connected)
        return conn

    def accept(self, *, peer_iss: int = 5000, peer_wnd: int = 64000, at: float = 0.0,
               rtt: float = 0.01, **syn_opts: Any) -> Connection:
        """Passive open on ``local_port``: SYN in, SYN-ACK out, ACK in; checks Connected."""
        syn_opts.setdefault("mss", 1000)
        syn_opts.setdefault("sack_perm", True)
        self.listen()
        self.peer_iss = peer_iss & MASK
        self.recv(self.inp(peer_iss, 0, SYN, peer_wnd, **syn_opts), at=at)
        synack = self.pop_segments()
        if len(synack) != 1 or synack[0].flags != SYN | ACK:
            raise HarnessError(f"accept(): expected one SYN-ACK, got {synack}")
        self.recv(self.inp(peer_iss + 1, self.iss + 1, ACK, peer_wnd), at=at + rtt)
        self.expect()
        self.expect_events(Connected)
        assert self.conn is not None
        return self.conn
