"""RangeSet against a plain Python set model, and the modulo-2**32 helpers."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from toucli.stack.rangeset import RangeSet
from toucli.stack.seq import MASK, seq_add, seq_ge, seq_gt, seq_in, seq_le, seq_lt, seq_sub

ops = st.lists(
    st.tuples(st.sampled_from(["add", "cut"]), st.integers(0, 200), st.integers(0, 40)),
    max_size=40,
)


@settings(max_examples=300, derandomize=True)
@given(ops)
def test_rangeset_matches_set_model(steps):
    rs, model = RangeSet(), set()
    for op, a, n in steps:
        if op == "add":
            added = rs.add(a, a + n)
            new = set(range(a, a + n)) - model
            assert added == len(new)
            model |= new
        else:
            rs.remove_below(a)
            model = {x for x in model if x >= a}
        assert rs.total == len(model)
        ranges = list(rs)
        # disjoint, sorted, non-adjacent, and exactly the model
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(ranges, ranges[1:]))
        assert {x for s, e in ranges for x in range(s, e)} == model
    for x in range(0, 245, 7):
        assert rs.contains(x) == (x in model)
        assert rs.count_in(x, x + 13) == len(model & set(range(x, x + 13)))
        gap = rs.first_gap(x, x + 13)
        missing = sorted(set(range(x, x + 13)) - model)
        if not missing:
            assert gap is None
        else:
            a, b = gap
            assert a == missing[0] and all(y not in model for y in range(a, b))
            assert b == x + 13 or b in model


def test_rangeset_merges_touching_ranges():
    rs = RangeSet()
    rs.add(10, 20)
    rs.add(30, 40)
    assert rs.add(20, 30) == 10
    assert list(rs) == [(10, 40)]
    assert rs.covers(12, 40) and not rs.covers(5, 12)
    assert list(rs.ranges_from_top()) == [(10, 40)]


def test_seq_comparisons_across_the_wrap():
    top = MASK - 5
    after = seq_add(top, 10)          # wrapped past zero
    assert after == 4
    assert seq_lt(top, after) and seq_gt(after, top)
    assert seq_le(top, top) and seq_ge(after, after)
    assert seq_sub(after, top) == 10 and seq_sub(top, after) == -10
    assert seq_in(0, top, after) and not seq_in(after, top, after)
    assert not seq_lt(5, 5) and not seq_gt(5, 5)


@given(st.integers(0, MASK), st.integers(-(2**31) + 1, 2**31 - 1))
def test_seq_sub_inverts_seq_add(a, n):
    b = seq_add(a, n)
    assert seq_sub(b, a) == n
    assert seq_lt(a, b) == (n > 0)
