"""A token-bucket pacer driven by the caller's ``now`` (no clock, no thread).

Pacing spreads a congestion window over the round trip instead of sending it
as one line-rate burst (RFC 9002 §7.7 for the reasoning; Linux's internal TCP
pacing for the numbers). The rate is set by the engine, ``gain * cwnd / SRTT``
with gain 2 in slow start and 1.2 in congestion avoidance, or by the
congestion controller itself (BBR).

A *quantum* is about ``QUANTUM_TIME`` worth of bytes at the current rate,
between ``MIN_SEGMENTS`` and ``MAX_SEGMENTS`` segments. A sender that ran the
bucket dry waits until a whole quantum has accrued, so each wake-up releases a
small burst rather than one segment (4 segments at low rates, up to ~64 KB at
Gbit/s rates): a Python runtime pays its per-wake-up cost once per quantum
instead of once per segment. The bucket holds one quantum, plus, after a wait for
pacing, what accrued after the release time it was waiting for (up to
``LATE_CREDIT`` more quanta): a wake-up that comes late still sends at the rate.
An event loop's timers do come late: on an emulated 100 Mbit/s path, by 0.3 ms at
the median, 1.4 ms at the 90th percentile and 4-6 ms at the 99th. Without credit
the paced rate fell by a fifth to a third. With one quantum of credit, 3.7 % of
what the rate allowed was lost, and with BBR pacing at the bottleneck's rate the
link went idle by as much. When the sender sees a standing queue (``queued``) the
credit stays one quantum: the queue kept the link busy, and catching up only
overflowed it (on the emulated 20 ms path, 5 % retransmitted at 1 % loss instead
of 2 %). The credit is bounded in bytes too (``LATE_CREDIT_BYTES``): at Gbit/s
rates eight quanta would be megabytes at once, more than a receiver's socket
buffer takes, so there it stays about one quantum. A sender that was idle starts
with one quantum, so an interactive write goes out at once.
"""

from __future__ import annotations

from typing import Final

QUANTUM_TIME: Final = 0.001     # seconds of data per release (Linux: sk_pacing_shift 10, ~1 ms)
MIN_SEGMENTS: Final = 4         # never fewer than four segments per release (two cost ~10-30 % goodput at high loss in netsim)
LATE_CREDIT: Final = 8          # quanta a late wake-up may catch up (covers the 99th percentile above)
LATE_CREDIT_BYTES: Final = 128 << 10   # ... but never more bytes at once than this (fast paths: about one quantum)
MAX_SEGMENTS: Final = 44        # nor more than ~64 KB (Linux caps a TSO burst there); fewer cost 5-15 % in bench/engine.py


class Pacer:
    """Token bucket: ``tokens`` bytes may leave now; it refills at ``rate`` bytes/s."""

    __slots__ = ("rate", "tokens", "quantum", "stamp", "due")

    def __init__(self) -> None:
        self.rate = 0.0           # bytes per second; 0 = not pacing
        self.tokens = 0.0
        self.quantum = 0.0
        self.stamp: float | None = None
        self.due: float | None = None   # the release time last handed out by release_time()

    def refill(self, now: float, rate: float, mss: int, queued: bool = False) -> None:
        """Set the rate and add what accrued since the last call (up to one quantum,
        more after a late wake-up).

        ``queued``: the sender sees a standing queue at the bottleneck (BBR: its RTT
        samples are above RTprop). The queue kept the link busy while the timer was
        late, so catching up would only overflow it: the credit is one quantum."""
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
            cap = q
            due = self.due
            if due is not None and now > due:   # a late wake-up keeps what accrued since it was due
                late = (now - due) * self.rate
                credit = LATE_CREDIT * q
                if credit > LATE_CREDIT_BYTES:
                    credit = q if q > LATE_CREDIT_BYTES else LATE_CREDIT_BYTES
                if queued and credit > q:
                    credit = q
                cap += credit if late > credit else late
            self.tokens = cap if t > cap else t
        self.due = None
        self.rate = rate
        self.stamp = now

    def consume(self, nbytes: int) -> None:
        self.tokens -= nbytes

    def release_time(self, now: float) -> float:
        """When a whole quantum will have accrued (the next time to try sending)."""
        need = self.quantum - self.tokens
        if need <= 0 or self.rate <= 0:
            return now
        self.due = now + need / self.rate
        return self.due
