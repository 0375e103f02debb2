"""Statistics snapshots of a running tou: one JSON-ready dict per sampling interval.

The engine and the transports keep counters (:meth:`Connection.stats`, the
secure channel's ``counters``, the UDP socket's datagram and byte counts).
:class:`Collector` reads them at each :meth:`Collector.sample` and turns
counter *deltas* into rates; it is the only place that does arithmetic on
them. The dashboard, ``--stats-json`` and the control socket show what it
produces and never recompute protocol state. The schema, versioned by
:data:`SCHEMA_VERSION`, is documented in ``docs/STATS.md``.

The collector reads no clock itself: ``sample(now, wall)`` takes the event
loop's time (the clock the engine's timestamps use, for ages) and the wall
clock (for the ``time`` field).
"""

from __future__ import annotations

import math
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from toucli.tunnel import format_address

SCHEMA_VERSION = 1
HISTORY_SECONDS = 60.0          # how far back RTT/cwnd/rate histories reach
CLOSED_LINGER = 10.0            # a closed connection stays listed this long
IPV4_UDP_HEADERS = 20 + 8       # per datagram on the wire, for the overhead figure
IPV6_UDP_HEADERS = 40 + 8
DEFAULT_MTU = 1500

# Values of a connection's ``limited_by``: what keeps it from sending faster.
LIMIT_APP = "app"               # nothing (more) to send: the application or the peer's reading
LIMIT_RWND = "rwnd"             # the peer's receive window is full
LIMIT_CWND = "cwnd"             # the congestion window is full
LIMIT_PACING = "pacing"         # the pacer holds the next segment back
LIMIT_SNDBUF = "sndbuf"         # all sent, and the application waits for room in the send buffer
LIMITS = (LIMIT_APP, LIMIT_RWND, LIMIT_CWND, LIMIT_PACING, LIMIT_SNDBUF)

_SENDING_STATES = frozenset({"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT_1", "CLOSING", "LAST_ACK"})


# ------------------------------------------------------------------ helpers
def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists, non-finite floats as None and enums as names."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    return str(value)


def peer_address(peer: Any) -> Any:
    """The UDP address behind an engine ``peer``: the address itself, or a session's ``peer_addr``."""
    return getattr(peer, "peer_addr", peer)


def _num(d: dict, key: str, default: float = 0) -> float:
    v = d.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _rate(delta: float, dt: float) -> float:
    """Bits per second for a byte delta over ``dt`` seconds (0 when either is not positive)."""
    return delta * 8.0 / dt if dt > 0 and delta > 0 else 0.0


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole > 0 else None


def limited_by(tcp: dict, sent_delta: int) -> str | None:
    """What limits a connection's sending, from one engine snapshot.

    The engine's own verdict (``limited_by``) wins when it gives one. Otherwise,
    at the moment of the snapshot: a full congestion window (``pipe`` counts what
    RFC 6675 §4 believes is in the network) means congestion; a full peer window
    (``in_flight`` against ``snd_wnd``) the receiver; a pacer that has been
    holding segments back the pacer; anything else means the sender had nothing
    more to send (application-limited, RFC 7661's term).
    """
    verdict = tcp.get("limited_by")
    if isinstance(verdict, str):
        return verdict
    if tcp.get("state") not in _SENDING_STATES:
        return None
    mss = _num(tcp, "mss", 1) or 1
    flight = _num(tcp, "in_flight")
    pipe = _num(tcp, "pipe", flight)
    cwnd = _num(tcp, "cwnd")
    if sent_delta <= 0 and flight == 0:
        return LIMIT_APP
    unsent = tcp.get("unsent_bytes")
    if isinstance(unsent, int) and unsent == 0:
        return LIMIT_APP
    if cwnd and pipe + mss > cwnd:
        return LIMIT_CWND
    snd_wnd = tcp.get("snd_wnd")
    if isinstance(snd_wnd, (int, float)) and flight + mss > snd_wnd:
        return LIMIT_RWND
    if _num(tcp, "pacing_rate") > 0 and tcp.get("_pacing_waited"):
        return LIMIT_PACING
    return LIMIT_APP


