"""Proportional Rate Reduction (RFC 6937) with the slow-start reduction bound.

During fast recovery PRR spreads the window reduction over the round trip
instead of stopping transmission until pipe falls below the new ssthresh
(RFC 6937 §3): while pipe > ssthresh, the sender sends ``ssthresh/RecoverFS``
of what the receiver reports delivered; once pipe drops below ssthresh
(further losses), PRR-SSRB (§3.1) lets it rebuild towards ssthresh no faster
than slow start (one extra MSS per ACK beyond what was delivered).

The engine calls :meth:`start` when recovery begins, :meth:`on_sent` for
every byte sent during recovery and :meth:`on_ack` with DeliveredData for each
ACK; :meth:`on_ack` returns the congestion window to use until the next ACK
(``pipe + sndcnt``, as Linux's ``tcp_cwnd_reduction`` sets it).
"""

from __future__ import annotations


class Prr:
    """State of one PRR episode (RFC 6937 §3 variables)."""

    __slots__ = ("recover_fs", "prr_delivered", "prr_out", "ssthresh", "active")

    def __init__(self) -> None:
        self.recover_fs = 0
        self.prr_delivered = 0
        self.prr_out = 0
        self.ssthresh = 0
        self.active = False

    def start(self, flight: int, ssthresh: int) -> None:
        """RFC 6937 §3 "on entering recovery": RecoverFS = FlightSize before the reduction."""
        self.recover_fs = flight if flight > 0 else 1
        self.prr_delivered = 0
        self.prr_out = 0
        self.ssthresh = ssthresh
        self.active = True

    def on_sent(self, nbytes: int) -> None:
        """RFC 6937 §3 "on any data transmission or retransmission": prr_out += data sent."""
        self.prr_out += nbytes

    def on_ack(self, delivered: int, pipe: int, mss: int) -> int:
        """RFC 6937 §3 "on every ACK during recovery" (PRR-SSRB): returns pipe + sndcnt."""
        self.prr_delivered += delivered
        ssthresh = self.ssthresh
        if pipe > ssthresh:
            # proportional part: sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out
            sndcnt = -(-self.prr_delivered * ssthresh // self.recover_fs) - self.prr_out
        else:
            limit = self.prr_delivered - self.prr_out
            if delivered > limit:
                limit = delivered
            limit += mss
            sndcnt = ssthresh - pipe
            if sndcnt > limit:
                sndcnt = limit
        if sndcnt < 0:
            sndcnt = 0
        return pipe + sndcnt

    def stop(self) -> None:
        self.active = False
