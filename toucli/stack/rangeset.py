"""Sorted, coalescing sets of half-open integer ranges.

Shared by the receiver's out-of-order bookkeeping and SACK blocks (RFC 2018)
and by the sender's scoreboard (RFC 6675 §3). Ranges are over *unwrapped*
stream offsets, never raw 32-bit sequence numbers, so no modular arithmetic is
needed here; :mod:`toucli.stack.seq` converts at the boundary.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .errors import LocalError


class RangeSet:
    """A set of integers stored as disjoint, non-adjacent ``[start, end)`` ranges."""

    __slots__ = ("_starts", "_ends", "total")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = 0  # number of integers covered

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self):
        return zip(self._starts, self._ends)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
        self.total = 0

    def add(self, start: int, end: int) -> int:
        """Add ``[start, end)``; return how many integers were newly covered."""
        if end <= start:
            return 0
        starts, ends = self._starts, self._ends
        # first range whose end >= start (touching ranges merge)
        i = bisect_left(ends, start)
        # first range whose start > end
        j = bisect_right(starts, end, lo=i)
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            self.total += end - start
            return end - start
        old = 0
        for k in range(i, j):
            old += ends[k] - starts[k]
        new_start = min(start, starts[i])
        new_end = max(end, ends[j - 1])
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]
        added = (new_end - new_start) - old
        self.total += added
        return added

    def remove_below(self, point: int) -> None:
        """Forget everything below ``point``."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, point)
        if i:
            for k in range(i):
                self.total -= ends[k] - starts[k]
            del starts[:i]
            del ends[:i]
        if starts and starts[0] < point:
            self.total -= point - starts[0]
            starts[0] = point

    def contains(self, x: int) -> bool:
        i = bisect_right(self._starts, x) - 1
        return i >= 0 and x < self._ends[i]

    def covers(self, start: int, end: int) -> bool:
        """True when ``[start, end)`` lies inside one range."""
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and end <= self._ends[i]

    def range_at(self, x: int) -> tuple[int, int] | None:
        i = bisect_right(self._starts, x) - 1
        if i >= 0 and x < self._ends[i]:
            return self._starts[i], self._ends[i]
        return None

    def count_in(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` the set covers."""
        if end <= start or not self._starts:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)
        n = 0
        while i < len(starts) and starts[i] < end:
            n += min(end, ends[i]) - max(start, starts[i])
            i += 1
        return n

    def first_gap(self, start: int, end: int) -> tuple[int, int] | None:
        """The lowest ``[a, b)`` within ``[start, end)`` that the set does not cover."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)
        pos = start
        while pos < end:
            if i < len(starts) and starts[i] <= pos:
                pos = ends[i]
                i += 1
                continue
            nxt = starts[i] if i < len(starts) else end
            return pos, min(nxt, end)
        return None

    def lowest(self) -> tuple[int, int]:
        """The lowest range (LocalError when the set is empty)."""
        if not self._starts:
            raise LocalError("no range in an empty set")
        return self._starts[0], self._ends[0]

    def ranges_from_top(self):
        """Ranges from the highest down."""
        return zip(reversed(self._starts), reversed(self._ends))
