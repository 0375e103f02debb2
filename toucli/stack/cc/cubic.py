"""CUBIC congestion control (RFC 9438).

The window curve is in segments, as in the RFC: W_cubic(t) = C*(t - K)^3 + W_max
(§4.2, eq. 1) with C = 0.4, and K = cbrt((W_max - cwnd_epoch) / C) (eq. 2).
Here every window is kept in bytes and the curve is scaled by the MSS.

* §4.2: t is the time since the current congestion-avoidance stage (epoch)
  began; the epoch starts at the first ACK processed in congestion avoidance
  after a reduction (or after slow start).
* §4.3: Reno-friendly estimate W_est grows by alpha_cubic per window of ACKs,
  alpha_cubic = 3*(1-beta)/(1+beta), and by 1 once W_est >= cwnd_prior; when
  W_cubic(t) < W_est, cwnd follows W_est.
* §4.4/§4.5: otherwise (concave below W_max, convex above) the target is
  W_cubic(t + RTT) clamped to [cwnd, 1.5*cwnd], and each ACK of one segment
  adds (target - cwnd)/cwnd segments.
* §4.6: on loss, ssthresh = max(flight_size * beta, 2 SMSS) with beta = 0.7
  (flight_size at most cwnd, ``reduction_base``),
  cwnd = ssthresh; §4.7 fast convergence: a loss below the previous W_max sets
  W_max = cwnd * (1 + beta) / 2.
* §4.8: on a timeout, ssthresh as in §4.6, cwnd = 1 SMSS; the first epoch after
  it starts on its own plateau: K = 0, W_max = cwnd at the start of the epoch.
* §4.9: a spurious reduction restores cwnd, ssthresh, W_max, K, the epoch
  start and W_est saved when it happened.
* Idle (like Linux's CA_EVENT_TX_START): time with nothing in flight, and the
  time between application-limited ACKs, is cut out of t by moving the epoch
  start forward, so the curve does not leap after a quiet period.

When the epoch starts with cwnd at or above W_max (first congestion avoidance
ever, or after an undo) the curve starts on the plateau (K = 0, origin = cwnd)
as Linux does, rather than deep in the convex region.

RTT is whatever the engine passes to ``on_ack`` (its min_rtt or srtt); the
last value given is kept for ACKs that carry none.
"""

from __future__ import annotations

import math
from typing import Final, Any

from .base import MAX_CWND, CongestionControl

C: Final = 0.4                                   # RFC 9438 §5 (segments / s^3)
BETA: Final = 0.7                                # RFC 9438 §4.6
ALPHA = 3.0 * (1.0 - BETA) / (1.0 + BETA)  # RFC 9438 §4.3


def _beta_of(nbytes: int) -> int:
    """beta_cubic * nbytes, rounded to the nearest byte (0.7 is not exact in binary)."""
    return int(nbytes * BETA + 0.5)


def cubic_k(w_max: float, cwnd_epoch: float) -> float:
    """RFC 9438 eq. 2 (segments in, seconds out); real cube root, sign kept."""
    return math.cbrt((w_max - cwnd_epoch) / C)


