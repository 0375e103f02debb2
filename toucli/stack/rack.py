"""RACK-TLP loss detection state (RFC 8985).

The engine owns the per-transmission records (:mod:`toucli.stack.scoreboard`)
and walks them; this class holds what RACK remembers between ACKs and makes
the decisions that are pure arithmetic:

* §6.2 step 2: RACK.xmit_ts / RACK.end_seq / RACK.rtt follow the most
  recently *sent* segment that was delivered; an ambiguous retransmission
  (acknowledged before its own send time per the echoed timestamp, or
  faster than min_rtt) is not taken.
* §6.2 step 3: RACK.fack (highest delivered end) and RACK.reordering_seen.
* §6.2 step 4: the reordering window: min_rtt/4 times a multiplier raised by
  each D-SACK round and decayed after 16 recoveries without one; zero before
  any reordering was seen when in recovery or with DupThresh segments SACKed;
  never above SRTT.
* §6.2 step 5: ``sent_after`` orders transmissions by (time, end sequence).
* §7.2: the probe timeout PTO = 2*SRTT plus the worst-case delayed ACK time with
  one segment in flight, else plus a 2 ms slack as Linux; at least ``PTO_MIN``.
"""

from __future__ import annotations

from typing import Final

DUP_THRESH: Final = 3              # RFC 8985 §6.2 step 4 uses RFC 6675's DupThresh
REO_WND_PERSIST: Final = 16        # RFC 8985 §6.2 step 4: recoveries a raised window lasts
WCDELACKT: Final = 0.2             # RFC 8985 §7.2: worst-case delayed-ACK timer of the peer
PTO_MIN: Final = 0.010             # floor on the PTO, so a sub-ms RTT does not probe a delayed ACK
PTO_SLACK: Final = 0.002           # added to 2*SRTT (Linux: TCP_TIMEOUT_MIN) so an ACK due at 2*SRTT wins


def sent_after(t1: float, seq1: int, t2: float, seq2: int) -> bool:
    """RFC 8985 §6.2 RACK_sent_after: transmission 1 is later than transmission 2."""
    return t1 > t2 or (t1 == t2 and seq1 > seq2)


class Rack:
    """What RACK-TLP remembers (RFC 8985 §5.2-§5.3)."""

    __slots__ = ("xmit_ts", "end_seq", "rtt", "fack", "reordering_seen", "reo_wnd_mult",
                 "reo_wnd_persist", "dsack_round", "segs_sacked")

    def __init__(self) -> None:
        self.xmit_ts = -1.0        # RACK.xmit_ts (no segment delivered yet)
        self.end_seq = 0           # RACK.end_seq
        self.rtt = 0.0             # RACK.rtt
        self.fack = 0              # RACK.fack
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self.dsack_round: int | None = None
        self.segs_sacked = 0       # segments SACKed above SND.UNA (kept by the engine)

    def update(self, xmit_ts: float, end: int, retransmitted: bool, now: float,
               tsecr_time: float | None, min_rtt: float | None) -> None:
        """§6.2 step 2 for one newly delivered transmission."""
        rtt = now - xmit_ts
        if retransmitted:
            if tsecr_time is not None and tsecr_time < xmit_ts - 0.0005:
                return   # the ACK echoes an older transmission: this one is not what arrived
            if min_rtt is not None and rtt < min_rtt:
                return   # too fast to be the retransmission's ACK
        if sent_after(xmit_ts, end, self.xmit_ts, self.end_seq):
            self.rtt = rtt
            self.xmit_ts = xmit_ts
            self.end_seq = end

    def delivered(self, end: int, retransmitted: bool) -> None:
        """§6.2 step 3, for newly delivered segments in ascending order of end."""
        if end > self.fack:
            self.fack = end
        elif end < self.fack and not retransmitted:
            self.reordering_seen = True

    def on_dsack(self, snd_una: int, snd_max: int) -> None:
        """§6.2 step 4, first half: one raise of the multiplier per round with a D-SACK."""
        if self.dsack_round is not None and snd_una >= self.dsack_round:
            self.dsack_round = None
        if self.dsack_round is None:
            self.dsack_round = snd_max
            self.reo_wnd_mult += 1
            self.reo_wnd_persist = REO_WND_PERSIST

    def on_recovery_exit(self) -> None:
        """§6.2 step 4: a raised window decays after REO_WND_PERSIST recoveries."""
        if self.reo_wnd_persist > 0:
            self.reo_wnd_persist -= 1
            if self.reo_wnd_persist <= 0:
                self.reo_wnd_mult = 1

    def reo_wnd(self, in_recovery: bool, min_rtt: float | None, srtt: float | None) -> float:
        """§6.2 step 4: RACK.reo_wnd."""
        if not self.reordering_seen and (in_recovery or self.segs_sacked >= DUP_THRESH):
            return 0.0
        if min_rtt is None:
            return 0.0
        w = min_rtt / 4.0 * self.reo_wnd_mult
        if srtt is not None and w > srtt:
            w = srtt
        return w


def probe_timeout(srtt: float | None, one_segment: bool) -> float:
    """RFC 8985 §7.2 TLP_calc_PTO (before the clamp to the RTO's expiry)."""
    if srtt is None:
        return 1.0
    pto = 2.0 * srtt + (WCDELACKT if one_segment else PTO_SLACK)
    return pto if pto > PTO_MIN else PTO_MIN
