"""One TCP connection as a sans-I/O state machine (RFC 9293).

The engine is driven from outside: :meth:`Connection.receive` takes a decoded
segment, :meth:`Connection.handle_timer` takes the time, the application calls
:meth:`send`, :meth:`recv`, :meth:`shutdown` and :meth:`abort`. Output comes
from :meth:`segments_to_send` (segments), :meth:`next_deadline` (one time) and
the shared event queue (typed events). Nothing here reads a clock, touches a
socket or draws random numbers.

Sequence numbers are converted once, at the edge, from 32-bit wire values to
*unwrapped offsets* relative to the initial sequence numbers (ISS for what we
send, IRS for what we receive): the SYN is offset 0, data byte ``k`` is offset
``k + 1``, a FIN follows the last byte. The conversion uses the modulo-2**32
helpers of :mod:`toucli.stack.seq`; everything inside compares plain integers.
"""

from __future__ import annotations

import enum
from bisect import bisect_right, insort
from collections import deque
from typing import Final, Callable, Hashable

from . import cc as _cc
from .cc.hystart import HyStart
from .config import ConnectionConfig
from .errors import LocalError
from .events import Closed, Connected, Error, Event, PeerClosed, Readable, Reset, Writable
from .pacer import Pacer
from .prr import Prr
from .rack import Rack, probe_timeout
from .rangeset import RangeSet
from .rate import RateSample
from .rtt import RttEstimator
from .scoreboard import APP_LIMITED, RETRANSMITTED, Ranges, SentLog
from .segment import ACK, FIN, PSH, RST, SYN, Buffer, Segment
from .seq import HALF, MASK, seq_lt, seq_sub
from .streambuf import StreamBuffer
from .tcp import HEADER_LEN as TCP_HEADER_LEN, header_length


DUP_THRESH: Final = 3                  # RFC 6675 §2 / RFC 5681 §3.2
SACK_COMPRESS_MAX: Final = 44          # out-of-order segments one compressed ACK may answer (Linux tcp_comp_sack_nr)
SACK_COMPRESS_DELAY: Final = 0.001     # ... and how long it may wait at most: min(this, RTT / 20) (tcp_comp_sack_delay_ns)
QUICKACK_SEGMENTS: Final = 16          # ACK every segment at the start (receiver's slow-start helper)
TS_VALID_FOR: Final = 24 * 86400.0     # RFC 7323 §5.5: TS.Recent goes stale after 24 days idle
MAX_WSCALE: Final = 14                 # RFC 7323 §2.3
TCP_DEFAULT_MSS: Final = 536           # RFC 9293 §3.7.1: assumed when the peer sends no MSS option


class State(enum.IntEnum):
    """Connection states, RFC 9293 §3.3.2."""

    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


_ESTABLISHED: Final = State.ESTABLISHED
_PREDICTABLE: Final = SYN | FIN | RST | 0x20 | ACK   # URG is 0x20; header prediction wants only ACK of these
_SYNCHRONIZED: Final = frozenset(
    {State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT,
     State.CLOSING, State.LAST_ACK, State.TIME_WAIT}
)
_RECEIVES_DATA: Final = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
_CAN_SEND: Final = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})
_FIN_SENT: Final = frozenset({State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSING, State.LAST_ACK, State.TIME_WAIT})


def _wscale_for(buffer: int) -> int:
    """Smallest shift that lets a 16-bit field describe ``buffer`` bytes (RFC 7323 §2.3)."""
    shift = 0
    while shift < MAX_WSCALE and (0xFFFF << shift) < buffer:
        shift += 1
    return shift



def tfo_syn_room(cfg: ConnectionConfig, cookie: bytes, server_mss: int) -> int:
    """Data bytes a Fast Open SYN with ``cookie`` carries (RFC 7413 §4.1.2): one segment of
    the size sent first (``send_mss``) and no more than the server's MSS, less the SYN's
    options (MSS, SACK-permitted, window scale, timestamps, the cookie), since payload plus
    options stay within the MSS (RFC 9293 §3.7.1)."""
    syn = Segment(1, 1, 0, 0, SYN, 0, mss=cfg.mss, sack_perm=cfg.sack,
                  wscale=0 if cfg.window_scaling else None, tsval=0 if cfg.timestamps else None,
                  tfo_cookie=cookie)
    return max(0, min(cfg.send_mss or cfg.mss, server_mss) - (header_length(syn) - TCP_HEADER_LEN))

