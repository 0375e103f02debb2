"""The congestion-control interface the engine drives, plus the shared Reno arithmetic.

Windows are in bytes. The engine owns loss detection and recovery (RFC 6582,
RFC 6675, RACK); a controller only does window arithmetic on the events the
engine reports:

* ``on_ack``: new data acknowledged outside loss recovery: slow start
  (RFC 5681 §3.1) with Appropriate Byte Counting (RFC 3465, L = 2*SMSS, or
  L = 1*SMSS in the slow start that follows an RTO, RFC 3465 §2.3), then
  congestion avoidance. No growth while the sender is application-limited
  (RFC 7661 spirit: a window that was not used has not been validated).
* ``on_congestion_event``: fast retransmit / SACK / RACK loss: one reduction
  per recovery episode (a second call before ``on_recovery_exit`` is ignored).
* ``on_recovery_exit``: recovery ended: cwnd = ssthresh (RFC 5681 §3.2 step 6,
  "deflate"), which also ends any PRR-style reduction the engine applied.
* ``on_rto``: retransmission timeout: ssthresh from the flight size (held
  constant on a repeated timeout of the same data, RFC 5681 §3.1), cwnd = 1 SMSS
  (loss window).
* ``on_spurious_congestion``: the last reduction was spurious (D-SACK, Eifel,
  F-RTO): restore the state saved when it happened (RFC 4015 spirit,
  RFC 9438 §4.9).
* ``on_send``: optional hook before sending new data; with ``in_flight == 0``
  it tells the controller the connection was idle (CUBIC shifts its epoch).
* ``on_rate_sample``: after every ACK, a delivery-rate sample
  (:class:`~toucli.stack.rate.RateSample`, draft-cheng-iccrg-delivery-rate-estimation)
  and the bytes in the network; called only for controllers that set
  ``wants_rate_samples`` (BBR). The default does nothing.

Class attributes the engine reads: ``wants_rate_samples``; ``manages_recovery``
(the controller sizes cwnd during loss recovery itself, so the engine runs no PRR);
``requires_pacing`` (pace even when ``ConnectionConfig.pacing`` is off);
``supports_hystart``; and, read on every output, ``pacing_rate`` (bytes/s, 0.0 =
let the engine derive it from cwnd/SRTT) and ``want_app_limited`` (mark the
connection application-limited for rate sampling, BBR's PROBE_RTT).
"""

from __future__ import annotations

from typing import Final, Any

from ..errors import LocalError
from .hystart import HyStart

INITIAL_SSTHRESH: Final = 2 ** 31        # "arbitrarily high" (RFC 5681 §3.1)
MAX_CWND: Final = 2 ** 30                # sanity cap on window growth (1 GiB)
ABC_LIMIT: Final = 2                     # RFC 3465 §2.2: L = 2*SMSS in slow start


def rfc6928_initial_window(mss: int) -> int:
    """RFC 6928 §2: IW = min(10*MSS, max(2*MSS, 14600)) bytes."""
    return min(10 * mss, max(2 * mss, 14600))


