"""Round-trip time estimation and the retransmission timeout (RFC 6298, RFC 7323 App. G).

Sans-I/O: every sample arrives with the caller's ``now``; nothing reads a clock.

* RFC 6298 §2.1: before any sample the RTO is ``initial_rto``.
* RFC 6298 §2.2: the first sample R sets SRTT = R, RTTVAR = R/2.
* RFC 6298 §2.3: later samples update RTTVAR (with the old SRTT) and then SRTT,
  alpha = 1/8, beta = 1/4; RTO = SRTT + max(G, K*RTTVAR) with K = 4.
* RFC 6298 §2.4/§2.5: the RTO is clamped to [min_rto, max_rto]. ``min_var`` (0
  by default) is the least variance term, Linux's way: with Linux's 200 ms the RTO
  keeps 200 ms of slack over SRTT on a long path too.
* RFC 6298 §5.5: every expiry doubles the RTO ("backoff"), still clamped to
  max_rto. A fresh, valid sample collapses the backoff (Karn's algorithm: the
  caller only passes samples that are unambiguous, e.g. from timestamps or from
  segments that were never retransmitted).
* RFC 9040 §5-6 (TCB sharing of RTT): a new connection to a peer that another
  connection has measured may start from that connection's SRTT and RTTVAR
  (:meth:`RttEstimator.seed`). Only the RTO before the first sample comes from
  them, as in Linux's tcp_init_metrics; the first sample of its own still sets
  SRTT and RTTVAR as §2.2 says.
* RFC 7323 Appendix G: with timestamps, many samples arrive per RTT; the caller
  passes ``samples_per_window`` = ExpectedSamples = ceil(FlightSize / (2*SMSS))
  and alpha, beta are divided by it, so SRTT/RTTVAR still move about as much
  per round trip as with one sample per RTT.

``min_rtt`` is a windowed minimum over roughly the last 300 s of samples (as
Linux's ``tcp_min_rtt_wlen``), kept in a few time buckets: a sample leaves the
minimum between 300 s and 330 s after it was taken.
"""

from __future__ import annotations

from typing import Final

from .errors import LocalError

ALPHA: Final = 1.0 / 8.0   # RFC 6298 §2.3
BETA: Final = 1.0 / 4.0    # RFC 6298 §2.3
K: Final = 4.0             # RFC 6298 §2.2

MIN_RTT_WINDOW: Final = 300.0   # seconds of samples the min_rtt filter remembers
MIN_RTT_BUCKETS: Final = 10     # buckets of MIN_RTT_WINDOW / MIN_RTT_BUCKETS seconds each

SYN_FALLBACK_RTO: Final = 3.0   # RFC 6298 §5.7

_MAX_SHIFT: Final = 62          # caps 2**backoffs; the clamp to max_rto applies long before


