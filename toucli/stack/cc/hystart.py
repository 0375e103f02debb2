"""HyStart++: leaving slow start before it overflows the bottleneck queue (RFC 9406).

Slow start doubles the window every round trip until a loss, which on a path
with a deep buffer means a burst of losses one RTT after the queue filled.
HyStart++ watches the minimum RTT of each round (RFC 9406 §4.2): when it rises
by more than ``RttThresh`` (an eighth of the previous round's, clamped to
[4, 16] ms) the sender enters Conservative Slow Start (CSS), growing at a
quarter of the slow-start rate; if the RTT falls back below the baseline the
increase was spurious and slow start resumes; after ``CSS_ROUNDS`` rounds of
CSS it goes to congestion avoidance (ssthresh = cwnd).

The controller feeds :meth:`HyStart.on_rtt_sample` with each RTT sample taken
in slow start, with the acknowledged offset and SND.NXT so rounds can be
counted (a round ends when the ACK passes the SND.NXT recorded at its start).
Only the first slow start of a connection uses it (§4.3 recommends standard
slow start after a timeout; its ssthresh already bounds that one).
"""

from __future__ import annotations

from typing import Final

MIN_RTT_THRESH: Final = 0.004      # RFC 9406 §4.3
MAX_RTT_THRESH: Final = 0.016
MIN_RTT_DIVISOR: Final = 8
N_RTT_SAMPLE: Final = 8
CSS_GROWTH_DIVISOR: Final = 4
CSS_ROUNDS: Final = 5

_INF: Final = float("inf")


class HyStart:
    """RFC 9406 §4.2 state; ``css`` is true while in Conservative Slow Start."""

    __slots__ = ("window_end", "last_round_min_rtt", "current_round_min_rtt", "rtt_sample_count",
                 "css", "css_baseline_min_rtt", "css_rounds", "done")

    def __init__(self) -> None:
        self.window_end: int | None = None
        self.last_round_min_rtt = _INF
        self.current_round_min_rtt = _INF
        self.rtt_sample_count = 0
        self.css = False
        self.css_baseline_min_rtt = _INF
        self.css_rounds = 0
        self.done = False

    @property
    def growth_divisor(self) -> int:
        """Divide slow-start growth by this (RFC 9406 §4.2: CSS_GROWTH_DIVISOR in CSS)."""
        return CSS_GROWTH_DIVISOR if self.css else 1

    def on_rtt_sample(self, rtt: float, ack: int, snd_nxt: int) -> bool:
        """One RTT sample in slow start; True when slow start should end (ssthresh = cwnd)."""
        if self.done:
            return False
        if self.window_end is None or ack >= self.window_end:
            # a new round begins (RFC 9406 §4.2)
            self.window_end = snd_nxt
            self.last_round_min_rtt = self.current_round_min_rtt
            self.current_round_min_rtt = _INF
            self.rtt_sample_count = 0
            if self.css:
                self.css_rounds += 1
                if self.css_rounds >= CSS_ROUNDS:
                    self.css = False
                    self.done = True
                    return True
        if rtt < self.current_round_min_rtt:
            self.current_round_min_rtt = rtt
        self.rtt_sample_count += 1
        if self.rtt_sample_count < N_RTT_SAMPLE:
            return False
        cur, last = self.current_round_min_rtt, self.last_round_min_rtt
        if not self.css:
            if cur == _INF or last == _INF:
                return False
            thresh = last / MIN_RTT_DIVISOR
            thresh = MIN_RTT_THRESH if thresh < MIN_RTT_THRESH else MAX_RTT_THRESH if thresh > MAX_RTT_THRESH else thresh
            if cur >= last + thresh:
                self.css = True
                self.css_baseline_min_rtt = cur
                self.css_rounds = 0
        elif cur < self.css_baseline_min_rtt:
            # the RTT increase was spurious: back to slow start (RFC 9406 §4.2)
            self.css = False
            self.css_baseline_min_rtt = _INF
        return False

    def stop(self) -> None:
        """Slow start ended some other way (loss, timeout): HyStart++ is finished."""
        self.css = False
        self.done = True