class CongestionControl:
    """Base class: NewReno window arithmetic (RFC 5681) that subclasses refine.

    Subclasses override ``_congestion_avoidance`` and the ``_reduce_*`` hooks and
    extend ``_snapshot``/``_restore`` with their own state for undo.
    """

    #: RFC 3465 ABC limit L in segments per ACK during slow start, or None to count every
    #: acknowledged byte (as Linux does). tou's receivers acknowledge once per receive
    #: batch, so stretch ACKs are normal and a per-ACK limit would stall slow start;
    #: pacing, not L, is what keeps the resulting bursts in check.
    abc_limit: int | None = None

    name = "base"

    wants_rate_samples = False
    manages_recovery = False
    requires_pacing = False
    supports_hystart = True
    pacing_rate = 0.0
    want_app_limited = False

    def queue_standing(self) -> bool:
        """True when the controller's model shows a standing queue at the bottleneck
        (BBR); the pacer then catches up less after a late timer. Loss-based: never."""
        return False

    def __init__(self, mss: int, now: float, initial_window: int | None = None) -> None:
        if mss <= 0:
            raise LocalError(f"mss must be positive, got {mss!r}")
        if initial_window is not None and initial_window < mss:
            raise LocalError(f"initial_window must be at least one MSS ({mss}), got {initial_window!r}")
        self.mss = mss
        self._iw_explicit = initial_window is not None
        self.cwnd: int = initial_window if initial_window is not None else rfc6928_initial_window(mss)
        self.ssthresh: int = INITIAL_SSTHRESH
        self.in_recovery = False
        self._bytes_acked = 0            # RFC 3465 §2.1 counter for congestion avoidance
        self._after_rto = False          # slow start following an RTO: ABC L = 1*SMSS
        self._rto_episode = False        # an RTO happened and no new data was acked since
        self._touched = False            # any event seen (IW recomputed on set_mss until then)
        self._undo: dict[str, Any] | None = None
        self._clock_mark = now           # last time the controller saw an ack or a send
        self.hystart: HyStart | None = None   # RFC 9406, attached by the engine when enabled

    # ------------------------------------------------------------------ queries

    @property
    def in_slow_start(self) -> bool:
        """cwnd < ssthresh (RFC 5681 §3.1)."""
        return self.cwnd < self.ssthresh

    def stats(self) -> dict:
        """Snapshot for logs and ``tou stats``; subclasses add their own fields."""
        return {
            "name": self.name,
            "mss": self.mss,
            "cwnd": self.cwnd,
            "ssthresh": self.ssthresh,
            "in_recovery": self.in_recovery,
            "in_slow_start": self.in_slow_start,
            "hystart_css": bool(self.hystart and self.hystart.css),
        }

    # ------------------------------------------------------------------ events

    def on_ack(self, acked: int, now: float, rtt: float | None, in_flight: int,
               app_limited: bool = False) -> None:
        """``acked`` new bytes were acknowledged outside loss recovery (RFC 5681 §3.1)."""
        if acked > 0:
            self._touched = True
            self._rto_episode = False
        self._on_ack_time(now, rtt, app_limited)
        self._clock_mark = now
        if acked <= 0 or app_limited or self.in_recovery:
            return
        if self.cwnd < self.ssthresh:
            acked = self._slow_start(acked)
            if acked <= 0:
                return
        self._congestion_avoidance(acked, now)

    def _on_ack_time(self, now: float, rtt: float | None, app_limited: bool) -> None:
        """Hook: subclasses track time (CUBIC's clock) before the window math."""

    def _slow_start(self, acked: int) -> int:
        """RFC 5681 §3.1 + RFC 3465 ABC; returns acked bytes left over past ssthresh."""
        if self.abc_limit is None:
            inc = acked
        else:
            limit = (1 if self._after_rto else self.abc_limit) * self.mss
            inc = acked if acked < limit else limit
        hs = self.hystart
        if hs is not None and hs.css:
            inc //= hs.growth_divisor   # RFC 9406 §4.2: Conservative Slow Start
        room = self.ssthresh - self.cwnd
        if inc < room:
            self.cwnd = min(self.cwnd + inc, MAX_CWND)
            return 0
        # reached ssthresh: the rest of this ACK counts toward congestion avoidance
        self.cwnd = min(self.ssthresh, MAX_CWND)
        self._after_rto = False
        return acked - room

    def _congestion_avoidance(self, acked: int, now: float) -> None:
        """RFC 5681 §3.1 / RFC 3465 §2.1: +1 SMSS per cwnd of acknowledged bytes."""
        self._bytes_acked += acked
        if self._bytes_acked >= self.cwnd:
            self._bytes_acked -= self.cwnd
            if self._bytes_acked >= self.cwnd:   # a huge stretch ACK: do not bank credit
                self._bytes_acked = 0
            self.cwnd = min(self.cwnd + self.mss, MAX_CWND)

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """Loss found by fast retransmit / SACK / RACK: enter recovery and reduce once."""
        self._touched = True
        if self.in_recovery:
            return
        if self.hystart is not None:
            self.hystart.stop()
        self._undo = self._snapshot()
        self.in_recovery = True
        self._after_rto = False
        self._bytes_acked = 0
        self._reduce_on_loss(now, in_flight)

    def _reduce_on_loss(self, now: float, in_flight: int) -> None:
        """RFC 5681 §3.2 step 2 (eq. 4); cwnd = ssthresh (the engine does recovery)."""
        self.ssthresh = self._half_flight(self.reduction_base(in_flight))
        self.cwnd = self.ssthresh

    def on_recovery_exit(self, now: float) -> None:
        """Recovery is over: deflate cwnd to ssthresh (RFC 5681 §3.2 step 6)."""
        if not self.in_recovery:
            return
        self.in_recovery = False
        self.cwnd = max(self.ssthresh, self.mss)
        self._clock_mark = now

    def on_rto(self, now: float, in_flight: int) -> None:
        """Retransmission timeout: ssthresh per RFC 5681 §3.1 eq. 4, cwnd = loss window."""
        self._touched = True
        if self.hystart is not None:
            self.hystart.stop()
        if not self._rto_episode:
            if not self.in_recovery:
                # keep the pre-recovery snapshot if the RTO interrupts a recovery
                self._undo = self._snapshot()
            self._reduce_on_rto(now, in_flight)
        # else: the retransmission timed out again; ssthresh is held (RFC 5681 §3.1)
        self._rto_episode = True
        self.in_recovery = False
        self._after_rto = True
        self._bytes_acked = 0
        self.cwnd = self.mss   # loss window LW = 1 SMSS (RFC 5681 §3.1)

    def _reduce_on_rto(self, now: float, in_flight: int) -> None:
        """RFC 5681 §3.1 eq. 4 on the first timeout of an episode."""
        self.ssthresh = self._half_flight(in_flight)

    def on_spurious_congestion(self, now: float) -> None:
        """Undo the last reduction: restore cwnd/ssthresh (and subclass state) saved then."""
        snap = self._undo
        if snap is None:
            return
        self._undo = None
        self.in_recovery = False
        self._rto_episode = False
        self._after_rto = False
        self._restore(snap)
        self._clock_mark = now

    def on_send(self, now: float, in_flight: int) -> None:
        """Optional: call before sending new data; ``in_flight`` excludes that data.

        With nothing in flight, the time since the last ack or send was idle.
        """
        if in_flight == 0:
            idle = now - self._clock_mark
            if idle > 0:
                self._on_idle(now, idle)
        self._clock_mark = now

    def on_rtt_sample(self, rtt: float, now: float, ack: int, snd_nxt: int) -> None:
        """One RTT sample taken in slow start, with the ACK and SND.NXT offsets
        (HyStart++ counts rounds with them, RFC 9406 §4.2)."""
        hs = self.hystart
        if hs is not None and not hs.done and self.cwnd < self.ssthresh and not self.in_recovery:
            if hs.on_rtt_sample(rtt, ack, snd_nxt):
                self.ssthresh = self.cwnd   # RFC 9406 §4.2: CSS_ROUNDS done: congestion avoidance

    def on_rate_sample(self, rs: Any, now: float, in_flight: int) -> None:
        """After each ACK: the delivery-rate sample and the bytes now in the network.

        Only called when ``wants_rate_samples`` is true; the default does nothing.
        """

    def _on_idle(self, now: float, idle: float) -> None:
        """Hook: the connection sent nothing and had nothing in flight for ``idle`` s."""

    def set_mss(self, mss: int) -> None:
        """The sender MSS changed (negotiation, PMTUD).

        Byte counts are kept; before any event, a default initial window is
        recomputed for the new MSS (RFC 6928). cwnd never drops below 1 MSS.
        """
        if mss <= 0:
            raise LocalError(f"mss must be positive, got {mss!r}")
        self.mss = mss
        if not self._touched and not self._iw_explicit:
            self.cwnd = rfc6928_initial_window(mss)
        if self.cwnd < mss:
            self.cwnd = mss

    def set_initial_window(self, cwnd: int) -> None:
        """The engine's initial window (RFC 6928 in segments of the negotiated MSS)."""
        self.cwnd = max(cwnd, self.mss)

    # ------------------------------------------------------------------ helpers

    def reduction_base(self, in_flight: int) -> int:
        """FlightSize for a fast-recovery reduction, never above cwnd (RFC 9438 §4.6
        allows cwnd; Linux uses it).

        With SACK the sender keeps its pipe (RFC 6675), not SND.NXT - SND.UNA, at
        cwnd: when a recovery begins soon after another, the data SACKed above the
        old holes makes FlightSize much larger than cwnd, and a "reduction" from it
        raised cwnd. Under random loss the window then climbed round after round to
        the buffer's limit (CUBIC at 5 % loss, 100 ms: 15-22 Mbit/s with 11 % resent
        on the emulated path, where kernel CUBIC gets about 1).
        """
        return in_flight if in_flight < self.cwnd else self.cwnd

    def _half_flight(self, in_flight: int) -> int:
        """RFC 5681 eq. 4: max(FlightSize / 2, 2*SMSS)."""
        return max(in_flight // 2, 2 * self.mss)

    def _snapshot(self) -> dict[str, Any]:
        return {"cwnd": self.cwnd, "ssthresh": self.ssthresh, "bytes_acked": self._bytes_acked}

    def _restore(self, snap: dict[str, Any]) -> None:
        # Never lower what has been regained meanwhile (as Linux's undo does).
        self.cwnd = max(self.cwnd, snap["cwnd"])
        self.ssthresh = max(self.ssthresh, snap["ssthresh"])
        self._bytes_acked = snap["bytes_acked"]

