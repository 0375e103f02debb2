"""Delivery rate samples (draft-cheng-iccrg-delivery-rate-estimation-02).

The engine keeps the connection-level variables (C.delivered, C.delivered_time,
C.first_sent_time, C.app_limited) and, per transmission, the snapshot of them in
:class:`~toucli.stack.scoreboard.SentLog`. On each ACK it folds every newly
delivered transmission into one :class:`RateSample` with :meth:`RateSample.take`
(§3.3 UpdateRateSample: the most recently *sent* of them gives the interval),
then calls :meth:`RateSample.finish` (§3.3 GenerateRateSample) and hands the
sample to the congestion controller's ``on_rate_sample``.

One RateSample object lives per connection and is reset for every ACK: no
allocation on the ACK path.
"""

from __future__ import annotations


class RateSample:
    """What one ACK says about the delivery rate (the draft's ``rs``), bytes and seconds."""

    __slots__ = ("prior_delivered", "prior_time", "send_elapsed", "ack_elapsed", "is_app_limited",
                 "delivered", "interval", "delivery_rate", "rtt", "acked_sacked", "losses",
                 "prior_in_flight", "delivered_total", "valid", "_xmit_ts", "_end")

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, prior_in_flight: int) -> None:
        """Start a new ACK: nothing delivered yet."""
        self.prior_delivered = 0
        self.prior_time: float | None = None   # P.delivered_time of the newest delivered transmission
        self.send_elapsed = 0.0
        self.ack_elapsed = 0.0
        self.is_app_limited = False
        self.delivered = 0          # bytes delivered over ``interval``
        self.interval = 0.0
        self.delivery_rate = 0.0    # bytes per second; 0.0 when the sample is not valid
        self.rtt = -1.0             # RTT of the newest delivered, never retransmitted transmission
        self.acked_sacked = 0       # bytes newly acknowledged or SACKed by this ACK
        self.losses = 0             # bytes newly marked lost while processing this ACK
        self.prior_in_flight = prior_in_flight
        self.delivered_total = 0    # C.delivered after this ACK
        self.valid = False
        self._xmit_ts = -1.0
        self._end = -1

    def take(self, sent_ts: float, end: int, delivered: int, delivered_ts: float, first_ts: float,
             app_limited: bool, retransmitted: bool, now: float) -> float | None:
        """§3.3 UpdateRateSample for one newly delivered transmission.

        Returns the new C.first_sent_time when this transmission is the newest so
        far (the caller stores it), else None.
        """
        if sent_ts > self._xmit_ts or (sent_ts == self._xmit_ts and end > self._end):
            self._xmit_ts = sent_ts
            self._end = end
            self.prior_delivered = delivered
            self.prior_time = delivered_ts
            self.is_app_limited = app_limited
            self.send_elapsed = sent_ts - first_ts
            self.ack_elapsed = now - delivered_ts
            self.rtt = -1.0 if retransmitted else now - sent_ts
            return sent_ts
        return None

    def finish(self, delivered_total: int, min_rtt: float | None) -> bool:
        """§3.3 GenerateRateSample: fill ``delivered``/``interval``/``delivery_rate``.

        The interval is the longer of the send and ACK phases (so neither ACK
        compression nor a send burst inflates the rate); an interval shorter than
        min_rtt cannot be trusted and gives no sample.
        """
        self.delivered_total = delivered_total
        if self.prior_time is None:
            return False
        interval = self.send_elapsed if self.send_elapsed > self.ack_elapsed else self.ack_elapsed
        self.delivered = delivered_total - self.prior_delivered
        self.interval = interval
        if min_rtt is not None and interval < min_rtt:
            return False
        if interval <= 0.0:
            return False
        self.delivery_rate = self.delivered / interval
        self.valid = True
        return True
