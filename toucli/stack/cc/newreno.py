"""NewReno window arithmetic (RFC 5681 §3.1-§3.2, RFC 3465 byte counting).

Partial ACKs and the recovery point (RFC 6582) belong to the engine; this class
only sizes the window. All of it is the shared Reno code in :mod:`.base`.
"""

from __future__ import annotations

from .base import CongestionControl


class NewReno(CongestionControl):
    """Slow start, +1 SMSS per window in congestion avoidance, halve on loss."""

    name = "newreno"