class Connection:
    """A TCP connection (RFC 9293) with SACK (RFC 2018/6675), RFC 7323 and pluggable CC."""

    def __init__(
        self,
        config: ConnectionConfig,
        local_port: int,
        remote_port: int,
        iss: int,
        now: float,
        *,
        peer: Hashable = None,
        ts_offset: int = 0,
        events: deque[Event] | None = None,
    ) -> None:
        self.config = cfg = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.peer = peer
        self.state = State.CLOSED
        self.passive = False
        self.events: deque[Event] = events if events is not None else deque()
        self.created = now
        self._ts_offset = ts_offset & MASK
        if not 88 <= cfg.mss <= 65495:
            raise LocalError(f"mss must be within 88..65495, got {cfg.mss}")
        if cfg.send_mss is not None and not 88 <= cfg.send_mss <= cfg.mss:
            raise LocalError(f"send_mss must be within 88..mss ({cfg.mss}), got {cfg.send_mss}")

        # --- send side (offsets relative to ISS) ---
        self.iss = iss & MASK
        self.snd_una = 0            # oldest unacknowledged offset
        self.snd_max = 0            # next new offset to send (highest sent + 1)
        self.snd_wnd_edge = 0       # right edge of the peer's window (offset)
        self.snd_wl1 = -1           # receive offset of the segment that last updated the window
        self.snd_wl2 = -1           # send offset acknowledged by it
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.snd_buf = StreamBuffer()   # unacknowledged + unsent data
        self.snd_buf_start = 1      # offset of snd_buf[0]
        self.fin_off: int | None = None   # offset of our FIN once shutdown() was called
        self._writer_blocked = False

        # --- receive side (offsets relative to IRS) ---
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0            # right edge we advertised; never moves left (RFC 9293 §3.8.6.2.2)
        self.rcv_wscale = _wscale_for(cfg.recv_buffer) if cfg.window_scaling else 0
        self.rcv_buf = StreamBuffer()   # in-order data the application has not read
        self.rcv_space = min(cfg.initial_recv_window, cfg.recv_buffer)  # auto-tuned window target
        self._ooo_starts: list[int] = []   # out-of-order segments, sorted, non-overlapping
        # Pieces kept out of order: the window bounds their bytes, this their count (tiny
        # segments); by default room for a full window of 512-byte pieces.
        self._ooo_cap = cfg.ooo_segments or max(4096, cfg.recv_buffer // 512)
        self._ooo_data: dict[int, bytes] = {}
        self.ooo = RangeSet()
        self._sack_recent: list[tuple[int, int]] = []  # most recent first (RFC 2018 §4)
        self._dsack: tuple[int, int] | None = None     # RFC 2883 block to report next
        self._sack_owed = False                        # blocks left off a data segment: send a pure ACK
        self.fin_rcvd_off: int | None = None
        self._rcv_unacked = 0
        self._quickack = QUICKACK_SEGMENTS
        self._tune_start = now
        self._tune_copied = 0
        # What the application read in the last measured RTT; it starts from one initial
        # window, so the offered window grows from the sender's first round trips on
        # (Linux's rcvq_space, TCP_INIT_CWND segments).
        self._tune_space = cfg.initial_window_segments * cfg.mss

        # --- options ---
        self.mss_peer = TCP_DEFAULT_MSS
        self.eff_mss = min(cfg.mss, TCP_DEFAULT_MSS)
        self.sack_ok = False
        self.ts_ok = False
        self.ws_ok = False
        self.ts_recent = 0
        self.ts_recent_time: float | None = None
        self.last_ack_sent = 0

        # --- timers and recovery ---
        self.rtt = RttEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max, min_var=cfg.rto_min_var)
        self.cc = _cc.create(cfg.congestion_control, self.eff_mss, now,
                             cfg.initial_window_segments * self.eff_mss)
        if cfg.hystart and getattr(self.cc, "supports_hystart", False):
            self.cc.hystart = HyStart()
        seed = getattr(self.cc, "seed", None)
        if callable(seed):
            seed(self.iss)   # a controller that randomizes (BBR's gain cycle) draws from the ISN
        self._rate_cc = bool(getattr(self.cc, "wants_rate_samples", False))
        self._pacing = cfg.pacing or bool(getattr(self.cc, "requires_pacing", False))
        self.sacked = RangeSet()
        self.lost = Ranges()        # octets marked lost and not retransmitted since (RFC 6675 / RFC 8985)
        self.sent = SentLog()       # one record per transmission: send time, retransmitted (RFC 8985 §5.2)
        self._rtx_in_log = 0        # records in ``sent`` flagged RETRANSMITTED
        # RACK's walk in send order (RFC 8985 §6.2 step 5), kept linear in what changes:
        # originals are sent in stream order, so below ``_rack_cursor`` none is still
        # pending (each is acknowledged, SACKed, lost or resent); resends are queued by
        # send time in ``_rtxq_ts`` / ``_rtxq_start`` from ``_rtxq_head`` on.
        self._rack_cursor = 0
        self._rtxq_ts: list[float] = []
        self._rtxq_start: list[int] = []
        self._rtxq_head = 0
        self.rack = Rack()
        self.rack_deadline: float | None = None   # RACK reordering timer (RFC 8985 §6.2 step 5)
        self.tlp_deadline: float | None = None    # probe timeout (RFC 8985 §7.2)
        self._tlp_end: int | None = None          # TLP.end_seq
        self._tlp_is_retrans = False
        self._tlp_flight = 0                       # FlightSize when the probe went out
        self._tlp_pending = False                  # a probe is due at the next output
        self.prr = Prr()
        self._recovery_cwnd = 0     # PRR's window (pipe + sndcnt) while prr.active
        self.pacer = Pacer()
        self.pace_deadline: float | None = None
        self._undo_marker: int | None = None   # SND.UNA when the last reduction happened
        self._undo_retrans = 0      # retransmissions of that episode not D-SACKed yet (RFC 3708)
        self._undo_rtx_total = 0
        self._retrans_stamp: float | None = None   # first retransmission of the episode (Eifel, RFC 3522)
        self._eifel_checked = False
        self.delivered = 0          # bytes delivered (acked or SACKed) so far: C.delivered
        self.delivered_ts = now     # C.delivered_time (draft-cheng-iccrg-delivery-rate-estimation)
        self.first_sent_ts = now    # C.first_sent_time
        self._app_limited_until = 0  # C.app_limited: delivered count that ends app-limited sampling
        self._app_backlog = False    # the last send() did not fit: the send buffer, not the app, limits
        self.rs = RateSample()      # the rate sample of the ACK being processed
        self.delivery_rate = 0.0    # bytes/s of the last valid rate sample
        self._lost_marked = 0       # bytes ever marked lost (RateSample.losses per ACK)
        self.in_recovery = False
        self.rto_recovery = False
        self.recovery_point = 0
        self.lost_point = 0
        self.dupacks = 0
        self._timed: tuple[int, float] | None = None   # (end offset, send time) of the segment being timed
        self._last_progress = now
        self.rto_deadline: float | None = None
        self.delack_deadline: float | None = None
        self.persist_deadline: float | None = None
        self._persist_backoff = 0
        self.keepalive_deadline: float | None = None
        self._keepalive_sent = 0
        self.timewait_deadline: float | None = None
        self._syn_tries = 0
        self._syn_time = now                    # when our SYN (or SYN-ACK) first left
        self._syn_departures = 0                # how often it left (one: the handshake is timed)
        self.rcv_min_rtt: float | None = None   # least RTT seen from the receiving side (_rcv_rtt)
        self._syn_held = False                  # client: the path is not open yet (see release)
        self._last_recv = now

        # --- TCP Fast Open (RFC 7413) ---
        self.tfo_cache: dict | None = None      # the endpoint's cookie cache (client side)
        self._tfo_cookie: bytes | None = None   # client: cookie for our SYN (b"" = request)
        self._tfo_mss = TCP_DEFAULT_MSS         # client: the server's MSS remembered with the cookie
        self._syn_pending = False               # client: SYN built at output (to carry data)
        self._tfo_sent_end = 1                  # client: end offset of the data our SYN carried
        self._tfo_synack_cookie: bytes | None = None   # server: cookie to hand out in the SYN-ACK
        self.tfo_accepted = False               # server: the SYN's data was accepted
        self.tfo_syn_data = 0                   # bytes of data our SYN carried
        self.tfo_syn_data_acked = False         # client: the SYN-ACK acknowledged them

        # --- output ---
        self._ctl: list[Segment] = []   # RSTs, challenge ACKs, probes built during input
        self._ack_now = False
        self._dupacks_for = -1          # RCV.NXT the immediate out-of-order ACKs were counted for
        self._dupacks_sent = 0          # ... and how many went out
        self._sack_held = 0             # out-of-order segments since the last ACK, not answered yet
        self._challenge_times: deque[float] = deque()
        self._rxt_now = False   # the next retransmission ignores cwnd
        self._max_flight = 0        # largest flight this round trip (cwnd validation)
        self._prev_max_flight = 0   # and in the previous one
        self._flight_mark = 0       # snd_max when this round trip began
        self.wake: Callable[[Connection], None] | None = None   # set by the endpoint: called when an API call creates output
        self.counted_open = False   # the endpoint no longer counts it as half-open
        self.tfo_counted = False    # the endpoint counts it among pending Fast Open SYNs

        # --- statistics ---
        self.bytes_sent = 0
        self.bytes_retrans = 0
        self.segs_out = 0
        self.segs_in = 0
        self.segs_retrans = 0
        self.bytes_acked = 0
        self.bytes_received = 0
        self.dup_segs_in = 0
        self.ooo_segs_in = 0
        self.rto_count = 0
        self.recoveries = 0
        self.challenge_acks = 0
        self.paws_drops = 0
        self.tlp_probes = 0
        self.tlp_recoveries = 0
        self.rack_losses = 0         # segments RACK marked lost
        self.dsacks_in = 0
        self.spurious_undos = 0
        self.pacing_waits = 0
        self.limited_by = "app"      # what stopped the last send decision: app, rwnd, cwnd or pacing
        # --- path-MTU probes (RFC 8899 §4.1 over TCP: answered by a D-SACK) ---
        self._mtu_probe: tuple[int, int] | None = None   # wire (left, right) of the probe in flight
        self.mtu_probe_answered = False   # set when its D-SACK came; the runtime clears it
        self.mtu_probes_sent = 0

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        return f"<Connection {self.peer!r} {self.local_port}->{self.remote_port} {self.state.name}>"

    def _emit(self, ev: Event) -> None:
        self.events.append(ev)

    def _reordered_by_path(self, tsval: int) -> bool:
        """A segment that fails PAWS only because the path reordered it: its TSval is
        behind TS.Recent by less than the replay window, 1.2 RTO (Linux's
        ``tcp_tsval_replay``) and at most 1 s.

        PAWS (RFC 7323 §5) guards against old duplicates from a wrapped sequence space:
        at 10 Gbit/s the space wraps in 3.4 s, far beyond the window. R1 taken strictly
        throws away what jitter reorders: a retransmission that fills a hole moves
        TS.Recent on (§4.3), and the originals sent just before it, still in flight
        behind it, arrive with older TSvals; so do ACKs from a receiver whose 1 ms clock
        ticked between them, each with SACK blocks the sender needs. Such a segment
        still passes the window checks like any other, and does not move TS.Recent back.
        Linux allows one tick for data and takes only duplicate ACKs this way
        (``tcp_disordered_ack``); at 4 ms of jitter that dropped half the ACKs.
        """
        window = self.rtt.rto * 1200.0
        return ((self.ts_recent - tsval) & MASK) <= (int(window) if window < 1000.0 else 1000)

    def _tsval(self, now: float) -> int:
        return (int(now * 1000.0) + self._ts_offset) & MASK

    def _ts_to_time(self, ts: int) -> float:
        """The local time (ms resolution) at which we sent TSval ``ts`` (RFC 7323 §4.1)."""
        return ((ts - self._ts_offset) & MASK) / 1000.0

    @property
    def _rack_on(self) -> bool:
        """RACK detects losses (RFC 8985 needs SACK); else DupThresh and NewReno do."""
        return self.sack_ok and self.config.rack

    @property
    def flight(self) -> int:
        return self.snd_max - self.snd_una

    @property
    def send_space(self) -> int:
        """Bytes ``send`` would accept now."""
        return max(0, self.config.send_buffer - len(self.snd_buf))

    def _recv_window(self) -> int:
        """Window we can offer now (bytes from RCV.NXT); ``rcv_space`` never exceeds the buffer cap."""
        w = self.rcv_space - len(self.rcv_buf)
        return w if w > 0 else 0

    def _wnd_field(self) -> int:
        """The 16-bit window to advertise; moves ``rcv_adv`` right, never left."""
        shift = self.rcv_wscale
        new = (self.rcv_space - len(self.rcv_buf)) >> shift
        rcv_nxt = self.rcv_nxt
        old = self.rcv_adv - rcv_nxt
        if old > 0:
            old_field = (old + (1 << shift) - 1) >> shift
            if old_field > new:
                new = old_field
        elif new < 0:
            new = 0
        if new > 0xFFFF:
            new = 0xFFFF
        edge = rcv_nxt + (new << shift)
        if edge > self.rcv_adv:
            self.rcv_adv = edge
        return new

    def _segment(self, flags: int, seq_off: int, payload: Buffer = b"", now: float = 0.0) -> Segment:
        """Build an outgoing segment carrying our current ACK, window and options."""
        if flags & SYN:
            return self._syn_segment(flags, now)
        rcv_nxt = self.rcv_nxt
        seg = Segment(self.local_port, self.remote_port, (self.iss + seq_off) & MASK,
                      (self.irs + rcv_nxt) & MASK, flags, self._wnd_field(), payload)
        if flags & ACK:
            self.last_ack_sent = rcv_nxt
            self._ack_now = False
            self.delack_deadline = None
            self._rcv_unacked = 0
            self._sack_held = 0
            if self.sack_ok and (self._dsack is not None or self._sack_recent):
                # RFC 9293 §3.7.1: payload and options stay within the MSS; blocks that do
                # not fit beside the payload follow on a pure ACK (segments_to_send).
                seg.sack = self._sack_blocks((self.eff_mss - len(payload) - 4) >> 3 if payload else 4)
            else:
                self._sack_owed = False
        else:
            seg.ack = 0
        if self.ts_ok:
            seg.tsval = (int(now * 1000.0) + self._ts_offset) & MASK
            seg.tsecr = self.ts_recent
        return seg

    def _syn_segment(self, flags: int, now: float) -> Segment:
        """SYN or SYN-ACK with our options (RFC 9293 §3.7.1, RFC 7323 §2-3, RFC 2018 §2)."""
        cfg = self.config
        synack = bool(flags & ACK)
        wnd = min(self._recv_window(), 0xFFFF)   # never scaled in a SYN (RFC 7323 §2.2)
        self.rcv_adv = max(self.rcv_adv, self.rcv_nxt + wnd)
        seg = Segment(self.local_port, self.remote_port, self.iss, 0, flags, wnd, mss=cfg.mss)
        if synack:
            seg.ack = (self.irs + self.rcv_nxt) & MASK
            self.last_ack_sent = self.rcv_nxt
        if cfg.sack and (not synack or self.sack_ok):
            seg.sack_perm = True
        if cfg.window_scaling and (not synack or self.ws_ok):
            seg.wscale = self.rcv_wscale
        if cfg.timestamps and (not synack or self.ts_ok):
            seg.tsval = self._tsval(now)
            seg.tsecr = self.ts_recent if synack else 0
        if synack:
            if self._tfo_synack_cookie is not None:
                seg.tfo_cookie = self._tfo_synack_cookie   # RFC 7413 §4.2.2
        elif self._tfo_cookie is not None:
            seg.tfo_cookie = self._tfo_cookie             # RFC 7413 §4.1.2
        return seg

    def _sack_blocks(self, room: int) -> tuple[tuple[int, int], ...]:
        """SACK blocks, D-SACK first, then the most recent (RFC 2018 §4, RFC 2883 §4).

        At most ``room`` blocks (what the segment has space for); when some are left
        off, ``_sack_owed`` asks for a pure ACK to carry them all.
        """
        full = 3 if self.ts_ok else 4
        limit = room if room < full else full
        irs = self.irs
        out = []
        if self._dsack is not None and limit > 0:
            a, b = self._dsack
            out.append(((irs + a) & MASK, (irs + b) & MASK))
            self._dsack = None
        for a, b in self._sack_recent:
            if len(out) >= limit:
                break
            out.append(((irs + a) & MASK, (irs + b) & MASK))
        self._sack_owed = self._dsack is not None or len(out) < min(full, len(self._sack_recent))
        return tuple(out)

    def _queue_ack(self) -> None:
        self._ack_now = True

    # ---------------------------------------------------------------- open/close
    def connect(self, now: float, tfo: tuple[bytes, int] | None = None, *, hold: bool = False) -> None:
        """Active open (RFC 9293 §3.10.1): send SYN.

        With ``hold`` the path to the peer is not open yet (the caller's secure
        session is still in its handshake): the SYN waits for :meth:`release`, so its
        round-trip sample and retransmission timer do not include that wait.

        With ``config.fast_open`` (RFC 7413 §4.1): ``tfo`` is the cached (cookie,
        server MSS) for this peer. With a cookie, the SYN is built when output is
        collected, so data given to :meth:`send` before then rides in it (up to one
        MSS); without one, the SYN carries an empty Fast Open option (a cookie request).
        """
        if self.state != State.CLOSED:
            raise LocalError(f"connect() in state {self.state.name}")
        self.state = State.SYN_SENT
        self.snd_una = 0
        self.snd_max = 1
        self._syn_tries = 1
        if self.config.fast_open:
            if tfo is not None and tfo[0]:
                self._tfo_cookie, self._tfo_mss = tfo
                self._syn_pending = True
            else:
                self._tfo_cookie = b""
        if hold:
            self._syn_held = True
            return
        self._send_syn(now)

    def _send_syn(self, now: float) -> None:
        if not self._syn_pending:
            self._ctl.append(self._segment(SYN, 0, now=now))
        self._arm_rto(now)

    def release(self, now: float) -> None:
        """The path is open: a SYN held by ``connect(hold=True)`` leaves now, timed from now."""
        if not self._syn_held:
            return
        self._syn_held = False
        if self.state == State.SYN_SENT:
            self._send_syn(now)
            if self.wake is not None:
                self.wake(self)

    def _tfo_syn(self, now: float) -> Segment:
        """RFC 7413 §4.1.2: the SYN with our cookie and as much queued data as one MSS holds."""
        seg = self._syn_segment(SYN, now)
        room = tfo_syn_room(self.config, self._tfo_cookie or b"", self._tfo_mss)
        n = min(len(self.snd_buf), max(room, 0))
        if n:
            seg.payload = self.snd_buf.peek(0, n)
            self.snd_max = self._tfo_sent_end = 1 + n
            self.tfo_syn_data = n
            self.bytes_sent += n
        return seg

    def accept_syn(self, seg: Segment, now: float, *, tfo_data: bool = False,
                   tfo_cookie: bytes | None = None) -> None:
        """Passive open from LISTEN (RFC 9293 §3.10.7.2): take the SYN, answer SYN-ACK.

        RFC 7413 §4.2.2: with ``tfo_data`` (the endpoint checked the cookie) the SYN's
        data is accepted now: Connected and Readable are emitted at once and the
        SYN-ACK acknowledges the data. ``tfo_cookie`` is a cookie to hand out in the
        SYN-ACK (the SYN asked for one, or presented an invalid one).
        """
        self.passive = True
        self._take_syn(seg, now)
        self.state = State.SYN_RECEIVED
        self.snd_una = 0
        self.snd_max = 1
        self._syn_tries = 1
        self._tfo_synack_cookie = tfo_cookie
        if tfo_data and seg.payload:
            data = seg.payload[: max(0, self._recv_window())]
            self.tfo_accepted = True
            self.tfo_syn_data = len(data)
            self.rcv_buf.append(data)
            self.rcv_nxt = 1 + len(data)
            self.bytes_received += len(data)
            self._emit(Connected(self))
            if data:
                self._emit(Readable(self))
        self._ctl.append(self._segment(SYN | ACK, 0, now=now))
        self._arm_rto(now)

    def _take_syn(self, seg: Segment, now: float) -> None:
        """Record the peer's ISN and options (RFC 9293 §3.7.1, RFC 7323, RFC 2018)."""
        cfg = self.config
        self.irs = seg.seq
        self.rcv_nxt = 1
        self.rcv_adv = 1
        self.mss_peer = seg.mss if seg.mss else TCP_DEFAULT_MSS
        self.sack_ok = cfg.sack and seg.sack_perm
        self.ws_ok = cfg.window_scaling and seg.wscale is not None
        if self.ws_ok and seg.wscale is not None:
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
        else:
            self.rcv_wscale = 0
        self.ts_ok = cfg.timestamps and seg.tsval is not None
        if self.ts_ok and seg.tsval is not None:
            self.ts_recent = seg.tsval
            self.ts_recent_time = now
        mss = min(cfg.send_mss or cfg.mss, self.mss_peer) - (12 if self.ts_ok else 0)
        self.eff_mss = max(mss, 64)
        self.cc.set_mss(self.eff_mss)
        self.cc.set_initial_window(cfg.initial_window_segments * self.eff_mss)

    def set_mss(self, mss: int, now: float | None = None) -> int:
        """Change the payload size mid-connection (path MTU discovery, RFC 8899 §5.3).

        ``mss`` counts payload plus options as the configured MSS does; it is capped
        by what both ends announced. Returns the new effective payload size.

        A smaller size in the middle of a retransmission timeout's recovery (the path
        became a black hole for the old size, RFC 8899 §4.3) sends everything not yet
        acknowledged again at once, in pieces of the new size, instead of after the
        backed-off timer: what was sent at the old size cannot arrive (as Linux does
        when the path MTU drops).
        """
        cap = min(self.config.mss, self.mss_peer)
        if mss > cap:
            mss = cap
        eff = max(mss - (12 if self.ts_ok else 0), 64)
        shrank = eff < self.eff_mss
        self.eff_mss = eff
        self.cc.set_mss(eff)
        if shrank and now is not None and self.rto_recovery and self.snd_max > self.snd_una:
            self._mark_lost(self.snd_una, self.snd_max)
            self.lost_point = self.snd_max
            self._rxt_now = True
            self.rto_deadline = now + self.rtt.rto
            if self.wake is not None:
                self.wake(self)
        return eff

    def mtu_probe(self, payload_len: int, now: float) -> Segment | None:
        """A path-MTU probe: ``payload_len`` octets of already-acknowledged sequence space.

        The probe carries sequence numbers ``[SND.UNA - payload_len, SND.UNA)`` (zeros
        as data), so the peer finds it wholly duplicate, discards it, and answers at
        once with an ACK whose D-SACK block (RFC 2883 §4) names exactly that range: the
        acknowledgment of the probe RFC 8899 §4.1 needs, with no change to the byte
        stream. That D-SACK sets :attr:`mtu_probe_answered` and is not taken as a
        sign of reordering or spurious retransmission. The header is 20 octets plus
        12 of timestamps when negotiated, never SACK blocks. None when the connection
        is not synchronized or has no SACK (the peer would not answer).
        """
        if self.state not in _SYNCHRONIZED or self.state == State.TIME_WAIT:
            return None
        if not self.sack_ok or payload_len < 1:
            return None
        right = (self.iss + self.snd_una) & MASK
        left = (right - payload_len) & MASK
        seg = Segment(self.local_port, self.remote_port, left, (self.irs + self.rcv_nxt) & MASK,
                      ACK, self._wnd_field(), bytes(payload_len))
        if self.ts_ok:
            seg.tsval = (int(now * 1000.0) + self._ts_offset) & MASK
            seg.tsecr = self.ts_recent
        self._mtu_probe = (left, right)
        self.mtu_probe_answered = False
        self.mtu_probes_sent += 1
        return seg

    def shutdown(self) -> None:
        """Half-close: a FIN follows the data already queued (RFC 9293 §3.10.4)."""
        if self.fin_off is not None:
            return
        if self.state in (State.CLOSED, State.LISTEN):
            raise LocalError(f"shutdown() in state {self.state.name}")
        self.fin_off = self.snd_buf_start + len(self.snd_buf)
        if self.wake is not None:
            self.wake(self)

    def close(self) -> None:
        """The same as :meth:`shutdown` (the socket API's name)."""
        self.shutdown()

    def abort(self) -> None:
        """Reset the connection and forget it (RFC 9293 §3.10.5)."""
        if self.state == State.CLOSED:
            return
        if self.state in _SYNCHRONIZED or self.state == State.SYN_RECEIVED:
            self._ctl.append(Segment(self.local_port, self.remote_port,
                                     (self.iss + self.snd_max) & MASK, 0, RST))
        self._enter_closed()
        if self.wake is not None:
            self.wake(self)

    def take_control(self) -> list[Segment]:
        """The control segments queued and not yet sent (a closed connection's RST):
        what :meth:`segments_to_send` would return once nothing else can be sent."""
        out, self._ctl = self._ctl, []
        self.segs_out += len(out)
        return out

    def _enter_closed(self) -> None:
        if self.state == State.CLOSED:
            return
        self.state = State.CLOSED
        self.rto_deadline = self.delack_deadline = self.persist_deadline = None
        self.keepalive_deadline = self.timewait_deadline = None
        self.snd_buf.clear()
        self._ooo_starts.clear()
        self._ooo_data.clear()
        self._emit(Closed(self))

    def _fail(self, reason: str) -> None:
        """Local failure (user timeout, keepalive): tell the app, reset the peer."""
        self._emit(Error(self, reason))
        self.abort()

    # ------------------------------------------------------------- application
    def send(self, data: Buffer) -> int:
        """Queue data; returns how many bytes fit in the send buffer."""
        if self.state not in _CAN_SEND and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            raise LocalError(f"send() in state {self.state.name}")
        if self.fin_off is not None:
            raise LocalError("send() after shutdown()")
        room = self.config.send_buffer - len(self.snd_buf)
        n = len(data)
        self._app_backlog = n > room
        if n > room:
            n = max(room, 0)
            self._writer_blocked = True
        if n:
            self.snd_buf.append(data[:n] if n < len(data) else data)
            if self.wake is not None:
                self.wake(self)
        return n

    def recv(self, max_bytes: int = -1) -> bytes:
        """Read in-order data; ``b""`` when none is buffered."""
        if not self.rcv_buf:
            return b""
        data = self.rcv_buf.take(max_bytes)
        self._read(len(data))
        return data

    def recv_chunks(self, max_bytes: int) -> list[Buffer]:
        """Read up to ``max_bytes`` of in-order data as buffers, uncopied (for ``writev``)."""
        if not self.rcv_buf:
            return []
        chunks = self.rcv_buf.take_chunks(max_bytes)
        self._read(sum(map(len, chunks)))
        return chunks

    def _read(self, n: int) -> None:
        """The application took ``n`` bytes: auto-tuning counts them; the window may reopen."""
        self._tune_copied += n
        if self.state in _RECEIVES_DATA:
            # Window update when the offered window grew by at least one MSS after
            # having shrunk below half of the target (receiver SWS avoidance, RFC 9293 §3.8.6.2.2).
            wnd_adv = self.rcv_adv - self.rcv_nxt
            if wnd_adv < (self.rcv_space >> 1) and self._recv_window() - wnd_adv >= self.eff_mss:
                self._ack_now = True
                if self.wake is not None:
                    self.wake(self)

    @property
    def readable(self) -> int:
        return len(self.rcv_buf)

    # ------------------------------------------------------------------- input
    def receive(self, seg: Segment, now: float) -> None:
        """Process one incoming segment (RFC 9293 §3.10.7)."""
        self.segs_in += 1
        if (self.state is _ESTABLISHED and seg.flags & _PREDICTABLE == ACK and seg.sack is None
                and not self.in_recovery and seg.seq == (self.irs + self.rcv_nxt) & MASK
                and self._predicted(seg, now)):
            return
        st = self.state
        if st == State.CLOSED:
            return
        if st == State.SYN_SENT:
            self._receive_syn_sent(seg, now)
            return
        flags = seg.flags
        self._last_recv = now
        self._keepalive_sent = 0
        rcv_nxt = self.rcv_nxt
        seq = rcv_nxt + seq_sub(seg.seq, (self.irs + rcv_nxt) & MASK)
        payload = seg.payload
        plen = len(payload)

        if flags & SYN:
            if st == State.SYN_RECEIVED and not flags & ACK and seg.seq == self.irs:
                # The peer retransmitted its SYN: our SYN-ACK was lost.
                self._ctl.append(self._segment(SYN | ACK, 0, now=now))
                return
            if st == State.TIME_WAIT:
                self._challenge_ack(now)
                return
            # RFC 5961 §4: any SYN in a synchronized state gets a challenge ACK.
            if not flags & RST:
                self._challenge_ack(now)
                return

        # RFC 7323 §5.3 R1: PAWS.
        disordered = False
        if self.ts_ok and seg.tsval is not None and not flags & RST and self.ts_recent_time is not None:
            if seq_lt(seg.tsval, self.ts_recent) and now - self.ts_recent_time < TS_VALID_FOR:
                if flags & SYN or not self._reordered_by_path(seg.tsval):
                    self.paws_drops += 1
                    self._queue_ack()
                    return
                disordered = True

        # First check: is the segment acceptable? (RFC 9293 §3.10.7.4)
        seg_len = plen + (1 if flags & FIN else 0)
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if seg_len == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq <= rcv_nxt + wnd
        elif wnd == 0:
            ok = seq == rcv_nxt   # take its ACK and FIN; data beyond the window is trimmed
        else:
            end = seq + seg_len
            ok = (rcv_nxt <= seq < rcv_nxt + wnd) or (rcv_nxt < end <= rcv_nxt + wnd) or (seq < rcv_nxt < end)
        if not ok:
            if not flags & RST:
                if seg_len and seq + seg_len <= rcv_nxt:
                    self.dup_segs_in += 1
                    if plen:
                        self._note_dsack(seq, min(seq + plen, rcv_nxt), now)
                if st == State.TIME_WAIT and flags & FIN:
                    self.timewait_deadline = now + self.config.time_wait   # a retransmitted FIN
                self._queue_ack()
            return

        # Second check: RST (RFC 5961 §3.2).
        if flags & RST:
            if st == State.TIME_WAIT:
                return   # RFC 1337 §3 (TIME-WAIT assassination): ignore RST, keep waiting
            if seq == rcv_nxt:
                if st == State.SYN_RECEIVED and self.passive:
                    if self.tfo_accepted:
                        self._emit(Reset(self))   # the application already has it
                    self._enter_closed()   # back to LISTEN: the listener is the endpoint's
                    return
                if st not in (State.CLOSING, State.LAST_ACK):
                    self._emit(Reset(self))   # RFC 9293 §3.10.7.4: CLOSING/LAST-ACK close quietly
                self._enter_closed()
            else:
                self._challenge_ack(now)
            return

        # Fifth check: ACK.
        if not flags & ACK:
            return
        ack = self.snd_una + seq_sub(seg.ack, (self.iss + self.snd_una) & MASK)
        if st == State.SYN_RECEIVED:
            if 0 < ack <= self.snd_max:
                self.state = st = State.ESTABLISHED
                self.snd_una = 1
                self.bytes_acked = 0
                self._update_window(seg, seq, ack, force=True)
                self.rto_deadline = None
                self.rtt.reset_backoff()
                self._handshake_rtt(now)
                if not self.tfo_accepted:   # RFC 7413: the app heard of it at SYN time
                    self._emit(Connected(self))
            else:
                self._ctl.append(Segment(self.local_port, self.remote_port, seg.ack, 0, RST))
                return

        # RFC 7323 §4.3: update TS.Recent from in-order segments (never backwards).
        if self.ts_ok and seg.tsval is not None and seq <= self.last_ack_sent and not disordered:
            self.ts_recent = seg.tsval
            self.ts_recent_time = now
            if plen and seg.tsecr:
                self._rcv_rtt(seg.tsecr, now)

        if ack > self.snd_max:
            # RFC 5961 §5.2 / RFC 9293: ACK for something not yet sent.
            self._queue_ack()
            return
        if ack < self.snd_una - self.max_snd_wnd:
            self._challenge_ack(now)
            return

        self._process_ack(seg, seq, ack, plen, now)
        if self.state == State.CLOSED:
            return

        # Seventh check: segment text.
        if plen and self.state in _RECEIVES_DATA:
            self._receive_data(seq, payload, now)

        # Eighth check: FIN.
        if flags & FIN:
            fin_at = seq + plen
            if self.fin_rcvd_off is None and fin_at >= self.rcv_nxt:
                self.fin_rcvd_off = fin_at
            if self.state == State.TIME_WAIT:
                self._queue_ack()
                self.timewait_deadline = now + self.config.time_wait
        if self.fin_rcvd_off is not None and self.fin_rcvd_off == self.rcv_nxt:
            self._take_fin(now)

    def _predicted(self, seg: Segment, now: float) -> bool:
        """Header prediction (Jacobson, RFC 1185 era; 4.4BSD tcp_input's fast path).

        An in-order segment on an ESTABLISHED connection that acknowledges new data
        (with nothing SACKed), or carries in-order data that fits the window, or both
        (an interactive reply), with a timestamp that passes PAWS, needs none of the
        general checks: every one of them would pass. Returns False (nothing changed)
        for anything else. ``test_header_prediction_is_only_a_shortcut`` checks that a
        lossy simulated transfer ends identically with and without this path.
        """
        tsval = seg.tsval
        if self.ts_ok and (tsval is None or ((tsval - self.ts_recent) & MASK) >= HALF):
            return False
        snd_una = self.snd_una
        ack = snd_una + seq_sub(seg.ack, (self.iss + snd_una) & MASK)
        payload = seg.payload
        rcv_nxt = self.rcv_nxt
        if payload and (self.ooo.total or self.fin_rcvd_off is not None
                        or len(payload) > self.rcv_adv - rcv_nxt):
            return False
        new_ack = ack != snd_una
        if new_ack:
            if ack < snd_una or ack > self.snd_max or self.sacked.total:
                return False
        elif not payload:
            return False
        self._last_recv = now
        self._keepalive_sent = 0
        if tsval is not None and self.ts_ok and rcv_nxt <= self.last_ack_sent:   # RFC 7323 §4.3
            self.ts_recent = tsval
            self.ts_recent_time = now
            if payload and seg.tsecr:
                self._rcv_rtt(seg.tsecr, now)
        self._update_window(seg, rcv_nxt, ack)
        if new_ack:
            self.rs.reset(self.snd_max - snd_una if self._rate_cc else 0)
            delivered_before = self.delivered
            self._ack_advanced(ack, ack - snd_una, seg, now)
            self._rate_finish(now, delivered_before, self._lost_marked)
        if payload:
            self._receive_data(rcv_nxt, payload, now)
        return True

    def _receive_syn_sent(self, seg: Segment, now: float) -> None:
        """RFC 9293 §3.10.7.3, including simultaneous open."""
        flags = seg.flags
        if flags & ACK:
            ack = seq_sub(seg.ack, self.iss)
            if ack <= 0 or ack > max(self.snd_max, self._tfo_sent_end):
                if not flags & RST:
                    self._ctl.append(Segment(self.local_port, self.remote_port, seg.ack, 0, RST))
                return
            if flags & RST:
                self._emit(Reset(self))
                self._enter_closed()
                return
        elif flags & RST:
            return
        if not flags & SYN:
            return
        self._last_recv = now
        self._take_syn(seg, now)
        self.rcv_adv = self.rcv_nxt + self._recv_window()
        if seg.tfo_cookie and self.tfo_cache is not None and self.config.fast_open:
            self.tfo_cache[self.peer] = (seg.tfo_cookie, self.mss_peer)   # RFC 7413 §4.1.3
        if flags & ACK:
            self._tfo_synack(ack)
            self.state = State.ESTABLISHED
            self._update_window(seg, 0, self.snd_una, force=True)
            self.rto_deadline = None
            self.rtt.reset_backoff()
            self._handshake_rtt(now)
            self._emit(Connected(self))
            self._queue_ack()
            if seg.payload:
                self._receive_data(1, seg.payload, now)
            if flags & FIN:
                self.fin_rcvd_off = 1 + len(seg.payload)
                if self.fin_rcvd_off == self.rcv_nxt:
                    self._take_fin(now)
        else:
            # Simultaneous open: SYN-SENT -> SYN-RECEIVED, answer SYN-ACK with our ISS.
            self.state = State.SYN_RECEIVED
            self._ctl.append(self._segment(SYN | ACK, 0, now=now))
            self._arm_rto(now)

    def _tfo_synack(self, ack: int) -> None:
        """RFC 7413 §4.1.3: the SYN-ACK acknowledges the SYN and maybe the SYN's data.

        What it does not acknowledge is sent again as new data right away (the
        server refused the cookie or the data); the window and RTO do not suffer.
        """
        if ack > self.snd_max:
            self.snd_max = ack   # a retransmitted SYN went without data, yet the first one arrived
        if ack > 1:
            n = ack - 1
            self.tfo_syn_data_acked = True
            self.snd_buf.discard(n)
            self.snd_buf_start = ack
            self.bytes_acked += n
            self.delivered += n
        if self.snd_max > ack:
            self.bytes_sent -= self.snd_max - ack
            self.snd_max = ack
        self.snd_una = ack

    def _handshake_rtt(self, now: float) -> None:
        """First RTT sample from a SYN that left once; after a SYN timeout RTO = 3 s
        (RFC 6298 §5.7). A SYN-ACK sent again for a repeated SYN gives no sample: which
        one the ACK answers is unknown (Karn, RFC 6298 §3)."""
        if self._syn_tries > 1:
            self.rtt.fallback_after_syn_timeout()
        elif self._syn_departures == 1:
            self.rtt.on_sample(max(now - self._syn_time, 0.0), now)

    def _rcv_rtt(self, tsecr: int, now: float) -> None:
        """A receiver's RTT sample: in-order data echoing the TSval of one of our ACKs
        (RFC 7323 §3, as Linux's tcp_rcv_rtt_measure_ts).

        A connection that only receives takes one sample of its own, from the handshake,
        and one scheduling delay there misjudges the path for good. This one is never
        shorter than the path: the data left after our ACK arrived, and the 1 ms clock
        only lengthens it. Kept apart from :attr:`rtt` (the sender's retransmission
        timer must not follow what the peer's sending pattern adds); its minimum tells
        the runtime how long the path is (``Connection.path_rtt``).
        """
        sample = now - self._ts_to_time(tsecr)
        if 0.0 <= sample <= 120.0 and (self.rcv_min_rtt is None or sample < self.rcv_min_rtt):
            self.rcv_min_rtt = sample

    @property
    def path_rtt(self) -> float | None:
        """The path's round trip as far as either direction has measured it: the least
        of the sender's windowed min_rtt and the receiver's samples."""
        a, b = self.rtt.min_rtt, self.rcv_min_rtt
        if a is None:
            return b
        return a if b is None or a < b else b

    def _syn_leaves(self, out: list[Segment], now: float) -> None:
        """Our SYN or SYN-ACK was built when what caused it came in; it leaves now.

        The handshake's RTT sample runs from its transmission (RFC 6298 §2), so its
        first departure sets the time, and its TSval names this moment (RFC 7323 §3):
        a listener that spent milliseconds finishing a DTLS handshake in the same
        batch as the SYN would otherwise count them as path, and on loopback would
        take a 2.5 ms path for a 0.3 ms one.
        """
        for seg in out:
            if seg.flags & SYN:
                self._syn_departures += 1
                if self._syn_departures == 1:
                    self._syn_time = now
                if seg.tsval is not None:
                    seg.tsval = self._tsval(now)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 §7: challenge ACKs, at most ``challenge_ack_limit`` per second."""
        times = self._challenge_times
        while times and now - times[0] >= 1.0:
            times.popleft()
        if len(times) >= self.config.challenge_ack_limit:
            return
        times.append(now)
        self.challenge_acks += 1
        self._ctl.append(self._segment(ACK, self.snd_max, now=now))

    def _update_window(self, seg: Segment, seq: int, ack: int, force: bool = False) -> None:
        """SND.WND update rule (RFC 9293 §3.10.7.4, fifth check)."""
        if force or self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            wnd = seg.wnd << self.snd_wscale if not seg.flags & SYN else seg.wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            edge = ack + wnd
            if edge > self.snd_wnd_edge or force:
                self.snd_wnd_edge = edge
            else:
                # A shrinking window: honour it for new data, never retract what was sent.
                self.snd_wnd_edge = max(edge, self.snd_una)
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd > 0:
                self.persist_deadline = None
                self._persist_backoff = 0

    def _process_ack(self, seg: Segment, seq: int, ack: int, plen: int, now: float) -> None:
        """Acknowledgment processing: window, RTT, SACK scoreboard, recovery, FIN states."""
        old_edge = self.snd_wnd_edge
        self._update_window(seg, seq, ack)
        snd_una = self.snd_una
        self.rs.reset(self._pipe() if self._rate_cc else 0)
        delivered_before = self.delivered
        lost_before = self._lost_marked
        newly_sacked = 0
        new_ranges: list[tuple[int, int]] | None = None
        if self.sack_ok and seg.sack:
            new_ranges = self._take_sack(seg.sack, ack, now)
            for a, b in new_ranges:
                newly_sacked += b - a
        acked = ack - snd_una
        if acked > 0:
            self._ack_advanced(ack, acked, seg, now)
        elif (ack == snd_una and self.snd_max > snd_una
              and (newly_sacked > 0 if self.sack_ok else
                   (plen == 0 and not seg.flags & FIN and self.snd_wnd_edge == old_edge))):
            self.dupacks += 1
        if new_ranges:
            sack_ts = self._sack_delivered(new_ranges, seg, now)
            if acked <= 0 and sack_ts is not None and self.config.rtt_sack_samples:
                # Linux's tcp_ack_update_rtt: with no cumulative sample, the oldest newly
                # SACKed original transmission gives one.
                self._rtt_sample(now - sack_ts, True, now)
        if self.snd_max > self.snd_una:
            self._loss_detection(now)
            if self.prr.active:
                delivered = self.delivered - delivered_before   # RFC 6937 §3 DeliveredData
                if not self.sack_ok and acked <= 0 and ack == snd_una:
                    delivered = self.eff_mss   # RFC 6937 §3: one MSS per duplicate ACK without SACK
                self._recovery_cwnd = self.prr.on_ack(delivered, self._pipe(), self.eff_mss)
        else:
            self.rack_deadline = None
        self._rate_finish(now, delivered_before, lost_before)

        st = self.state
        if self.fin_off is not None and self.snd_una > self.fin_off:
            if st == State.FIN_WAIT_1:
                self.state = State.FIN_WAIT_2
            elif st == State.CLOSING:
                self._enter_time_wait(now)
            elif st == State.LAST_ACK:
                self._enter_closed()

    def _take_sack(self, blocks: tuple[tuple[int, int], ...], ack: int,
                   now: float) -> list[tuple[int, int]]:
        """Merge SACK blocks into the scoreboard (RFC 2018 §5); returns the newly SACKed ranges.

        D-SACK blocks (RFC 2883 §4) are not merged: they feed RACK's reordering
        window (RFC 8985 §6.2 step 4), the undo of spurious retransmissions
        (RFC 3708 §3) and the tail-loss-probe outcome (RFC 8985 §7.4.2).
        """
        base = self.snd_una
        base_wire = (self.iss + base) & MASK
        sacked = self.sacked
        new: list[tuple[int, int]] = []
        for i, (left, right) in enumerate(blocks):
            if i == 0 and self._mtu_probe is not None and (left, right) == self._mtu_probe:
                self._mtu_probe = None          # a path-MTU probe's answer, not a duplicate
                self.mtu_probe_answered = True
                continue
            a = base + seq_sub(left, base_wire)
            b = base + seq_sub(right, base_wire)
            if b <= a or b > self.snd_max:
                continue
            if a < ack or (i == 0 and len(blocks) > 1 and blocks[1][0] != left and
                           self._covers_wire(blocks[1], a, b, base, base_wire)):
                self._on_dsack(a, b, now)
                continue
            if a < base:
                # An ACK the path delayed: what it SACKs below SND.UNA is acknowledged already.
                if b <= base:
                    continue
                a = base
            pos = a
            while pos < b:
                gap = sacked.first_gap(pos, b)
                if gap is None:
                    break
                new.append(gap)
                pos = gap[1]
            sacked.add(a, b)
        if new:
            new.sort()
            lost = self.lost
            if lost.total:
                for a, b in new:
                    lost.remove(a, b)
        return new

    @staticmethod
    def _covers_wire(block: tuple[int, int], a: int, b: int, base: int, base_wire: int) -> bool:
        a2 = base + seq_sub(block[0], base_wire)
        b2 = base + seq_sub(block[1], base_wire)
        return a2 <= a and b <= b2

    def _on_dsack(self, a: int, b: int, now: float) -> None:
        """A D-SACK for ``[a, b)``: the peer got those octets twice."""
        self.dsacks_in += 1
        self.rack.on_dsack(self.snd_una, self.snd_max)
        if self._tlp_end is not None and self._tlp_is_retrans and a < self._tlp_end <= b:
            self._tlp_end = None   # RFC 8985 §7.4.2: original and probe both arrived: no loss
            return
        if self._undo_marker is not None and b > self._undo_marker and self._undo_rtx_total:
            mss = self.eff_mss
            self._undo_retrans -= max(1, -(-(b - a) // mss))
            if self._undo_retrans <= 0 and self.config.undo:
                self._undo(now)   # RFC 3708 §3: every retransmission was a duplicate

    def _undo(self, now: float) -> None:
        """The last window reduction was spurious: restore it and forget the loss marks."""
        self.spurious_undos += 1
        self._undo_marker = None
        self._undo_rtx_total = 0
        self.cc.on_spurious_congestion(now)
        if self.in_recovery:
            self.in_recovery = False
            self.rto_recovery = False
            self.prr.stop()
            self.rack.on_recovery_exit()
        self.lost.clear()
        self._rack_rescan()
        self.lost_point = self.snd_una
        self._rxt_now = False
        self.dupacks = 0
        self.rack.reordering_seen = True

    def _ack_advanced(self, ack: int, acked: int, seg: Segment, now: float) -> None:
        """New data acknowledged (RFC 9293 §3.10.7.4, RFC 6298 §5.3, RFC 5681)."""
        fin_off = self.fin_off
        # bytes_acked counts payload only: the FIN's sequence number is not a byte (the SYN's never gets here)
        self.bytes_acked += acked - 1 if fin_off is not None and self.snd_una <= fin_off < ack else acked
        self.snd_una = ack
        self.delivered += acked
        self.delivered_ts = now
        self._last_progress = now
        self.dupacks = 0
        # Release acknowledged data from the send buffer.
        drop = ack - self.snd_buf_start
        if self.fin_off is not None and ack > self.fin_off:
            drop = self.fin_off - self.snd_buf_start
        if drop > 0:
            self.snd_buf.discard(drop)
            self.snd_buf_start += drop
            if self._writer_blocked and len(self.snd_buf) < self.config.send_buffer:
                self._writer_blocked = False
                self._emit(Writable(self))
        # RACK (RFC 8985 §6.2 steps 2-3) over the transmissions now acknowledged.
        lo, hi = self.sent.acked_to(ack)
        if hi > lo:
            self._records_delivered(lo, hi, seg, now)
        if self.sacked.total:
            self.delivered -= self.sacked.count_in(ack - acked, ack)   # counted when SACKed
            self.sacked.remove_below(ack)
        if self.lost.total:
            self.lost.remove_below(ack)
        # RTT: a timed, never-retransmitted segment; else the echoed timestamp.
        sample = None
        sample_from_ts = False
        timed = self._timed
        if timed is not None and ack >= timed[0]:
            sample = now - timed[1]
            self._timed = None
        elif self.ts_ok and seg.tsecr:
            # RFC 7323 §4.1: the echoed TSval names the transmission that was acknowledged,
            # retransmissions included, so this sample is unambiguous (no Karn problem).
            sample = now - self._ts_to_time(seg.tsecr)
            sample_from_ts = True
            if sample < 0 or sample > 120.0:
                sample = None
        if sample is not None:
            self._rtt_sample(sample, sample_from_ts, now)
            if self.cc.in_slow_start and not self.in_recovery:
                self.cc.on_rtt_sample(sample, now, ack, self.snd_max)
        # Eifel (RFC 3522 §3.2): an ACK that echoes a timestamp older than the first
        # retransmission was caused by an original transmission. Checked where the answer
        # is unambiguous (as Linux's tcp_packet_delayed): the first ACK after a timeout
        # (which resent SND.UNA first), and the ACK ending fast recovery (the last hole
        # was filled by an original only if every retransmission was unnecessary).
        if (self._retrans_stamp is not None and not self._eifel_checked and self.ts_ok
                and self._undo_marker is not None and self.in_recovery
                and (self.rto_recovery or ack >= self.recovery_point)):
            self._eifel_checked = True
            if (seg.tsecr and seq_lt(seg.tsecr, self._tsval(self._retrans_stamp))
                    and self.config.undo):
                self._undo(now)
        if self._tlp_end is not None:
            self._tlp_process_ack(ack, now)
        # Congestion control and recovery.
        if self.in_recovery:
            if ack >= self.recovery_point:
                self.in_recovery = False
                self.rto_recovery = False
                self.prr.stop()
                self.rack.on_recovery_exit()
                self.lost.clear()
                self._rack_rescan()
                self.cc.on_recovery_exit(now)
            elif self.rto_recovery:
                self.cc.on_ack(acked, now, self.rtt.srtt, self.flight, self._app_limited(acked))
            elif not self.sack_ok:
                # RFC 6582 §3.2 step 3: a partial ACK; the next hole is lost too.
                self._mark_lost(ack, min(ack + self.eff_mss, self.snd_max))
                self._rxt_now = True
        else:
            self.cc.on_ack(acked, now, self.rtt.srtt, self.flight, self._app_limited(acked))
        # RFC 6298 §5.2/5.3.
        if self.snd_max > ack:
            self.rto_deadline = now + self.rtt.rto
            self._arm_tlp(now)
        else:
            self.rto_deadline = None
            self.tlp_deadline = None
            self.rack_deadline = None
            self.rtt.reset_backoff()
            if self._rtxq_ts:
                # Everything is acknowledged: no resend is pending (a probe's resend
                # repaired outside recovery would otherwise stay queued for good).
                self._rtxq_ts.clear()
                self._rtxq_start.clear()
                self._rtxq_head = 0

    def _records_delivered(self, lo: int, hi: int, seg: Segment, now: float) -> None:
        """RFC 8985 §6.2 steps 2-3 for the records ``[lo, hi)`` just cumulatively acknowledged."""
        log = self.sent
        rack = self.rack
        ends, tss, flags = log.end, log.ts, log.flags
        sacked = self.sacked
        rs = self.rs
        dlv, dlv_ts, first_ts = log.dlv, log.dlv_ts, log.first_ts
        if not sacked.total and not self._rtx_in_log:
            # In order and never retransmitted: the last record is the latest sent.
            k = hi - 1
            e = ends[k]
            t = tss[k]
            if t > rack.xmit_ts or (t == rack.xmit_ts and e > rack.end_seq):
                rack.rtt = now - t
                rack.xmit_ts = t
                rack.end_seq = e
            if e > rack.fack:
                rack.fack = e
            f = rs.take(t, e, dlv[k], dlv_ts[k], first_ts[k], bool(flags[k] & APP_LIMITED), False, now)
            if f is not None:
                self.first_sent_ts = f
            return
        starts = log.start
        tsecr_time = self._ts_to_time(seg.tsecr) if self.ts_ok and seg.tsecr else None
        min_rtt = self.rtt.min_rtt
        for k in range(lo, hi):
            fl = flags[k]
            rtx = bool(fl & RETRANSMITTED)
            if rtx:
                self._rtx_in_log -= 1
            if sacked.total and sacked.covers(starts[k], ends[k]):
                continue   # delivered earlier, when SACKed
            rack.update(tss[k], ends[k], rtx, now, tsecr_time, min_rtt)
            rack.delivered(ends[k], rtx)
            f = rs.take(tss[k], ends[k], dlv[k], dlv_ts[k], first_ts[k], bool(fl & APP_LIMITED), rtx, now)
            if f is not None:
                self.first_sent_ts = f

    def _sack_delivered(self, ranges: list[tuple[int, int]], seg: Segment, now: float) -> float | None:
        """RFC 8985 §6.2 steps 2-3 for newly SACKed ranges (ascending); with
        ``config.rtt_sack_samples``, returns the earliest send time among the
        never-retransmitted ones (an RTT sample)."""
        log = self.sent
        rack = self.rack
        starts, ends, tss, flags = log.start, log.end, log.ts, log.flags
        dlv, dlv_ts, first_ts = log.dlv, log.dlv_ts, log.first_ts
        rs = self.rs
        tsecr_time = self._ts_to_time(seg.tsecr) if self.ts_ok and seg.tsecr else None
        min_rtt = self.rtt.min_rtt
        n = len(ends)
        oldest: float | None = None
        want_rtt = self.config.rtt_sack_samples
        for a, b in ranges:
            self.delivered += b - a
            i = log.index_after(a)
            while i < n and starts[i] < b:
                fl = flags[i]
                rtx = bool(fl & RETRANSMITTED)
                if want_rtt and not rtx and (oldest is None or tss[i] < oldest):
                    oldest = tss[i]
                rack.update(tss[i], ends[i], rtx, now, tsecr_time, min_rtt)
                rack.delivered(ends[i], rtx)
                f = rs.take(tss[i], ends[i], dlv[i], dlv_ts[i], first_ts[i], bool(fl & APP_LIMITED), rtx, now)
                if f is not None:
                    self.first_sent_ts = f
                i += 1
        self.delivered_ts = now
        return oldest

    def _rate_finish(self, now: float, delivered_before: int, lost_before: int) -> None:
        """draft-cheng-iccrg-delivery-rate-estimation §3.3 GenerateRateSample, then the
        controller's ``on_rate_sample`` (BBR's input)."""
        rs = self.rs
        delivered = self.delivered
        if self._app_limited_until and delivered > self._app_limited_until:
            self._app_limited_until = 0
        if rs.finish(delivered, self.rtt.min_rtt):
            self.delivery_rate = rs.delivery_rate
        if self._rate_cc:
            rs.acked_sacked = delivered - delivered_before
            rs.losses = self._lost_marked - lost_before
            cc = self.cc
            pipe = self._pipe()
            cc.on_rate_sample(rs, now, pipe)
            if cc.want_app_limited:
                # BBR's PROBE_RTT: samples taken while the window is cut are not the path's rate.
                self._app_limited_until = max(delivered + pipe, 1)

    def _app_limited(self, acked: int) -> bool:
        """cwnd did not limit the sender, so an ACK must not grow it (RFC 7661 §4.3).

        Whatever held the flight back (the application, the peer's window), a window
        that was never filled has not been tested by the network. Like Linux's
        ``tcp_is_cwnd_limited``: the largest flight of this round trip or the last
        one must have reached half of cwnd (slow start doubles it per round trip).
        """
        flight = self.snd_max - self.snd_una
        if self.snd_una >= self._flight_mark:      # a round trip ended
            self._prev_max_flight = self._max_flight
            self._max_flight = flight
            self._flight_mark = self.snd_max
        most = self._max_flight if self._max_flight > self._prev_max_flight else self._prev_max_flight
        return most * 2 < self.cc.cwnd

    def _mark_lost(self, a: int, b: int) -> int:
        """Mark the un-SACKed octets of ``[a, b)`` lost (to be retransmitted); returns how many."""
        if a < self.snd_una:
            a = self.snd_una
        n = 0
        sacked, lost = self.sacked, self.lost
        pos = a
        while pos < b:
            gap = sacked.first_gap(pos, b)
            if gap is None:
                break
            n += lost.add(gap[0], gap[1])
            pos = gap[1]
        self._lost_marked += n
        return n

    def _loss_detection(self, now: float) -> None:
        """Mark losses and enter fast recovery.

        With SACK and ``rack``: RACK (RFC 8985 §6.2). Otherwise RFC 6675 §5 IsLost
        (DupThresh segments SACKed above) or DupThresh duplicate ACKs (RFC 6582 §3.2).
        """
        if self._rack_on:
            self._rack_detect(now)
            if not self.in_recovery and self.lost.total:
                self._enter_recovery(now)
            return
        if self.sack_ok and self.sacked.total:
            thresh = (DUP_THRESH - 1) * self.eff_mss
            acc = 0
            for a, b in self.sacked.ranges_from_top():
                acc += b - a
                if acc > thresh:
                    if a > self.lost_point:
                        self._mark_lost(max(self.lost_point, self.snd_una), a)
                        self.lost_point = a
                    break
        if self.in_recovery:
            return
        if self.dupacks >= DUP_THRESH or self.lost.total:
            if not self.lost.total:
                self.lost_point = min(self.snd_una + self.eff_mss, self.snd_max)
                self._mark_lost(self.snd_una, self.lost_point)
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        """Fast recovery begins (RFC 6675 §5 step 4, RFC 6937 §3, RFC 3708 §3)."""
        flight = self.flight
        recover_fs = self.cc.reduction_base(flight)   # RFC 6937's RecoverFS, at most cwnd (Linux: prior_cwnd)
        self.in_recovery = True
        self.rto_recovery = False
        self.recoveries += 1
        self.recovery_point = self.snd_max
        self.cc.on_congestion_event(now, flight)
        self._rxt_now = True
        self._undo_marker = self.snd_una
        self._undo_retrans = self._undo_rtx_total = self._tlp_rtx_outstanding()
        self._retrans_stamp = None
        self._eifel_checked = False
        self._tlp_end = None
        self.tlp_deadline = None
        if self.config.prr and not getattr(self.cc, "manages_recovery", False):
            self.prr.start(recover_fs, self.cc.ssthresh)
            self._recovery_cwnd = self.prr.on_ack(0, self._pipe(), self.eff_mss)

    def _rtt_sample(self, sample: float, per_ack: bool, now: float) -> None:
        """Feed one RTT sample to the estimator (RFC 6298 §2).

        RFC 7323 App. G: when samples come with every ACK (``per_ack``: echoed
        timestamps), each moves SRTT and RTTVAR by 1 / ExpectedSamples (the flight
        over two segments) of the usual gain. With ``config.rtt_sack_samples`` every
        sample has the full gain, as in Linux: in recovery, cumulative ACKs are few
        per window, and the damped SRTT stayed at the empty-queue RTT while a full
        queue doubled it, so the RTO fired under resends about to be answered.
        """
        per_window = 1
        if per_ack and not self.config.rtt_sack_samples:
            per_window = max(1, -(-self.flight // (2 * self.eff_mss)))
        self.rtt.on_sample(max(sample, 0.0), now, per_window)

    def _rack_detect(self, now: float) -> None:
        """RFC 8985 §6.2 step 5 (RACK_detect_loss) and the reordering timer.

        The RFC walks every unacknowledged transmission; here two walks in send
        order stop at the first transmission that is still in time, so an ACK costs
        what it changes, not the size of the window (Linux keeps a send-time list
        for the same reason). The timer is set for the earliest transmission still
        in time, so each is declared lost at its own deadline (the RFC waits for
        the latest one's and then declares them all).
        """
        rack = self.rack
        self.rack_deadline = None
        if rack.xmit_ts < 0:
            return
        mss = self.eff_mss
        rack.segs_sacked = -(-self.sacked.total // mss)
        r = self.rtt
        thresh = rack.rtt + rack.reo_wnd(self.in_recovery, r.min_rtt, r.srtt)
        rx_ts, rx_end = rack.xmit_ts, rack.end_seq
        log = self.sent
        starts, ends, tss, flags = log.start, log.end, log.ts, log.flags
        sacked, lost = self.sacked, self.lost
        una = self.snd_una
        wait = -1.0
        # 1. Original transmissions: stream order is send order.
        n = len(ends)
        cur = self._rack_cursor
        i = log.index_after(cur if cur > una else una)
        while i < n:
            s = starts[i]
            e = ends[i]
            if sacked.total:
                blk = sacked.range_at(s)
                if blk is not None and blk[1] >= e:
                    i = bisect_right(ends, blk[1], i)
                    continue
            if lost.total:
                blk = lost.range_at(s if s >= una else una)
                if blk is not None and blk[1] >= e:
                    i = bisect_right(ends, blk[1], i)
                    continue
            if flags[i] & RETRANSMITTED:
                i += 1              # the resend queue below has it
                continue
            t = tss[i]
            if t > rx_ts or (t == rx_ts and e > rx_end):
                break               # sent after RACK's, and so is every later original
            left = t + thresh - now
            if left > 1e-9:
                wait = left
                break
            if self._mark_lost(s, e):
                self.rack_losses += 1
            i += 1
        self._rack_cursor = starts[i] if i < n else self.snd_max
        # 2. Retransmissions, in the order they were sent.
        q_ts, q_start = self._rtxq_ts, self._rtxq_start
        h = self._rtxq_head
        m = len(q_ts)
        while h < m:
            s = q_start[h]
            t = q_ts[h]
            j = bisect_right(ends, s, log.head)
            if j >= n or starts[j] != s or tss[j] != t:
                h += 1              # acknowledged, or sent again since (a later entry has it)
                continue
            e = ends[j]
            if s < una:
                s = una             # partly acknowledged: the rest is still out
            if sacked.total and sacked.covers(s, e):
                h += 1
                continue
            if lost.total:
                blk = lost.range_at(s)
                if blk is not None and blk[1] >= e:
                    h += 1          # marked lost: its next resend comes back in the queue
                    continue
            if t > rx_ts or (t == rx_ts and e > rx_end):
                break
            left = t + thresh - now
            if left > 1e-9:
                if wait < 0.0 or left < wait:
                    wait = left
                break
            if self._mark_lost(s, e):
                self.rack_losses += 1
            h += 1
        if h >= 1024 and h > (m >> 1):
            del q_ts[:h]
            del q_start[:h]
            h = 0
        self._rtxq_head = h
        if wait > 0.0:
            self.rack_deadline = now + wait

    def _rack_rescan(self) -> None:
        """Loss marks were dropped (recovery ended, or undone): RACK looks at every
        unacknowledged transmission again."""
        self._rack_cursor = 0
        if not self._rack_on:
            return
        log = self.sent
        flags, tss, starts = log.flags, log.ts, log.start
        rtx = sorted((tss[i], starts[i]) for i in range(log.head, len(flags)) if flags[i] & RETRANSMITTED)
        self._rtxq_ts = [t for t, _ in rtx]
        self._rtxq_start = [a for _, a in rtx]
        self._rtxq_head = 0

    def _tlp_process_ack(self, ack: int, now: float) -> None:
        """RFC 8985 §7.4.2: did the tail loss probe repair a loss?"""
        end = self._tlp_end
        if end is None or ack < end:
            return
        if not self._tlp_is_retrans:
            self._tlp_end = None          # the probe carried new data: nothing to judge
            return
        if ack == end:
            return   # the original or the probe arrived: a D-SACK of the probe may follow
        self._tlp_repaired(now)

    def _tlp_repaired(self, now: float) -> None:
        """The probe's retransmission was acknowledged and no D-SACK of it came: the
        original was lost and the probe repaired it, so the congestion response still
        applies (RFC 8985 §7.4.2)."""
        self._tlp_end = None
        self.tlp_recoveries += 1
        self.cc.on_congestion_event(now, self._tlp_flight)
        self.cc.on_recovery_exit(now)

    def _tlp_rtx_outstanding(self) -> int:
        """1 if a probe's retransmission is still unjudged, else 0: a new undo episode
        then waits for its D-SACK too, so that D-SACK cannot stand in for one of the
        episode's own (Linux's tcp_init_undo)."""
        return 1 if self._tlp_end is not None and self._tlp_is_retrans else 0

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 §7.2: (re)start the probe timer after new data or a cumulative ACK."""
        self.tlp_deadline = None
        cfg = self.config
        end = self._tlp_end
        if (not cfg.tlp or not cfg.rack or not self.sack_ok or self.in_recovery
                or self.sacked.total or self.snd_max <= self.snd_una
                or (end is not None and self.snd_una < end)):
            return   # one probe per episode (§7.3), until the ACK reaches its end
        t = now + probe_timeout(self.rtt.srtt, self.flight <= self.eff_mss)
        rto = self.rto_deadline
        # RFC 8985 §7.2: an RTO due sooner than the PTO is replaced by the probe.
        self.tlp_deadline = rto if rto is not None and rto < t else t

    def _receive_data(self, seq: int, payload: Buffer, now: float) -> None:
        """Place received text (RFC 9293 §3.10.7.4 seventh check), reassembling out of order."""
        rcv_nxt = self.rcv_nxt
        end = seq + len(payload)
        # Trim what is already received and what lies beyond the window.
        if seq < rcv_nxt:
            self._note_dsack(seq, min(end, rcv_nxt), now)
            self.dup_segs_in += 1
            payload = payload[rcv_nxt - seq:]
            seq = rcv_nxt
            self._ack_now = True
        limit = self.rcv_adv
        if end > limit:
            payload = payload[: max(0, limit - seq)]
            end = seq + len(payload)
            self._ack_now = True
        if not payload:
            return
        self.bytes_received += len(payload)
        if seq == rcv_nxt:
            had = bool(self.rcv_buf)
            self.rcv_buf.append(payload)
            self.rcv_nxt = end
            if self.ooo.total:
                self._pull_ooo()
                self._ack_now = True
            if not had:
                self._emit(Readable(self))
            self._rcv_unacked += len(payload)
            if self._quickack > 0:
                self._quickack -= 1
                self._ack_now = True
            elif self._rcv_unacked >= 2 * self.eff_mss:
                self._ack_now = True
            elif self.delack_deadline is None:
                self.delack_deadline = now + self.config.delayed_ack
            self._autotune(now)
        else:
            self.ooo_segs_in += 1
            if self._insert_ooo(seq, payload, now):
                self._ooo_ack(seq, now)

    def _ooo_ack(self, seq: int, now: float) -> None:
        """Answer out-of-order data (RFC 5681 §4.2: an immediate ACK), compressed as Linux does.

        An ACK for each segment, built at once so that a batch of arrivals does not
        collapse into one ACK whose SACK blocks cannot describe every range (RFC 2018
        §4), made the receiver send an ACK for every data segment it got while a hole
        was open: at 2 % loss and a BDP in flight, that is nearly all the time, and
        the sender spent most of its CPU on them. So, as Linux's SACK compression
        (``tcp_sack_compress``): the first DUP_THRESH duplicate ACKs for each RCV.NXT
        and the ACK for a segment that starts a new SACK block (a new hole to report)
        leave at once; the others are answered together, after SACK_COMPRESS_MAX
        segments or min(SACK_COMPRESS_DELAY, RTT / 20), whichever comes first.
        """
        if self.rcv_nxt != self._dupacks_for:
            self._dupacks_for = self.rcv_nxt
            self._dupacks_sent = 0
        blk = self.ooo.range_at(seq)
        new_block = blk is not None and blk[0] == seq
        if not self.config.sack_compression or self._dupacks_sent < DUP_THRESH or new_block \
                or self._sack_held + 1 >= SACK_COMPRESS_MAX:
            self._dupacks_sent += 1
            self._ctl.append(self._segment(ACK, self.snd_max, now=now))
            return
        self._sack_held += 1
        rtt = self.rtt.srtt
        delay = SACK_COMPRESS_DELAY if rtt is None else min(SACK_COMPRESS_DELAY, rtt / 20)
        if self.delack_deadline is None or now + delay < self.delack_deadline:
            self.delack_deadline = now + delay

    def _note_dsack(self, a: int, b: int, now: float) -> None:
        """Report a duplicate in the next ACK (RFC 2883 §4); one ACK per duplicate."""
        if not self.sack_ok:
            return
        if self._dsack is not None:
            self._ctl.append(self._segment(ACK, self.snd_max, now=now))
        self._dsack = (a, b)
        self._ack_now = True

    def _insert_ooo(self, seq: int, payload: Buffer, now: float) -> bool:
        """Keep an out-of-order segment; False when it was a duplicate (D-SACK queued)."""
        end = seq + len(payload)
        if self.ooo.covers(seq, end):
            self.dup_segs_in += 1
            self._note_dsack(seq, end, now)
            return False
        if len(self._ooo_starts) >= self._ooo_cap:
            self._ack_now = True
            return False  # memory bound: the sender will retransmit it
        # Store only the parts not yet held, so stored pieces never overlap.
        pos = seq
        while pos < end:
            gap = self.ooo.first_gap(pos, end)
            if gap is None:
                break
            a, b = gap
            piece = payload[a - seq: b - seq]
            insort(self._ooo_starts, a)
            self._ooo_data[a] = bytes(piece)   # a copy only if it was a view
            pos = b
        self.ooo.add(seq, end)
        blk = self.ooo.range_at(seq)
        if blk is not None:
            recent = [blk]
            for r in self._sack_recent:
                if r[1] < blk[0] or r[0] > blk[1]:
                    if self.ooo.covers(r[0], r[1]):
                        recent.append(self.ooo.range_at(r[0]) or r)
                if len(recent) >= 4:
                    break
            self._sack_recent = recent
        return True

    def _pull_ooo(self) -> None:
        """Move stored segments that became in-order into the receive buffer."""
        starts, data = self._ooo_starts, self._ooo_data
        rcv_nxt = self.rcv_nxt
        i = 0
        while i < len(starts) and starts[i] <= rcv_nxt:
            s = starts[i]
            piece = data.pop(s)
            e = s + len(piece)
            if e > rcv_nxt:
                self.rcv_buf.append(piece[rcv_nxt - s:])
                rcv_nxt = e
            i += 1
        del starts[:i]
        self.rcv_nxt = rcv_nxt
        self.ooo.remove_below(rcv_nxt)
        self._sack_recent = [r for r in self._sack_recent if r[0] >= rcv_nxt and self.ooo.covers(*r)]

    def _take_fin(self, now: float) -> None:
        """Eighth check: the FIN is in order (RFC 9293 §3.10.7.4)."""
        self.rcv_nxt += 1
        self.fin_rcvd_off = -1   # consumed
        self._ack_now = True
        st = self.state
        self._emit(PeerClosed(self))
        if st in (State.SYN_RECEIVED, State.ESTABLISHED):
            self.state = State.CLOSE_WAIT
        elif st == State.FIN_WAIT_1:
            if self.fin_off is not None and self.snd_una > self.fin_off:
                self._enter_time_wait(now)
            else:
                self.state = State.CLOSING
        elif st == State.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.rto_deadline = self.persist_deadline = self.keepalive_deadline = None
        self.timewait_deadline = now + self.config.time_wait

    def _autotune(self, now: float) -> None:
        """Grow the offered window with the application's reading rate (dynamic right-sizing).

        Per RTT: three times what the application read, so the sender is never
        held by the window; and while that amount grows (the sender is in slow
        start or BBR's start-up), in proportion to its growth, so the window keeps
        ahead of a sender that doubles per round trip (as Linux's
        tcp_rcv_space_adjust, which uses twice). Three, not two: BBR keeps up to
        two BDPs in flight (cwnd gain 2), and a lost segment holds the window's
        left edge for a round trip while data above it keeps arriving. With two,
        the emulated 100 ms / 2 % path was window-limited in start-up; three
        measured +1.1 Mbit/s there (interleaved pairs, 6 of 6).
        """
        rtt = self.rtt.srtt or 0.05
        if now - self._tune_start < max(rtt, 0.001):
            return
        copied = self._tune_copied
        self._tune_copied = 0
        self._tune_start = now
        last = self._tune_space
        if copied <= last:
            return
        self._tune_space = copied
        cap = self.config.recv_buffer
        if self.rcv_space >= cap:
            return
        want = 3 * copied + 16 * self.eff_mss
        if last > 0:
            want += 2 * want * (copied - last) // last
        if want > self.rcv_space:
            self.rcv_space = min(cap, want)

    # ------------------------------------------------------------------ timers
    def _arm_rto(self, now: float) -> None:
        if self.rto_deadline is None:
            self.rto_deadline = now + self.rtt.rto

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`handle_timer` has work to do.

        This includes the pacer's next release time when paced data is waiting,
        so a caller that sleeps until this deadline also paces its sends.
        """
        best = None
        for t in (self.rto_deadline, self.delack_deadline, self.persist_deadline,
                  self.keepalive_deadline, self.timewait_deadline, self.rack_deadline,
                  self.tlp_deadline, self.pace_deadline):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        """Fire every timer that is due at ``now``."""
        if self.timewait_deadline is not None and now >= self.timewait_deadline:
            self.timewait_deadline = None
            self._enter_closed()
            return
        tlp = self.tlp_deadline
        if tlp is not None and now >= tlp:
            self.tlp_deadline = None
            if self.snd_max > self.snd_una and not self.in_recovery and self.state in _SYNCHRONIZED:
                self._tlp_pending = True    # RFC 8985 §7.3: the probe goes out with the output
                if self.rto_deadline is not None and tlp >= self.rto_deadline:
                    # §7.2: the probe takes the RTO's place; §7.3: the RTO is re-armed.
                    self.rto_deadline = now + self.rtt.rto
        if self.rto_deadline is not None and now >= self.rto_deadline:
            self.rto_deadline = None
            self._on_rto(now)
            if self.state == State.CLOSED:
                return
        if self.rack_deadline is not None and now >= self.rack_deadline:
            self.rack_deadline = None
            if self.snd_max > self.snd_una and self.state in _SYNCHRONIZED:
                self._loss_detection(now)   # RFC 8985 §6.3 RACK_detect_loss_and_arm_timer
                if self.prr.active:
                    self._recovery_cwnd = self.prr.on_ack(0, self._pipe(), self.eff_mss)
        if self.pace_deadline is not None and now >= self.pace_deadline:
            self.pace_deadline = None       # the output that follows sends the next quantum
        if self.delack_deadline is not None and now >= self.delack_deadline:
            self.delack_deadline = None
            self._ack_now = True
        if self.persist_deadline is not None and now >= self.persist_deadline:
            self.persist_deadline = None
            self._persist_backoff += 1
            self._ctl.append(self._segment(ACK, self.snd_una - 1, now=now))
        self._check_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """Retransmission timeout (RFC 6298 §5.4-5.7)."""
        cfg = self.config
        st = self.state
        if cfg.rto_restart_on_head_resend and st in _SYNCHRONIZED and self.snd_max > self.snd_una:
            # Linux (tcp_rearm_rto, tcp_xmit_retransmit_queue): the timer runs the RTO in
            # force now from the later of the last cumulative ACK and the head's last
            # send. So a resent head gets a whole RTO to be answered (counted from the
            # last ACK, RFC 6298 §5.3, it can expire while the resend is on its way),
            # and an RTO that grew since the timer was set moves the expiry out.
            log = self.sent
            start = self._last_progress
            if log.head < len(log.ts) and log.ts[log.head] > start:
                start = log.ts[log.head]
            if now < start + self.rtt.rto:
                self.rto_deadline = start + self.rtt.rto
                return
        self.rto_count += 1
        if st in (State.SYN_SENT, State.SYN_RECEIVED):
            if self._syn_tries > cfg.syn_retries:
                self._emit(Error(self, "connection timed out (no answer to SYN)"))
                self._enter_closed()
                return
            self._syn_tries += 1
            self.rtt.backoff()
            self.segs_retrans += 1
            if st == State.SYN_SENT and self._tfo_cookie is not None:
                # RFC 7413 §4.1.3: a SYN with data or the option may be what a middlebox
                # drops; retransmit a plain SYN and send the data after the handshake.
                self._syn_pending = False
                self._tfo_cookie = None
                if self.snd_max > 1:
                    self.bytes_sent -= self.snd_max - 1
                    self.snd_max = 1
            self._ctl.append(self._segment(SYN | (ACK if st == State.SYN_RECEIVED else 0), 0, now=now))
            self._arm_rto(now)
            return
        if self.snd_max <= self.snd_una:
            return
        if now - self._last_progress >= cfg.user_timeout:
            self._fail(f"user timeout: no acknowledgment for {cfg.user_timeout:g} s")
            return
        self.rtt.backoff()
        self._timed = None
        if not self.rto_recovery or self._undo_marker is None:
            # A new timeout episode (a repeated expiry keeps the first one's undo state).
            if not self.in_recovery or self._undo_marker is None:
                self._undo_marker = self.snd_una
                self._undo_retrans = self._undo_rtx_total = self._tlp_rtx_outstanding()
            self._retrans_stamp = None
            self._eifel_checked = False
        self.cc.on_rto(now, self.flight)
        # Everything not SACKed is now lost (RFC 6675 §5.1, RFC 8985 §6.3); resend it in
        # order under slow start.
        self.in_recovery = True
        self.rto_recovery = True
        self.prr.stop()
        self.recovery_point = self.snd_max
        self.lost.clear()
        self._mark_lost(self.snd_una, self.snd_max)
        self.lost_point = self.snd_max
        self.dupacks = 0
        self._tlp_end = None
        self.tlp_deadline = None
        self.rack_deadline = None
        self.rto_deadline = now + self.rtt.rto

    def _check_keepalive(self, now: float) -> None:
        """Keepalive (RFC 9293 §3.8.4): probe an idle connection, fail after N silences."""
        cfg = self.config
        if cfg.keepalive_idle is None or self.state not in _SYNCHRONIZED or self.state == State.TIME_WAIT:
            self.keepalive_deadline = None
            return
        due = self._last_recv + cfg.keepalive_idle + self._keepalive_sent * cfg.keepalive_interval
        if now >= due:
            if self._keepalive_sent >= cfg.keepalive_probes:
                self._fail(f"peer unresponsive: {cfg.keepalive_probes} keepalive probes unanswered")
                return
            self._keepalive_sent += 1
            self._ctl.append(self._segment(ACK, self.snd_una - 1, now=now))
            due = self._last_recv + cfg.keepalive_idle + self._keepalive_sent * cfg.keepalive_interval
        self.keepalive_deadline = due

    # ------------------------------------------------------------------ output
    def _pipe(self) -> int:
        """Bytes believed in the network (RFC 6675 §4 SetPipe, in range arithmetic).

        Octets SACKed, and octets marked lost and not retransmitted since, are
        not in the network; everything else between SND.UNA and SND.MAX is.
        """
        p = self.snd_max - self.snd_una - self.sacked.total - self.lost.total
        if self.in_recovery and not self.sack_ok and not self.rto_recovery:
            p -= self.dupacks * self.eff_mss
        return p if p > 0 else 0

    @property
    def cwnd(self) -> int:
        """The congestion window in force: PRR's during fast recovery, else the controller's."""
        return self._recovery_cwnd if self.prr.active else self.cc.cwnd

    def pacing_rate(self) -> float:
        """Bytes per second the pacer allows now (0: not pacing).

        The controller's own rate if it has one (BBR), else ``gain * cwnd / SRTT``
        with gain 2 in slow start and 1.2 otherwise (Linux's tcp_update_pacing_rate).
        """
        if not self._pacing:
            return 0.0
        cc = self.cc
        if cc.pacing_rate > 0.0:
            return cc.pacing_rate
        srtt = self.rtt.srtt
        if not srtt:
            return 0.0
        cwnd = self.cwnd
        flight = self.snd_max - self.snd_una
        if flight > cwnd:
            cwnd = flight
        gain = 2.0 if cc.cwnd < (cc.ssthresh >> 1) and not self.in_recovery else 1.2
        return gain * cwnd / srtt

    def segments_to_send(self, now: float) -> list[Segment]:
        """Everything to transmit now: control segments, retransmissions, new data, ACKs."""
        out = self._ctl
        self._ctl = []
        st = self.state
        if self._syn_pending and st == State.SYN_SENT and not self._syn_held:
            self._syn_pending = False
            out.insert(0, self._tfo_syn(now))
        if st in _SYNCHRONIZED and st != State.TIME_WAIT:
            self._send_data(out, now)
        if (self._ack_now or self._sack_owed) and st != State.CLOSED and st != State.SYN_SENT:
            out.append(self._segment(ACK, self.snd_max, now=now))
        if out:
            if st == State.SYN_RECEIVED or st == State.SYN_SENT:
                self._syn_leaves(out, now)
            self.segs_out += len(out)
            if self.config.keepalive_idle is not None and self.keepalive_deadline is None:
                self._check_keepalive(now)
        return out

    def _send_data(self, out: list[Segment], now: float) -> None:
        """RFC 6675 §5 NextSeg loop plus new data under cwnd, the peer's window and the pacer."""
        fin_off = self.fin_off
        data_end = self.snd_buf_start + len(self.snd_buf) if fin_off is None else fin_off
        self.pace_deadline = None
        lost = self.lost
        if self.snd_max == data_end and not lost.total and not self._tlp_pending and fin_off is None:
            # Nothing to send (most calls on an interactive connection): what the loop
            # below would conclude, without its pacer refill and window arithmetic.
            self._all_sent(self._pipe(), self._recovery_cwnd if self.prr.active else self.cc.cwnd)
            return
        mss = self.eff_mss
        cwnd = self._recovery_cwnd if self.prr.active else self.cc.cwnd
        pipe = self._pipe()
        was_idle = self.snd_max == self.snd_una
        sent_any = sent_new = False
        if self._tlp_pending:
            self._tlp_pending = False
            self._send_probe(out, now, data_end)
            pipe = self._pipe()
        rate = self.pacing_rate() if self._pacing else 0.0
        pacer = self.pacer if rate > 0.0 else None
        if pacer is not None:
            pacer.refill(now, rate, mss, self.cc.queue_standing())
        while True:
            room = cwnd - pipe
            # 1. Retransmit lost octets, lowest first. The first retransmission of a
            #    recovery episode goes out whatever cwnd and the pacer say (RFC 5681 §3.2
            #    step 2, RFC 6675 §5 step 4.3, RFC 6582 §3.2 step 5).
            if lost.total:
                forced = self._rxt_now
                if room < mss and pipe > 0 and not forced:
                    self.limited_by = "cwnd"
                    break
                if pacer is not None and pacer.tokens <= 0 and not forced:
                    self.limited_by = "pacing"
                    self._pace_wait(now)
                    break
                a, b = lost.lowest()
                if b > a + mss:
                    b = a + mss + (1 if fin_off is not None and a + mss == fin_off else 0)
                self._retransmit(out, a, b, now)
                if pacer is not None:
                    pacer.consume(b - a)
                pipe += b - a
                sent_any = True
                continue
            # 2. New data, and the FIN once all data is out.
            unsent = data_end - self.snd_max
            if unsent <= 0:
                self.limited_by = "app"
            if unsent < 0:
                break   # FIN already sent
            if unsent == 0:
                if fin_off is not None:
                    self._send_new(out, fin_off, fin_off + 1, now)
                    sent_any = sent_new = True
                else:
                    self._all_sent(pipe, cwnd)
                break
            wnd_room = self.snd_wnd_edge - self.snd_max
            usable = min(unsent, wnd_room, room)
            if usable < mss and usable < unsent:
                self.limited_by = "rwnd" if wnd_room <= room else "cwnd"
            if usable <= 0:
                if wnd_room <= 0 and self.flight == 0 and self.persist_deadline is None:
                    self._arm_persist(now)
                break
            idle = self.snd_max == self.snd_una
            if usable >= mss:
                n = mss
            elif idle or (not self.config.nagle and
                          (usable == unsent or usable >= (self.max_snd_wnd >> 1))):
                # Sender SWS avoidance (RFC 9293 §3.8.6.2.1); with nothing in flight no
                # ACK will come to clock us, so send what fits (the override timeout, at zero).
                n = usable
            else:
                if unsent < mss and not lost.total:
                    self._app_limited_until = max(self.delivered + pipe, 1)
                if usable == unsent:
                    self.limited_by = "app"   # Nagle holds a small tail back
                break
            if pacer is not None and pacer.tokens <= 0:
                self.limited_by = "pacing"
                self._pace_wait(now)
                break
            a = self.snd_max
            if idle:
                self.cc.on_send(now, 0)   # restarting after idle: CUBIC shifts its epoch
            k = usable // mss
            if pacer is not None and k > 1:
                allowed = -(-int(pacer.tokens) // mss)   # the pacer lets a segment start while tokens > 0
                if allowed < k:
                    k = allowed
            if k > 1 and not self.prr.active and (fin_off is None or a + k * mss < fin_off):
                # Bulk: a run of full-sized segments shares one header computation.
                self._send_full_run(out, k, now)
                n = k * mss
            else:
                b = a + n + (1 if a + n == fin_off else 0)
                self._send_new(out, a, b, now)
            if pacer is not None:
                pacer.consume(n)
            pipe += n
            sent_any = sent_new = True
        if sent_any:
            flight = self.snd_max - self.snd_una
            if flight > self._max_flight:
                self._max_flight = flight
            if was_idle:
                self._last_progress = now
            self._arm_rto(now)
            if sent_new:
                self._arm_tlp(now)

    def _all_sent(self, pipe: int, cwnd: int) -> None:
        """Every byte the application gave is out: it, not the network, limits us."""
        if self._app_backlog:
            self.limited_by = "sndbuf"    # the application waits for room, not for data
            return
        self.limited_by = "app"
        if pipe < cwnd:
            # draft-cheng-iccrg-delivery-rate-estimation §3.4: samples until this data is
            # delivered are low.
            self._app_limited_until = max(self.delivered + pipe, 1)

    def _pace_wait(self, now: float) -> None:
        self.pace_deadline = self.pacer.release_time(now)
        self.pacing_waits += 1

    def _send_new(self, out: list[Segment], a: int, b: int, now: float) -> None:
        """First transmission of ``[a, b)`` (``b`` may include the FIN)."""
        out.append(self._data_segment(a, b, now))
        if self.snd_max == self.snd_una:
            self.first_sent_ts = self.delivered_ts = now   # rate estimation: nothing in flight
        self.snd_max = b
        n = b - a
        if self.fin_off is not None and b > self.fin_off:
            n -= 1
        self.bytes_sent += n
        if self._timed is None and n:
            self._timed = (a + n, now)
        self.sent.append(a, b, now, APP_LIMITED if self._app_limited_until else 0,
                         self.delivered, self.delivered_ts, self.first_sent_ts)
        if self.prr.active:
            self.prr.on_sent(b - a)

    def _send_full_run(self, out: list[Segment], k: int, now: float) -> None:
        """``k`` first transmissions of full-sized segments in a row (no FIN among them).

        The same as ``k`` calls of :meth:`_send_new`, with the ACK, window and
        timestamp fields computed once for the run.
        """
        mss = self.eff_mss
        a = self.snd_max
        buf = self.snd_buf
        start = self.snd_buf_start
        buf_end = start + len(buf)
        first_end = a + mss
        first = self._segment(ACK, a, buf.peek(a - start, first_end - start), now)
        if a + mss == buf_end:
            first.flags |= PSH
        out.append(first)
        lport, rport, iss = self.local_port, self.remote_port, self.iss
        ack, wnd, tsval, tsecr = first.ack, first.wnd, first.tsval, first.tsecr
        log = self.sent
        append = out.append
        if a == self.snd_una:
            self.first_sent_ts = self.delivered_ts = now   # rate estimation: nothing in flight
        fl = APP_LIMITED if self._app_limited_until else 0
        dlv, dlv_ts, first_ts = self.delivered, self.delivered_ts, self.first_sent_ts
        log.append(a, a + mss, now, fl, dlv, dlv_ts, first_ts)
        for _ in range(k - 1):
            a += mss
            b = a + mss
            append(Segment(lport, rport, (iss + a) & MASK, ack, ACK | PSH if b == buf_end else ACK,
                           wnd, buf.peek(a - start, b - start), tsval=tsval, tsecr=tsecr))
            log.append(a, b, now, fl, dlv, dlv_ts, first_ts)
        self.snd_max = a + mss
        self.bytes_sent += k * mss
        if self._timed is None:
            self._timed = (first_end, now)

    def _retransmit(self, out: list[Segment], a: int, b: int, now: float) -> None:
        """Resend ``[a, b)``; its records take the new send time (RFC 8985 §6.1)."""
        seg = self._data_segment(a, b, now)
        out.append(seg)
        self.lost.remove(a, b)
        self._rxt_now = False
        self.segs_retrans += 1
        self.bytes_retrans += len(seg.payload)
        if self._timed is not None and a < self._timed[0]:
            self._timed = None   # Karn: never time a retransmitted range
        if self._retrans_stamp is None:
            self._retrans_stamp = now
        if self._undo_marker is not None and a >= self._undo_marker:
            self._undo_retrans += 1
            self._undo_rtx_total += 1
        if self.prr.active:
            self.prr.on_sent(b - a)
        log = self.sent
        starts, flags, tss = log.start, log.flags, log.ts
        dlv, dlv_ts, first_ts = log.dlv, log.dlv_ts, log.first_ts
        app = APP_LIMITED if self._app_limited_until else 0
        rtxq_ts, rtxq_start = self._rtxq_ts, self._rtxq_start
        rack_on = self._rack_on     # else nothing reads the queue
        i = log.index_after(a)
        n = len(starts)
        while i < n and starts[i] < b:
            fl = flags[i]
            if not fl & RETRANSMITTED:
                self._rtx_in_log += 1
            flags[i] = (fl & ~APP_LIMITED) | RETRANSMITTED | app
            tss[i] = now
            if rack_on:
                # Kept in RACK's order (RFC 8985 §6.2 RACK_sent_after): by send time, and
                # by stream offset among resends sent at the same time by separate calls.
                k = len(rtxq_ts)
                while k > self._rtxq_head and rtxq_ts[k - 1] == now and rtxq_start[k - 1] > starts[i]:
                    k -= 1
                rtxq_ts.insert(k, now)
                rtxq_start.insert(k, starts[i])
            dlv[i] = self.delivered        # a retransmission is a new transmission for the rate
            dlv_ts[i] = self.delivered_ts
            first_ts[i] = self.first_sent_ts
            i += 1

    def _send_probe(self, out: list[Segment], now: float, data_end: int) -> None:
        """RFC 8985 §7.3: send new data if any fits the peer's window, else resend the last segment."""
        if self.snd_max <= self.snd_una or self.in_recovery:
            return
        if self._tlp_rtx_outstanding():
            # The last probe's range is acknowledged, and no D-SACK of it came in the
            # PTO since (it would come right behind the ACK of the original): judge it
            # now, so that it does not stop this probe (tou's addition to §7.4.2).
            self._tlp_repaired(now)
        mss = self.eff_mss
        unsent = data_end - self.snd_max
        wnd_room = self.snd_wnd_edge - self.snd_max
        self.tlp_probes += 1
        n = unsent if unsent < mss else mss
        if n > 0 and wnd_room >= n:
            a = self.snd_max
            fin_off = self.fin_off
            self._send_new(out, a, a + n + (1 if a + n == fin_off else 0), now)
            self._tlp_is_retrans = False
        else:
            log = self.sent
            if len(log):
                a, b = log.start[-1], log.end[-1]
            else:
                a, b = self.snd_una, self.snd_max
            if a < self.snd_una:
                a = self.snd_una
            if b - a > mss:
                a = b - mss
            self._retransmit(out, a, b, now)
            self._tlp_is_retrans = True
        self._tlp_end = self.snd_max
        self._tlp_flight = self.flight
        self.rto_deadline = now + self.rtt.rto   # RFC 8985 §7.3: re-arm the RTO

    def _data_segment(self, a: int, b: int, now: float) -> Segment:
        """A segment covering offsets ``[a, b)``; it carries FIN when ``b`` passes ``fin_off``."""
        start = self.snd_buf_start
        fin_off = self.fin_off
        end = fin_off if fin_off is not None and b > fin_off else b
        fin = end != b
        payload = self.snd_buf.peek(a - start, end - start)
        flags = ACK
        if end == start + len(self.snd_buf) and payload:
            flags |= PSH
        if fin:
            flags |= FIN
            self._fin_sent()
        return self._segment(flags, a, payload, now)

    def _fin_sent(self) -> None:
        st = self.state
        if st == State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif st == State.CLOSE_WAIT:
            self.state = State.LAST_ACK

    def _arm_persist(self, now: float) -> None:
        """Zero-window probing with exponential backoff (RFC 9293 §3.8.6.1)."""
        cfg = self.config
        base = max(self.rtt.rto, cfg.persist_min)
        self.persist_deadline = now + min(base * (1 << min(self._persist_backoff, 16)), cfg.persist_max)

    # ------------------------------------------------------------------- stats
    @property
    def unsent_bytes(self) -> int:
        """Bytes the application queued that have not been sent once yet (``tcpi_notsent_bytes``)."""
        end = self.snd_buf_start + len(self.snd_buf)
        return max(0, end - max(self.snd_max, self.snd_buf_start))

    def stats(self) -> dict:
        """A TCP_INFO-like snapshot."""
        r = self.rtt
        return {
            "state": self.state.name,
            "srtt": r.srtt,
            "rttvar": r.rttvar,
            "min_rtt": r.min_rtt,
            "path_rtt": self.path_rtt,
            "rto": r.rto,
            "cwnd": self.cwnd,
            "ssthresh": self.cc.ssthresh,
            "congestion_control": self.cc.name,
            "mss": self.eff_mss,
            "in_flight": self.flight,
            "pipe": self._pipe(),
            "snd_wnd": max(0, self.snd_wnd_edge - self.snd_una),
            "rcv_wnd": max(0, self.rcv_adv - self.rcv_nxt),
            "rcv_space": self.rcv_space,
            "bytes_sent": self.bytes_sent,
            "bytes_acked": self.bytes_acked,
            "unsent_bytes": self.unsent_bytes,
            "limited_by": self.limited_by,
            "bytes_received": self.bytes_received,
            "bytes_retrans": self.bytes_retrans,
            "segs_out": self.segs_out,
            "segs_in": self.segs_in,
            "retransmitted_segments": self.segs_retrans,
            "dup_segs_in": self.dup_segs_in,
            "ooo_segs_in": self.ooo_segs_in,
            "rto_count": self.rto_count,
            "sack_recoveries": self.recoveries,
            "challenge_acks": self.challenge_acks,
            "paws_drops": self.paws_drops,
            "tlp_probes": self.tlp_probes,
            "tlp_recoveries": self.tlp_recoveries,
            "rack_losses": self.rack_losses,
            "rack_reo_wnd_mult": self.rack.reo_wnd_mult,
            "reordering_seen": self.rack.reordering_seen,
            "dsacks_in": self.dsacks_in,
            "mtu_probes": self.mtu_probes_sent,
            "spurious_undos": self.spurious_undos,
            "pacing_rate": self.pacing_rate(),
            "pacing_waits": self.pacing_waits,
            "delivered": self.delivered,
            "delivery_rate": self.delivery_rate,
            "fast_open": (self.tfo_accepted or self.tfo_syn_data_acked) if self.config.fast_open else None,
            "tfo_syn_data": self.tfo_syn_data,
            "sack": self.sack_ok,
            "timestamps": self.ts_ok,
            "wscale": (self.snd_wscale, self.rcv_wscale) if self.ws_ok else None,
        }
