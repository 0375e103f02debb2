"""A token-bucket pacer driven by the caller's ``now`` (no clock, no thread).

Pacing spreads a congestion window over the round trip instead of sending it
as one line-rate burst (RFC 9002 §7.7 for the reasoning; Linux's internal TCP
pacing for the numbers). The rate is set by the engine, ``gain * cwnd / SRTT``
with gain 2 in slow start and 1.2 in congestion avoidance, or by the
congestion controller itself (BBR).

The bucket holds at most one *quantum*: about ``QUANTUM_TIME`` worth of bytes
at the current rate, between ``MIN_SEGMENTS`` and ``MAX_SEGMENTS`` segments.
A sender that ran the bucket dry waits until a whole quantum has accrued, so
each wake-up releases a small burst rather than one segment (4 segments at low
rates, up to ~64 KB at Gbit/s rates): a Python runtime pays its per-wake-up
cost once per quantum instead of once per segment. A sender that was idle starts
with a full bucket, so an interactive write goes out at once.
"""

from __future__ import annotations

QUANTUM_TIME = 0.001     # seconds of data per release (Linux: sk_pacing_shift 10, ~1 ms)
MIN_SEGMENTS = 4         # never fewer than four segments per release (two cost ~10-30 % goodput at high loss in netsim)
MAX_SEGMENTS = 44        # nor more than ~64 KB (Linux caps a TSO burst there); fewer cost 5-15 % in bench/engine.py


class Pacer:
    """Token bucket: ``tokens`` bytes may leave now; it refills at ``rate`` bytes/s."""

    __slots__ = ("rate", "tokens", "quantum", "stamp")

    def __init__(self) -> None:
        self.rate = 0.0           # bytes per second; 0 = not pacing
        self.tokens = 0.0
        self.quantum = 0.0
        self.stamp: float | None = None

    def refill(self, now: float, rate: float, mss: int) -> None:
        """Set the rate and add what accrued since the last call (up to one quantum)."""
        q = rate * QUANTUM_TIME
        lo = MIN_SEGMENTS * mss
        hi = MAX_SEGMENTS * mss
        q = lo if q < lo else hi if q > hi else q
        self.quantum = q
        stamp = self.stamp
        if stamp is None:
            self.tokens = q
        elif now > stamp:
            t = self.tokens + (now - stamp) * self.rate
            self.tokens = q if t > q else t
        self.rate = rate
        self.stamp = now

    def consume(self, nbytes: int) -> None:
        self.tokens -= nbytes

    def release_time(self, now: float) -> float:
        """When a whole quantum will have accrued (the next time to try sending)."""
        need = self.quantum - self.tokens
        if need <= 0 or self.rate <= 0:
            return now
        return now + need / self.rate