# ------------------------------------------------------------------ tracking
@dataclass
class _ConnTrack:
    """What the collector remembers about one connection between samples."""

    id: int
    conn: Any
    tunnel: Any
    first_seen: float
    last: dict = field(default_factory=dict)        # previous engine snapshot
    closed_at: float | None = None
    label: str | None = None
    started: float | None = None                     # the channel's start (loop time)
    start: float = 0.0                               # what ages count from
    history: deque = field(default_factory=deque)   # (t, srtt, cwnd, up_bps, down_bps)
    entry: dict | None = None                        # last published row


@dataclass
class _Totals:
    """Counters summed over every connection ever seen (closed ones included)."""

    payload_out: int = 0       # TCP payload bytes sent, retransmissions included
    payload_in: int = 0
    acked: int = 0
    received: int = 0
    segs_out: int = 0
    retrans_segs: int = 0


class Collector:
    """Samples tunnels (:class:`toucli.tunnel.Tunnel` or anything shaped like one).

    A tunnel is read through ``usock`` (``bytes_in``/``bytes_out``,
    ``datagrams_in``/``datagrams_out``, ``send_drops``, ``family``,
    ``local_address()``), ``transport`` (``name``, ``overhead``, and for the secure
    channel ``ep.counters`` and ``ep.sessions()``), ``ep.connections`` (engine
    connections with ``stats()``, ``peer``, ``local_port``, ``remote_port``,
    ``created``) and ``channels`` (connection -> channel with ``started`` and an
    optional ``label``, e.g. a forwarded target).
    """

    def __init__(self, tunnels: Iterable[Any] = (), *, command: str = "", name: str | None = None,
                 pid: int | None = None, control: str | None = None, started: float = 0.0,
                 started_wall: float = 0.0) -> None:
        self.tunnels: list[Any] = list(tunnels)
        self.command = command
        self.name = name
        self.pid = os.getpid() if pid is None else pid
        self.control = control
        self.started = started
        self.started_wall = started_wall
        self._tracks: dict[int, _ConnTrack] = {}     # id(conn) -> track
        self._next_id = 1
        self._totals = _Totals()
        self._wire: dict[int, tuple[int, int, int, int]] = {}   # id(tunnel) -> (bytes_out, bytes_in, dg_out, dg_in)
        self._wire_total = [0, 0]                    # wire bytes (headers included) out, in
        self._last_t: float | None = None
        self._history: deque = deque()               # (t, up_bps, down_bps, loss_pct)
        self.latest: dict | None = None
        self._local: str | None = None
        self.busy_poll: Any = None                   # the loop's BusyPollSelector (--busy-poll), if any

    def add(self, tunnel: Any) -> None:
        if tunnel not in self.tunnels:
            self.tunnels.append(tunnel)

    # ---- sampling
    def sample(self, now: float, wall: float) -> dict:
        """Read every counter, compute rates since the previous sample; the snapshot (also ``latest``)."""
        dt = now - self._last_t if self._last_t is not None else now - self.started
        self._last_t = now
        seen: set[int] = set()
        for tunnel in self.tunnels:
            channels = getattr(tunnel, "channels", {}) or {}
            ep = getattr(tunnel, "ep", None)
            conns = list(getattr(ep, "connections", {}).values()) if ep is not None else []
            ids = {id(c) for c in conns}
            conns.extend(c for c in channels if id(c) not in ids)
            for conn in conns:
                key = id(conn)
                seen.add(key)
                tr = self._tracks.get(key)
                if tr is None or tr.conn is not conn:
                    tr = _ConnTrack(self._next_id, conn, tunnel, now)
                    self._next_id += 1
                    self._tracks[key] = tr
                ch = channels.get(conn)
                if ch is not None:
                    tr.label = getattr(ch, "label", None) or tr.label
                    tr.started = getattr(ch, "started", None)
                tr.closed_at = None
        interval_deltas = _Totals()
        rows = []
        for key, tr in list(self._tracks.items()):
            gone = key not in seen
            if gone and tr.closed_at is not None:
                if now - tr.closed_at > CLOSED_LINGER:
                    del self._tracks[key]
                    continue
                rows.append(self._stale_row(tr, now))
                continue
            row = self._row(tr, now, dt, interval_deltas)
            if gone:
                tr.closed_at = now
                row["open"] = False
            rows.append(row)
        snap = self._assemble(rows, now, wall, dt, interval_deltas)
        self.latest = snap
        return snap

    def _stale_row(self, tr: _ConnTrack, now: float) -> dict:
        row = dict(tr.entry or {})
        row["age"] = max(0.0, now - tr.start)
        row["up_bps"] = row["down_bps"] = 0.0
        row["interval_bytes_up"] = row["interval_bytes_down"] = row["interval_retransmitted_segments"] = 0
        row["limited_by"] = None
        row["open"] = False
        return row

    def _row(self, tr: _ConnTrack, now: float, dt: float, acc: _Totals) -> dict:
        conn = tr.conn
        try:
            tcp = dict(conn.stats())
        except Exception:        # an engine mid-change must not take the dashboard down
            tcp = dict(tr.last)
        prev = tr.last

        def delta(name: str) -> int:
            d = _num(tcp, name) - _num(prev, name)
            return int(d) if d > 0 else 0

        d_sent, d_retx = delta("bytes_sent"), delta("bytes_retrans")
        d_recv = delta("bytes_received")
        # Payload acknowledged: bytes_acked also counts the FIN's sequence number.
        acked_now = min(_num(tcp, "bytes_acked"), _num(tcp, "bytes_sent"))
        acked_before = min(_num(prev, "bytes_acked"), _num(prev, "bytes_sent"))
        d_acked = int(acked_now - acked_before) if acked_now > acked_before else 0
        d_segs, d_rsegs = delta("segs_out"), delta("retransmitted_segments")
        acc.payload_out += d_sent + d_retx
        acc.payload_in += d_recv
        acc.acked += d_acked
        acc.received += d_recv
        acc.segs_out += d_segs
        acc.retrans_segs += d_rsegs
        if delta("pacing_waits"):
            tcp["_pacing_waited"] = True
        limit = limited_by(tcp, d_sent + d_retx)
        tcp.pop("_pacing_waited", None)
        tr.last = tcp
        up, down = _rate(d_acked, dt), _rate(d_recv, dt)
        srtt = tcp.get("srtt")
        cwnd = tcp.get("cwnd")
        tr.history.append((now, srtt, cwnd, up, down))
        while tr.history and now - tr.history[0][0] > HISTORY_SECONDS:
            tr.history.popleft()
        created = getattr(conn, "created", None)
        start = tr.started if tr.started is not None else created if isinstance(created, (int, float)) else tr.first_seen
        tr.start = start
        sent_total = _num(tcp, "bytes_sent") + _num(tcp, "bytes_retrans")
        rsegs, segs = _num(tcp, "retransmitted_segments"), _num(tcp, "segs_out")
        peer = peer_address(getattr(conn, "peer", None))
        row = {
            "id": tr.id,
            "peer": format_address(peer),
            "local_port": getattr(conn, "local_port", None),
            "remote_port": getattr(conn, "remote_port", None),
            "label": tr.label,
            "state": tcp.get("state"),
            "open": True,
            "age": max(0.0, now - start),
            "srtt": srtt,
            "rttvar": tcp.get("rttvar"),
            "min_rtt": tcp.get("path_rtt"),     # a receiver's own samples count too
            "rto": tcp.get("rto"),
            "cwnd": cwnd,
            "ssthresh": tcp.get("ssthresh"),
            "in_flight": tcp.get("in_flight"),
            "snd_wnd": tcp.get("snd_wnd"),
            "rcv_wnd": tcp.get("rcv_wnd"),
            "mss": tcp.get("mss"),
            "congestion_control": tcp.get("congestion_control"),
            "pacing_rate_bps": _num(tcp, "pacing_rate") * 8.0 if tcp.get("pacing_rate") else None,
            "delivery_rate_bps": _num(tcp, "delivery_rate") * 8.0 if tcp.get("delivery_rate") else None,
            "bytes_sent": tcp.get("bytes_sent"),
            "bytes_acked": tcp.get("bytes_acked"),
            "bytes_received": tcp.get("bytes_received"),
            "bytes_retrans": tcp.get("bytes_retrans"),
            "segs_out": tcp.get("segs_out"),
            "segs_in": tcp.get("segs_in"),
            "retransmitted_segments": tcp.get("retransmitted_segments"),
            "retrans_pct": _pct(rsegs, segs) or 0.0,
            "retrans_bytes_pct": _pct(_num(tcp, "bytes_retrans"), sent_total) or 0.0,
            "rto_count": tcp.get("rto_count"),
            "sack_recoveries": tcp.get("sack_recoveries"),
            "up_bps": up,
            "down_bps": down,
            "limited_by": limit,
            "interval_bytes_up": d_acked,
            "interval_bytes_down": d_recv,
            "interval_retransmitted_segments": d_rsegs,
            "tcp": json_safe(tcp),
        }
        row = json_safe(row)
        tr.entry = row
        return row

    def _assemble(self, rows: list[dict], now: float, wall: float, dt: float, d: _Totals) -> dict:
        t = self._totals
        t.payload_out += d.payload_out
        t.payload_in += d.payload_in
        t.acked += d.acked
        t.received += d.received
        t.segs_out += d.segs_out
        t.retrans_segs += d.retrans_segs

        wire_d_out = wire_d_in = 0
        datagrams = [0, 0]
        bytes_udp = [0, 0]
        send_drops = 0
        drops: dict[str, int] = {}
        secure: dict[str, int] | None = None
        peers: list[dict] = []
        transport_name = None
        overhead = None
        local = self._local
        mtu = DEFAULT_MTU
        ptb = 0
        for tunnel in self.tunnels:
            u = getattr(tunnel, "usock", None)
            tr = getattr(tunnel, "transport", None)
            if tr is not None:
                transport_name = transport_name or getattr(tr, "name", None)
                overhead = overhead if overhead is not None else getattr(tr, "overhead", None)
            mtu = getattr(tunnel, "path_mtu", mtu) or mtu
            ptb += int(getattr(tunnel, "ptb_accepted", 0))
            if u is not None:
                bo, bi = int(getattr(u, "bytes_out", 0)), int(getattr(u, "bytes_in", 0))
                do, di = int(getattr(u, "datagrams_out", 0)), int(getattr(u, "datagrams_in", 0))
                po, pi, pdo, pdi = self._wire.get(id(tunnel), (0, 0, 0, 0))
                hdr = IPV6_UDP_HEADERS if getattr(u, "family", socket.AF_INET) == socket.AF_INET6 \
                    and not _mapped(tunnel) else IPV4_UDP_HEADERS
                wire_d_out += max(0, bo - po) + max(0, do - pdo) * hdr
                wire_d_in += max(0, bi - pi) + max(0, di - pdi) * hdr
                self._wire[id(tunnel)] = (bo, bi, do, di)
                datagrams[0] += do
                datagrams[1] += di
                bytes_udp[0] += bo
                bytes_udp[1] += bi
                send_drops += int(getattr(u, "send_drops", 0))
                if local is None:
                    try:
                        local = self._local = format_address(u.local_address())
                    except (OSError, AttributeError):
                        pass
            ep = getattr(tr, "ep", None)
            counters = getattr(ep, "counters", None)
            if isinstance(counters, dict):
                secure = secure or {}
                for k, v in counters.items():
                    secure[k] = secure.get(k, 0) + v
                    if k.startswith("drop_"):
                        drops[k[5:]] = drops.get(k[5:], 0) + v
                peers.extend(_sessions(ep, now))
            # GUE or TCP headers that do not parse (under DTLS: inside authentic records)
            malformed = int(getattr(tr, "drops", 0) or 0)
            if malformed or counters is None:
                drops["malformed"] = drops.get("malformed", 0) + malformed
        if send_drops:
            drops["send"] = send_drops
        if secure is None:
            peers = _plain_peers(rows)
        self._wire_total[0] += wire_d_out
        self._wire_total[1] += wire_d_in
        wire_total = self._wire_total[0] + self._wire_total[1]
        payload_total = t.payload_out + t.payload_in

        up_bps, down_bps = _rate(d.acked, dt), _rate(d.received, dt)
        loss_now = _pct(d.retrans_segs, d.segs_out)
        self._history.append((now, up_bps, down_bps, loss_now))
        while self._history and now - self._history[0][0] > HISTORY_SECONDS:
            self._history.popleft()

        open_rows = [r for r in rows if r.get("open")]
        rtts = [r["srtt"] for r in open_rows if isinstance(r.get("srtt"), (int, float))]
        min_rtts = [r["min_rtt"] for r in open_rows if isinstance(r.get("min_rtt"), (int, float))]
        mss = next((r["mss"] for r in open_rows if r.get("mss")), None)
        snap = {
            "version": SCHEMA_VERSION,
            "time": wall,
            "uptime": max(0.0, now - self.started),
            "interval": dt,
            "instance": {
                "pid": self.pid,
                "name": self.name,
                "command": self.command,
                "control": self.control,
                "busy_poll": None if self.busy_poll is None or not self.busy_poll.window else {
                    "mode": "adaptive" if self.busy_poll.adaptive else "fixed",
                    "window_us": round(self.busy_poll.window * 1e6),
                    "spin_seconds": self.busy_poll.spun,
                    "caught": self.busy_poll.caught,
                },
                "coalesced": 0 if self.busy_poll is None else self.busy_poll.coalesced,
            },
            "transport": {"name": transport_name, "overhead": overhead, "local": local},
            "peers": peers,
            "path": {
                "rtt": min(rtts) if rtts else None,
                "min_rtt": min(min_rtts) if min_rtts else None,
                "mtu": mtu,
                "ptb": ptb,
                "mss": mss,
                "loss_pct": loss_now,
                "loss_pct_total": _pct(t.retrans_segs, t.segs_out),
                "overhead_pct": _pct(wire_total - payload_total, wire_total) if wire_total > payload_total else
                (0.0 if wire_total else None),
            },
            "totals": {
                "connections": len(open_rows),
                "up_bps": up_bps,
                "down_bps": down_bps,
                "bytes_up": t.acked,
                "bytes_down": t.received,
                "wire_up_bps": _rate(wire_d_out, dt),
                "wire_down_bps": _rate(wire_d_in, dt),
                "wire_bytes_out": self._wire_total[0],
                "wire_bytes_in": self._wire_total[1],
                "udp_bytes_out": bytes_udp[0],
                "udp_bytes_in": bytes_udp[1],
                "datagrams_out": datagrams[0],
                "datagrams_in": datagrams[1],
                "interval_bytes_up": d.acked,
                "interval_bytes_down": d.received,
                "interval_retransmitted_segments": d.retrans_segs,
                "segs_out": t.segs_out,
                "retransmitted_segments": t.retrans_segs,
                "retrans_pct": _pct(t.retrans_segs, t.segs_out) or 0.0,
                "in_flight": sum(r.get("in_flight") or 0 for r in open_rows),
                "cwnd": sum(r.get("cwnd") or 0 for r in open_rows),
            },
            "drops": drops,
            "secure": secure,
            "connections": rows,
        }
        return json_safe(snap)

    # ---- histories
    def history(self) -> dict:
        """The last :data:`HISTORY_SECONDS`: totals and per-connection series, times relative to now."""
        if self._last_t is None:
            return {"totals": {"t": [], "up_bps": [], "down_bps": [], "loss_pct": []}, "connections": {}}
        now = self._last_t
        h = self._history
        conns = {}
        for tr in self._tracks.values():
            conns[str(tr.id)] = {
                "t": [round(p[0] - now, 3) for p in tr.history],
                "srtt": [p[1] for p in tr.history],
                "cwnd": [p[2] for p in tr.history],
                "up_bps": [p[3] for p in tr.history],
                "down_bps": [p[4] for p in tr.history],
            }
        return json_safe({
            "totals": {"t": [round(p[0] - now, 3) for p in h], "up_bps": [p[1] for p in h],
                       "down_bps": [p[2] for p in h], "loss_pct": [p[3] for p in h]},
            "connections": conns,
        })

    def snapshot(self, *, history: bool = False) -> dict | None:
        """The latest snapshot (None before the first sample), with histories on request."""
        if self.latest is None:
            return None
        if not history:
            return self.latest
        snap = dict(self.latest)
        snap["history"] = self.history()
        return snap


