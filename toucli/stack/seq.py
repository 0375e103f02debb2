"""Sequence-number arithmetic modulo 2**32 (RFC 9293 §3.4).

Every comparison of TCP sequence or acknowledgment numbers in tou goes through
this module, so wraparound is handled in exactly one place.
"""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
MASK: Final = MOD - 1
HALF: Final = 1 << 31


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & MASK


def seq_sub(a: int, b: int) -> int:
    """Signed distance ``a - b`` in the range [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def seq_lt(a: int, b: int) -> bool:
    """``a < b`` in sequence space."""
    return a != b and ((a - b) & MASK) >= HALF


def seq_le(a: int, b: int) -> bool:
    """``a <= b`` in sequence space."""
    return a == b or ((a - b) & MASK) >= HALF


def seq_gt(a: int, b: int) -> bool:
    """``a > b`` in sequence space."""
    return a != b and ((b - a) & MASK) >= HALF


def seq_ge(a: int, b: int) -> bool:
    """``a >= b`` in sequence space."""
    return a == b or ((b - a) & MASK) >= HALF


def seq_max(a: int, b: int) -> int:
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    return a if seq_lt(a, b) else b


def seq_in(x: int, lo: int, hi: int) -> bool:
    """``lo <= x < hi`` in sequence space (half-open window starting at ``lo``)."""
    return ((x - lo) & MASK) < ((hi - lo) & MASK)
