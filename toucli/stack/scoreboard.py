"""The sender's scoreboard: one record per transmission, and the lost ranges.

RFC 8985 §5.2 (RACK-TLP) needs, for every segment in flight, the time it was
last (re)transmitted, its end sequence and whether it was retransmitted; delivery
rate estimation (draft-cheng-iccrg-delivery-rate-estimation §3.2) needs the
connection's delivered count, delivered time and first-sent time at the moment of
each transmission, and whether the sender was application-limited then.
:class:`SentLog` keeps them in
parallel Python lists indexed from a moving head, not in an object per
segment: a send appends to each list, a cumulative ACK moves the head, and
the lists are compacted now and then.

Offsets are the engine's unwrapped stream offsets (see
:mod:`toucli.stack.connection`), so no modular arithmetic is needed here.

:class:`Ranges` is a :class:`~toucli.stack.rangeset.RangeSet` that can also
forget an arbitrary range: the engine's set of octets marked lost and not yet
retransmitted (RFC 6675 §4 "IsLost" / RFC 8985 §6.2 "Segment.lost").
"""

from __future__ import annotations

from typing import Final

from bisect import bisect_left, bisect_right

from .rangeset import RangeSet

RETRANSMITTED: Final = 1    # sent more than once (RFC 8985 "Segment.retransmitted")
APP_LIMITED: Final = 2      # sent while the application limited the sender (P.is_app_limited)

_COMPACT_AT: Final = 4096   # head index at which dead records are dropped


class Ranges(RangeSet):
    """A :class:`RangeSet` with range removal."""

    __slots__ = ()

    def remove(self, start: int, end: int) -> int:
        """Forget ``[start, end)``; return how many integers were removed."""
        if end <= start:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)          # first range ending after start
        j = bisect_left(starts, end)           # first range starting at or after end
        if i >= j:
            return 0
        removed = 0
        new_s: list[int] = []
        new_e: list[int] = []
        for k in range(i, j):
            s, e = starts[k], ends[k]
            lo = s if s > start else start
            hi = e if e < end else end
            removed += hi - lo
            if s < start:
                new_s.append(s)
                new_e.append(start)
            if e > end:
                new_s.append(end)
                new_e.append(e)
        starts[i:j] = new_s
        ends[i:j] = new_e
        self.total -= removed
        return removed


class SentLog:
    """Per-transmission records in stream order.

    ``start``/``end``: the octets ``[start, end)``; ``ts``: last send time;
    ``flags``: RETRANSMITTED, APP_LIMITED; ``dlv``, ``dlv_ts``, ``first_ts``: the
    rate-estimation snapshot P.delivered, P.delivered_time, P.first_sent_time.
    """

    __slots__ = ("start", "end", "ts", "flags", "dlv", "dlv_ts", "first_ts", "head")

    def __init__(self) -> None:
        self.start: list[int] = []
        self.end: list[int] = []
        self.ts: list[float] = []
        self.flags: list[int] = []
        self.dlv: list[int] = []
        self.dlv_ts: list[float] = []
        self.first_ts: list[float] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.end) - self.head

    def append(self, start: int, end: int, ts: float, flags: int,
               delivered: int = 0, delivered_ts: float = 0.0, first_ts: float = 0.0) -> None:
        self.start.append(start)
        self.end.append(end)
        self.ts.append(ts)
        self.flags.append(flags)
        self.dlv.append(delivered)
        self.dlv_ts.append(delivered_ts)
        self.first_ts.append(first_ts)

    def acked_to(self, ack: int) -> tuple[int, int]:
        """Drop records ending at or below ``ack``; return the index range ``[lo, hi)`` dropped.

        The dropped records stay readable at those indices until the next call.
        """
        lo = self.head
        end = self.end
        hi = lo
        n = len(end)
        while hi < n and end[hi] <= ack:
            hi += 1
        if lo >= _COMPACT_AT and lo > (n >> 1):
            # The records just dropped are about to be read: keep them, drop the older ones.
            for lst in (self.start, self.end, self.ts, self.flags, self.dlv, self.dlv_ts, self.first_ts):
                del lst[:lo]
            hi -= lo
            lo = 0
        self.head = hi
        return lo, hi

    def index_after(self, offset: int) -> int:
        """Index of the first live record whose end lies above ``offset``."""
        return bisect_right(self.end, offset, lo=self.head)

    def clear(self) -> None:
        for lst in (self.start, self.end, self.ts, self.flags, self.dlv, self.dlv_ts, self.first_ts):
            lst.clear()
        self.head = 0