class Cubic(CongestionControl):
    """RFC 9438 CUBIC with fast convergence and the Reno-friendly region."""

    name = "cubic"

    def __init__(self, mss: int, now: float, initial_window: int | None = None,
                 fast_convergence: bool = True) -> None:
        super().__init__(mss, now, initial_window)
        self.fast_convergence = fast_convergence
        self.w_max = 0.0            # bytes: window just before the last reduction (after §4.7)
        self.cwnd_prior = 0.0       # bytes: cwnd just before the last reduction
        self.k = 0.0                # seconds
        self.origin = 0.0           # bytes: plateau of the current curve (W_max, or cwnd at epoch start)
        self.epoch_start: float | None = None
        self.cwnd_epoch = 0.0       # bytes: cwnd when the epoch began
        self.w_est = 0.0            # bytes: Reno-friendly estimate (§4.3)
        self.region = "slow-start"
        self._rtt = 0.0
        self._acc = 0.0             # fractional bytes of growth not yet added to cwnd
        self._plateau_next = False  # next epoch starts with K = 0 (§4.8)

    # -------------------------------------------------------------- curve

    def w_cubic(self, t: float) -> float:
        """RFC 9438 eq. 1 in bytes, for t seconds into the current epoch."""
        d = t - self.k
        return self.origin + self.mss * C * d * d * d

    def _start_epoch(self, now: float) -> None:
        cw = float(self.cwnd)
        self.epoch_start = now
        self.cwnd_epoch = cw
        self.w_est = cw
        self._acc = 0.0
        if self._plateau_next:
            self.w_max = cw            # §4.8
        self._plateau_next = False
        if self.w_max <= cw:
            self.origin = cw
            self.k = 0.0
        else:
            self.origin = self.w_max
            self.k = cubic_k(self.w_max / self.mss, cw / self.mss)

    # -------------------------------------------------------------- hooks

    def _on_ack_time(self, now: float, rtt: float | None, app_limited: bool) -> None:
        if rtt is not None and rtt >= 0.0:
            self._rtt = rtt
        if app_limited and self.epoch_start is not None:
            gap = now - self._clock_mark
            if gap > 0:
                self.epoch_start = min(self.epoch_start + gap, now)

    def _on_idle(self, now: float, idle: float) -> None:
        if self.epoch_start is not None:
            self.epoch_start = min(self.epoch_start + idle, now)

    def _slow_start(self, acked: int) -> int:
        self.region = "slow-start"
        return super()._slow_start(acked)

    def _congestion_avoidance(self, acked: int, now: float) -> None:
        if self.epoch_start is None:
            self._start_epoch(now)
        assert self.epoch_start is not None
        cwnd = self.cwnd
        t = now - self.epoch_start
        # §4.3 Reno-friendly estimate
        alpha = 1.0 if self.w_est >= self.cwnd_prior else ALPHA
        self.w_est += alpha * acked * self.mss / cwnd
        if self.w_cubic(t) < self.w_est:
            self.region = "reno-friendly"
            est = int(self.w_est)
            if est > cwnd:
                self.cwnd = min(est, MAX_CWND)
            return
        # §4.4 concave / §4.5 convex
        self.region = "concave" if cwnd < self.origin else "convex"
        target = self.w_cubic(t + self._rtt)
        if target < cwnd:
            target = float(cwnd)
        elif target > 1.5 * cwnd:
            target = 1.5 * cwnd
        self._acc += (target - cwnd) * acked / cwnd
        if self._acc >= 1.0:
            inc = int(self._acc)
            self._acc -= inc
            self.cwnd = min(cwnd + inc, MAX_CWND)

    def _reduce_on_loss(self, now: float, in_flight: int) -> None:
        """§4.6 multiplicative decrease with §4.7 fast convergence."""
        cw = float(self.cwnd)
        if self.fast_convergence and cw < self.w_max:
            self.w_max = cw * (1.0 + BETA) / 2.0
        else:
            self.w_max = cw
        self.cwnd_prior = cw
        self.ssthresh = max(_beta_of(self.reduction_base(in_flight)), 2 * self.mss)
        self.cwnd = self.ssthresh
        self.epoch_start = None
        self.region = "recovery"

    def _reduce_on_rto(self, now: float, in_flight: int) -> None:
        """§4.8: ssthresh with beta_cubic; the next epoch starts on a plateau."""
        self.cwnd_prior = float(self.cwnd)
        self.ssthresh = max(_beta_of(in_flight), 2 * self.mss)
        self.epoch_start = None
        self._plateau_next = True
        self.region = "slow-start"

    def on_recovery_exit(self, now: float) -> None:
        super().on_recovery_exit(now)
        if self.region == "recovery":
            self.region = "slow-start" if self.in_slow_start else "congestion-avoidance"

    def set_mss(self, mss: int) -> None:
        super().set_mss(mss)
        # K is in segment units: restart the curve from the current window.
        self.epoch_start = None

    # -------------------------------------------------------------- undo / stats

    def _snapshot(self) -> dict[str, Any]:
        snap = super()._snapshot()
        snap.update(
            w_max=self.w_max, cwnd_prior=self.cwnd_prior, k=self.k, origin=self.origin,
            epoch_start=self.epoch_start, cwnd_epoch=self.cwnd_epoch, w_est=self.w_est,
            region=self.region, acc=self._acc, plateau_next=self._plateau_next,
        )
        return snap

    def _restore(self, snap: dict[str, Any]) -> None:
        super()._restore(snap)
        self.w_max = snap["w_max"]
        self.cwnd_prior = snap["cwnd_prior"]
        self.k = snap["k"]
        self.origin = snap["origin"]
        self.epoch_start = snap["epoch_start"]
        self.cwnd_epoch = snap["cwnd_epoch"]
        self.w_est = snap["w_est"]
        self.region = snap["region"]
        self._acc = snap["acc"]
        self._plateau_next = snap["plateau_next"]

    def stats(self) -> dict:
        d = super().stats()
        d.update(
            w_max=int(self.w_max),
            k=self.k,
            w_est=int(self.w_est),
            cwnd_prior=int(self.cwnd_prior),
            epoch_start=self.epoch_start,
            region=self.region,
        )
        return d