class RttEstimator:
    """SRTT, RTTVAR, RTO with exponential backoff, and a windowed min-RTT (seconds)."""

    __slots__ = (
        "initial_rto", "min_rto", "max_rto", "granularity", "min_var",
        "srtt", "rttvar", "latest", "min_rtt",
        "_base_rto", "_backoffs", "_bucket_width", "_buckets",
    )

    def __init__(
        self,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 60.0,
        granularity: float = 0.001,
        min_var: float = 0.0,
    ) -> None:
        if not (0.0 < min_rto <= max_rto):
            raise LocalError(f"need 0 < min_rto <= max_rto, got {min_rto!r}, {max_rto!r}")
        if not initial_rto > 0.0:
            raise LocalError(f"initial_rto must be positive, got {initial_rto!r}")
        if not granularity >= 0.0:
            raise LocalError(f"granularity must be >= 0, got {granularity!r}")
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.min_var = max(min_var, granularity)
        self.srtt: float | None = None
        self.rttvar: float = 0.0
        self.latest: float | None = None
        self.min_rtt: float | None = None
        self._base_rto = self._clamp(initial_rto)   # RTO before backoff (RFC 6298 §2.1)
        self._backoffs = 0
        self._bucket_width = MIN_RTT_WINDOW / MIN_RTT_BUCKETS
        # [bucket start time, min sample in bucket], oldest first
        self._buckets: list[list[float]] = []

    def _clamp(self, rto: float) -> float:
        if rto < self.min_rto:
            return self.min_rto
        if rto > self.max_rto:
            return self.max_rto
        return rto

    @property
    def rto(self) -> float:
        """Current RTO in seconds, backoff included, within [min_rto, max_rto]."""
        if self._backoffs == 0:
            return self._base_rto
        rto = self._base_rto * (1 << min(self._backoffs, _MAX_SHIFT))
        return rto if rto < self.max_rto else self.max_rto

    @property
    def backoffs(self) -> int:
        """Number of consecutive RTO backoffs since the last valid sample or reset."""
        return self._backoffs

    def seed(self, srtt: float, rttvar: float) -> None:
        """Before any sample: take the RTO the path's SRTT and RTTVAR, measured by another
        connection to the same peer, give (RFC 9040 §5 and §6) instead of ``initial_rto``."""
        if not (srtt >= 0.0 and rttvar >= 0.0):
            raise LocalError(f"need srtt, rttvar >= 0, got {srtt!r}, {rttvar!r}")
        if self.srtt is None and self._backoffs == 0:
            var_term = K * rttvar
            self._base_rto = self._clamp(srtt + (var_term if var_term > self.min_var else self.min_var))

    def on_sample(self, rtt: float, now: float, samples_per_window: int = 1) -> None:
        """Feed one valid RTT measurement ``rtt`` (seconds) taken at ``now``.

        RFC 6298 §2.2 (first sample) / §2.3 (later samples); RFC 7323 App. G:
        alpha and beta are divided by ``samples_per_window`` (>= 1). A sample
        also collapses any backoff (RFC 6298 §5.7 note / Karn).
        """
        if not rtt >= 0.0:   # also rejects NaN
            raise LocalError(f"RTT sample must be >= 0, got {rtt!r}")
        if samples_per_window < 1:
            raise LocalError(f"samples_per_window must be >= 1, got {samples_per_window!r}")
        self.latest = rtt
        srtt = self.srtt
        if srtt is None:
            srtt = rtt
            self.rttvar = rtt / 2.0
        else:
            alpha = ALPHA / samples_per_window
            beta = BETA / samples_per_window
            # RTTVAR first, with the SRTT from before this sample (RFC 6298 §2.3).
            self.rttvar = (1.0 - beta) * self.rttvar + beta * abs(srtt - rtt)
            srtt = (1.0 - alpha) * srtt + alpha * rtt
        self.srtt = srtt
        var_term = K * self.rttvar
        floor = self.min_var     # RFC 6298: G; Linux: rto_min (so a recovery's head retransmission fits)
        self._base_rto = self._clamp(srtt + (var_term if var_term > floor else floor))
        self._backoffs = 0
        self._update_min(rtt, now)

    def _update_min(self, rtt: float, now: float) -> None:
        """Windowed minimum: buckets of ``MIN_RTT_WINDOW / MIN_RTT_BUCKETS`` seconds."""
        buckets = self._buckets
        width = self._bucket_width
        if buckets and now < buckets[-1][0] + width:
            last = buckets[-1]
            if rtt < last[1]:
                last[1] = rtt
        else:
            buckets.append([now, rtt])
        # drop buckets whose every sample is older than the window
        horizon = now - MIN_RTT_WINDOW
        while buckets[0][0] + width <= horizon:
            del buckets[0]
        best = buckets[0][1]
        for b in buckets:
            if b[1] < best:
                best = b[1]
        self.min_rtt = best

    def backoff(self) -> None:
        """The retransmission timer expired: double the RTO (RFC 6298 §5.5), clamped to max_rto."""
        self._backoffs += 1

    def reset_backoff(self) -> None:
        """Forget the backoff; the RTO goes back to the estimate from SRTT/RTTVAR."""
        self._backoffs = 0

    def fallback_after_syn_timeout(self) -> None:
        """RFC 6298 §5.7: SYN (or SYN-ACK) timed out and no RTT sample exists: use 3 s.

        Call when data transmission begins after a handshake that needed a
        retransmission. Does nothing once a sample has been taken.
        """
        if self.srtt is None:
            self._base_rto = self._clamp(max(self._base_rto, SYN_FALLBACK_RTO))
            self._backoffs = 0