def _mapped(tunnel: Any) -> bool:
    """True when an IPv6 socket talks to an IPv4-mapped peer (IPv4 headers on the wire)."""
    u = tunnel.usock
    peer = getattr(u, "connected_to", None)
    if peer is None:
        for conn in getattr(getattr(tunnel, "ep", None), "connections", {}).values():
            peer = peer_address(conn.peer)
            break
    return isinstance(peer, tuple) and str(peer[0]).startswith("::ffff:")


def _sessions(ep: Any, now: float) -> list[dict]:
    out = []
    try:
        sessions = ep.sessions()
    except Exception:
        return out
    for s in sessions:
        ident = getattr(s, "peer_identity", None)
        key = getattr(ident, "key", None)
        fp = None
        if key is not None:
            try:
                fp = key.fingerprint()
            except Exception:
                fp = None
        created = getattr(s, "created", None)
        out.append({
            "address": format_address(getattr(s, "peer_addr", None)),
            "identity": str(ident) if ident is not None else None,
            "fingerprint": fp,
            "key_name": getattr(ident, "name", None),
            "auth": getattr(ident, "mode", None),
            "state": getattr(s, "state", None),
            "session_id": getattr(s, "id", None),
            "age": now - created if isinstance(created, (int, float)) else None,
            "datagrams_in": getattr(s, "datagrams_in", None),
            "datagrams_out": getattr(s, "datagrams_out", None),
            "bytes_in": getattr(s, "bytes_in", None),
            "bytes_out": getattr(s, "bytes_out", None),
            "drops": {"replay": getattr(s, "drop_replay", 0), "auth": getattr(s, "drop_auth", 0)},
            "handshakes": getattr(s, "handshakes", None),
        })
    return out


def _plain_peers(rows: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for r in rows:
        if r.get("open") and r["peer"] not in seen:
            seen[r["peer"]] = {"address": r["peer"], "identity": None, "fingerprint": None, "key_name": None,
                               "auth": None, "state": "cleartext", "session_id": None, "age": r.get("age"),
                               "datagrams_in": None, "datagrams_out": None, "bytes_in": None,
                               "bytes_out": None, "drops": None, "handshakes": None}
    return list(seen.values())


def connection_rows(snap: dict) -> list[dict]:
    """The snapshot's connection rows (an empty list for a malformed snapshot)."""
    rows = snap.get("connections")
    return rows if isinstance(rows, list) else []


__all__ = ["SCHEMA_VERSION", "Collector", "limited_by", "json_safe", "format_address", "LIMITS",
           "LIMIT_APP", "LIMIT_RWND", "LIMIT_CWND", "LIMIT_PACING", "HISTORY_SECONDS", "connection_rows"]
