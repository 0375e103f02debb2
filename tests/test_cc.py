"""Congestion control: registry, NewReno (RFC 5681/3465) and CUBIC (RFC 9438) window math."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toucli.stack import cc
from toucli.stack.cc import INITIAL_SSTHRESH, CongestionControl, Cubic, NewReno
from toucli.stack.cc.base import ABC_LIMIT
from toucli.stack.cc.cubic import ALPHA, cubic_k
from toucli.stack.errors import LocalError

MSS = 1000
ALGOS = ["newreno", "cubic"]


def make(name: str, cwnd_segments: int = 10, ssthresh_segments: int | None = None) -> CongestionControl:
    c = cc.create(name, MSS, 0.0, initial_window=cwnd_segments * MSS)
    if ssthresh_segments is not None:
        c.ssthresh = ssthresh_segments * MSS
    return c


def ack_round(c: CongestionControl, t: float, rtt: float, per_ack: int = MSS) -> float:
    """Acknowledge one full window in ``per_ack`` pieces spread over one RTT; returns t + rtt."""
    n = max(1, c.cwnd // per_ack)
    for i in range(n):
        c.on_ack(per_ack, t + rtt * (i + 1) / n, rtt, c.cwnd)
    return t + rtt


# ---------------------------------------------------------------- registry


def test_names_lists_both_algorithms() -> None:
    assert {"newreno", "cubic"} <= set(cc.names())
    assert cc.names() == sorted(cc.names())


def test_create_returns_requested_class() -> None:
    assert isinstance(cc.create("newreno", MSS, 0.0), NewReno)
    c = cc.create("CUBIC", MSS, 0.0)
    assert isinstance(c, Cubic) and c.name == "cubic"


def test_unknown_name_raises_local_error_listing_names() -> None:
    with pytest.raises(LocalError) as ei:
        cc.create("vegas", MSS, 0.0)
    msg = str(ei.value)
    assert "vegas" in msg and "cubic" in msg and "newreno" in msg


def test_register_refuses_duplicates_unless_replace() -> None:
    with pytest.raises(LocalError):
        cc.register("newreno", NewReno)
    cc.register("test-reno-alias", NewReno)
    try:
        assert isinstance(cc.create("test-reno-alias", MSS, 0.0), NewReno)
        cc.register("test-reno-alias", Cubic, replace=True)
        assert isinstance(cc.create("test-reno-alias", MSS, 0.0), Cubic)
    finally:
        cc._registry.pop("test-reno-alias", None)


@pytest.mark.parametrize("mss,iw", [(1460, 14600), (1000, 10000), (536, 5360), (9000, 18000), (1, 10)])
def test_default_initial_window_rfc6928(mss: int, iw: int) -> None:
    c = cc.create("newreno", mss, 0.0)
    assert c.cwnd == iw
    assert c.ssthresh == INITIAL_SSTHRESH


def test_explicit_initial_window_and_bad_arguments() -> None:
    assert cc.create("cubic", MSS, 0.0, initial_window=4 * MSS).cwnd == 4 * MSS
    with pytest.raises(LocalError):
        cc.create("cubic", 0, 0.0)
    with pytest.raises(LocalError):
        cc.create("newreno", MSS, 0.0, initial_window=MSS - 1)


# ---------------------------------------------------------------- slow start


@pytest.mark.parametrize("name", ALGOS)
def test_slow_start_doubles_per_rtt(name: str) -> None:
    c = make(name)
    t = ack_round(c, 0.0, 0.1)
    assert c.cwnd == 20 * MSS
    ack_round(c, t, 0.1)
    assert c.cwnd == 40 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_slow_start_doubles_with_delayed_acks(name: str) -> None:
    c = make(name)
    for i in range(5):                      # one ACK per two segments
        c.on_ack(2 * MSS, 0.01 * i, 0.1, c.cwnd)
    assert c.cwnd == 20 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_stretch_acks_count_every_byte_by_default(name: str) -> None:
    """One ACK per receive batch: a stretch ACK of 8 segments grows cwnd by 8 segments."""
    c = make(name)
    c.on_ack(8 * MSS, 0.1, 0.1, 10 * MSS)
    assert c.cwnd == 18 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_abc_limits_increase_to_two_smss_per_ack(name: str) -> None:
    c = make(name)
    c.abc_limit = ABC_LIMIT
    c.on_ack(5 * MSS, 0.1, 0.1, 10 * MSS)
    assert c.cwnd == 12 * MSS
    c.on_ack(MSS // 2, 0.2, 0.1, 10 * MSS)   # partial segment counts in bytes
    assert c.cwnd == 12 * MSS + MSS // 2


@pytest.mark.parametrize("name", ALGOS)
def test_abc_limit_is_one_smss_in_slow_start_after_rto(name: str) -> None:
    c = make(name, 20)
    c.abc_limit = ABC_LIMIT
    c.on_rto(1.0, 20 * MSS)
    assert c.cwnd == MSS
    c.on_ack(3 * MSS, 1.5, 0.1, MSS)
    assert c.cwnd == 2 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_slow_start_stops_at_ssthresh(name: str) -> None:
    c = make(name, 10, ssthresh_segments=11)
    c.on_ack(MSS, 0.1, 0.1, 10 * MSS)
    assert c.cwnd == 11 * MSS
    assert not c.in_slow_start


def test_newreno_ack_crossing_ssthresh_counts_rest_toward_avoidance() -> None:
    c = make("newreno", 10, ssthresh_segments=11)
    c.on_ack(2 * MSS, 0.1, 0.1, 10 * MSS)  # 1 MSS to reach ssthresh, 1 MSS banked
    assert c.cwnd == 11 * MSS
    for _ in range(9):
        c.on_ack(MSS, 0.2, 0.1, 11 * MSS)
    assert c.cwnd == 11 * MSS
    c.on_ack(MSS, 0.2, 0.1, 11 * MSS)      # 11 MSS counted: one window
    assert c.cwnd == 12 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_app_limited_acks_do_not_grow_cwnd(name: str) -> None:
    c = make(name)
    for i in range(10):
        c.on_ack(MSS, 0.01 * i, 0.1, 2 * MSS, app_limited=True)
    assert c.cwnd == 10 * MSS
    c2 = make(name, 10, ssthresh_segments=10)   # congestion avoidance too
    for i in range(100):
        c2.on_ack(MSS, 0.01 * i, 0.1, 2 * MSS, app_limited=True)
    assert c2.cwnd == 10 * MSS


# ---------------------------------------------------------------- NewReno


def test_newreno_congestion_avoidance_one_mss_per_window() -> None:
    c = make("newreno", 20, ssthresh_segments=20)
    for _ in range(19):
        c.on_ack(MSS, 0.0, 0.1, 20 * MSS)
    assert c.cwnd == 20 * MSS
    c.on_ack(MSS, 0.0, 0.1, 20 * MSS)      # 20 MSS acked = one window
    assert c.cwnd == 21 * MSS
    for _ in range(21):
        c.on_ack(MSS, 0.0, 0.1, 21 * MSS)
    assert c.cwnd == 22 * MSS


def test_newreno_congestion_event_halves_flight() -> None:
    c = make("newreno", 20)
    c.on_congestion_event(1.0, 20 * MSS)
    assert c.in_recovery
    assert c.ssthresh == 10 * MSS and c.cwnd == 10 * MSS
    c.on_congestion_event(1.1, 8 * MSS)    # same episode: no second cut
    assert c.cwnd == 10 * MSS
    c.on_ack(5 * MSS, 1.2, 0.1, 8 * MSS)    # stray ACK during recovery: no growth
    assert c.cwnd == 10 * MSS
    c.on_recovery_exit(1.3)
    assert not c.in_recovery and c.cwnd == 10 * MSS
    c.on_congestion_event(2.0, 3 * MSS)    # floor of 2*SMSS (RFC 5681 eq. 4)
    assert c.ssthresh == 2 * MSS and c.cwnd == 2 * MSS


@pytest.mark.parametrize("name,ssthresh", [("newreno", 10 * MSS), ("cubic", 14 * MSS)])
def test_a_flight_above_cwnd_is_cut_from_cwnd(name: str, ssthresh: int) -> None:
    """With SACK, FlightSize (SND.NXT - SND.UNA) can be far above cwnd when a recovery
    starts soon after another (the data SACKed above the old holes); the reduction
    is from cwnd then, never an increase (RFC 9438 §4.6 allows cwnd, Linux uses it)."""
    c = make(name, 20)
    c.on_congestion_event(1.0, 45 * MSS)
    assert c.ssthresh == ssthresh and c.cwnd == ssthresh
    c.on_recovery_exit(1.5)
    c.on_congestion_event(2.0, 6 * MSS)    # an application-limited flight stays the base
    assert c.ssthresh == (3 * MSS if name == "newreno" else 4200)


def test_recovery_exit_deflates_to_ssthresh() -> None:
    c = make("newreno", 20)
    c.on_congestion_event(1.0, 20 * MSS)
    c.cwnd = 13 * MSS                      # engine inflated during recovery
    c.on_recovery_exit(1.5)
    assert c.cwnd == 10 * MSS


@pytest.mark.parametrize("name,ssthresh,later", [("newreno", 10 * MSS, 2 * MSS), ("cubic", 14 * MSS, 2800)])
def test_rto_collapses_to_one_mss_and_holds_ssthresh_on_repeat(name: str, ssthresh: int, later: int) -> None:
    c = make(name, 20)
    c.on_rto(1.0, 20 * MSS)
    assert c.cwnd == MSS and c.ssthresh == ssthresh
    c.on_rto(3.0, MSS)                     # the retransmission timed out again
    assert c.cwnd == MSS and c.ssthresh == ssthresh
    c.on_ack(MSS, 3.5, 0.1, MSS)           # new data acked: the episode is over
    c.on_rto(5.0, 4 * MSS)
    assert c.ssthresh == later


def test_rto_during_recovery_ends_recovery() -> None:
    c = make("newreno", 20)
    c.on_congestion_event(1.0, 20 * MSS)
    c.on_rto(2.0, 10 * MSS)
    assert not c.in_recovery and c.cwnd == MSS and c.ssthresh == 5 * MSS
    c.on_spurious_congestion(2.5)          # undo goes back to before the first cut
    assert c.cwnd == 20 * MSS and c.ssthresh == INITIAL_SSTHRESH


@pytest.mark.parametrize("name", ALGOS)
def test_undo_restores_cwnd_and_ssthresh(name: str) -> None:
    c = make(name, 30, ssthresh_segments=25)
    c.on_congestion_event(1.0, 30 * MSS)
    assert c.cwnd < 30 * MSS
    c.on_spurious_congestion(1.1)
    assert c.cwnd == 30 * MSS and c.ssthresh == 25 * MSS
    assert not c.in_recovery
    c.on_spurious_congestion(1.2)          # nothing left to undo
    assert c.cwnd == 30 * MSS and c.ssthresh == 25 * MSS


@pytest.mark.parametrize("name", ALGOS)
def test_undo_after_rto(name: str) -> None:
    c = make(name, 30)
    c.on_rto(1.0, 30 * MSS)
    c.on_spurious_congestion(1.5)
    assert c.cwnd == 30 * MSS and c.ssthresh == INITIAL_SSTHRESH
    c.on_ack(3 * MSS, 1.6, 0.1, 10 * MSS)  # back to normal slow start (every byte counts)
    assert c.cwnd == 33 * MSS


def test_set_mss_recomputes_iw_only_before_any_event() -> None:
    c = cc.create("newreno", 536, 0.0)
    assert c.cwnd == 5360
    c.set_mss(1460)
    assert c.cwnd == 14600 and c.mss == 1460
    c.on_ack(1460, 0.1, 0.1, 14600)
    c.set_mss(1200)
    assert c.cwnd == 14600 + 1460
    c.on_rto(1.0, c.cwnd)
    c.set_mss(1400)
    assert c.cwnd == 1400                  # never below one MSS
    with pytest.raises(LocalError):
        c.set_mss(0)


def test_set_mss_keeps_explicit_initial_window() -> None:
    c = cc.create("newreno", 536, 0.0, initial_window=4000)
    c.set_mss(1460)
    assert c.cwnd == 4000


# ---------------------------------------------------------------- CUBIC


def test_cubic_k_matches_hand_computation() -> None:
    # W_max = 100 segments, cwnd_epoch = 70: K = cbrt(30 / 0.4) = cbrt(75)
    assert cubic_k(100.0, 70.0) == pytest.approx(4.217163326508746, abs=1e-12)
    assert cubic_k(70.0, 100.0) == pytest.approx(-4.217163326508746, abs=1e-12)
    assert cubic_k(50.0, 50.0) == 0.0
    assert 4.217163326508746 ** 3 == pytest.approx(75.0, rel=1e-14)
    assert ALPHA == pytest.approx(0.9 / 1.7)


def cubic_after_loss(w_max_segments: int = 100, **kw: object) -> Cubic:
    c = Cubic(MSS, 0.0, initial_window=w_max_segments * MSS, **kw)  # type: ignore[arg-type]
    c.on_congestion_event(0.0, w_max_segments * MSS)
    c.on_recovery_exit(0.0)
    return c


def test_cubic_multiplicative_decrease() -> None:
    c = Cubic(MSS, 0.0, initial_window=100 * MSS)
    c.on_congestion_event(0.0, 90 * MSS)   # ssthresh from flight size, W_max from cwnd
    assert c.ssthresh == 63 * MSS and c.cwnd == 63 * MSS
    assert c.w_max == 100 * MSS and c.cwnd_prior == 100 * MSS
    st = c.stats()
    assert st["name"] == "cubic" and st["w_max"] == 100 * MSS and st["region"] == "recovery"


def test_cubic_epoch_k_after_loss() -> None:
    c = cubic_after_loss()
    assert c.cwnd == 70 * MSS
    c.on_ack(MSS, 0.1, 0.1, 70 * MSS)
    assert c.epoch_start == 0.1
    assert c.k == pytest.approx(math.cbrt(75.0))
    assert c.w_cubic(0.0) == pytest.approx(70 * MSS)
    assert c.w_cubic(c.k) == pytest.approx(100 * MSS)


def test_cubic_returns_to_w_max_near_k() -> None:
    rtt = 0.1
    c = cubic_after_loss()
    k = math.cbrt(75.0)
    t = 0.0
    seen: list[tuple[float, int]] = []
    while t < k + 0.5:
        t = ack_round(c, t, rtt)
        seen.append((t, c.cwnd))
        if 0.5 < t < k - 0.5:
            # concave region: aiming each ACK at W_cubic(t + RTT), cwnd is on the curve
            # by the end of every round trip (epoch began at the first ACK)
            assert c.region == "concave"
            want = 100 + 0.4 * (t - c.epoch_start - k) ** 3  # type: ignore[operator]
            assert abs(c.cwnd / MSS - want) < 1.0, (t, c.cwnd)
    at_k = [w for (tt, w) in seen if abs(tt - k) <= rtt]
    assert at_k and all(99 * MSS <= w <= 101 * MSS for w in at_k)
    # far past K the convex region accelerates beyond W_max
    while t < 2 * k + 1:
        t = ack_round(c, t, rtt)
    assert c.cwnd > 110 * MSS


def test_cubic_growth_never_exceeds_half_cwnd_per_rtt() -> None:
    c = cubic_after_loss()
    c.on_ack(MSS, 0.0, 0.1, 70 * MSS)
    # one ACK long after the epoch began: target clamped to 1.5 * cwnd
    before = c.cwnd
    c.on_ack(before, 100.0, 0.1, before)
    assert c.cwnd <= int(1.5 * before) + 1


def test_cubic_reno_friendly_dominates_at_small_rtt() -> None:
    rtt = 0.001
    c = cubic_after_loss()
    t = 0.0
    while t < 0.1:
        t = ack_round(c, t, rtt)
    assert c.region == "reno-friendly"
    w_cubic_now = c.w_cubic(t - c.epoch_start)  # type: ignore[operator]
    assert w_cubic_now < 75 * MSS             # the cubic curve has barely moved
    # Reno-friendly: 30 segments at alpha_cubic per RTT, then 1 per RTT
    assert 130 * MSS < c.cwnd < 150 * MSS
    assert c.cwnd == int(c.w_est)


def test_cubic_fast_convergence_lowers_w_max() -> None:
    c = cubic_after_loss()
    c.cwnd = 80 * MSS                       # lost again before regaining W_max
    c.on_congestion_event(10.0, 80 * MSS)
    assert c.w_max == pytest.approx(80 * MSS * 0.85)
    assert c.cwnd == 56 * MSS

    d = cubic_after_loss(fast_convergence=False)
    d.cwnd = 80 * MSS
    d.on_congestion_event(10.0, 80 * MSS)
    assert d.w_max == 80 * MSS


def test_cubic_undo_restores_curve_state() -> None:
    c = cubic_after_loss()
    c.on_ack(MSS, 0.5, 0.1, 70 * MSS)
    saved = (c.cwnd, c.ssthresh, c.w_max, c.k, c.epoch_start, c.w_est, c.cwnd_prior)
    c.on_congestion_event(2.0, c.cwnd)
    assert c.epoch_start is None and c.w_max != saved[2]
    c.on_spurious_congestion(2.1)
    assert (c.cwnd, c.ssthresh, c.w_max, c.k, c.epoch_start, c.w_est, c.cwnd_prior) == saved


def test_cubic_after_rto_epoch_starts_on_plateau() -> None:
    c = Cubic(MSS, 0.0, initial_window=40 * MSS)
    c.on_rto(1.0, 40 * MSS)
    assert c.cwnd == MSS and c.ssthresh == 28 * MSS
    t = 1.0
    while c.in_slow_start:
        t += 0.01
        c.on_ack(MSS, t, 0.1, c.cwnd)
    c.on_ack(MSS, t + 0.01, 0.1, c.cwnd)   # first ACK of congestion avoidance
    assert c.k == 0.0
    assert c.w_max == 28 * MSS and c.origin == 28 * MSS


def test_cubic_idle_shifts_epoch() -> None:
    rtt = 0.1

    def run(idle_hook: bool) -> Cubic:
        c = cubic_after_loss()
        t = 0.0
        for _ in range(10):
            t = ack_round(c, t, rtt)
        # ten seconds with nothing to send, then the application writes again
        t += 10.0
        if idle_hook:
            c.on_send(t, 0)
        ack_round(c, t, rtt)
        return c

    idle = run(True)
    # epoch began at the first ACK (0.1/70 s); the idle time from the last ACK
    # (t = 1.0) to the next send (t = 11.0) is cut out
    assert idle.epoch_start == pytest.approx(10.0 + 0.1 / 70)
    # continues the concave curve as if 1.1 s, not 11.1 s, had passed
    assert abs(idle.cwnd / MSS - (100 + 0.4 * (1.1 - 0.1 / 70 - math.cbrt(75.0)) ** 3)) < 1.0
    busy = run(False)
    assert busy.cwnd > 100 * MSS                     # without the hook the curve leaps


def test_cubic_app_limited_time_is_cut_from_epoch() -> None:
    c = cubic_after_loss()
    c.on_ack(MSS, 1.0, 0.1, 70 * MSS)
    assert c.epoch_start == 1.0
    cwnd = c.cwnd
    for i in range(1, 51):
        c.on_ack(MSS, 1.0 + 0.1 * i, 0.1, 5 * MSS, app_limited=True)
    assert c.epoch_start == pytest.approx(6.0)
    assert c.cwnd == cwnd


def test_cubic_rtt_none_reuses_last_rtt() -> None:
    a = cubic_after_loss()
    b = cubic_after_loss()
    a.on_ack(MSS, 0.0, 0.2, 70 * MSS)
    b.on_ack(MSS, 0.0, 0.2, 70 * MSS)
    a.on_ack(10 * MSS, 1.0, None, 70 * MSS)
    b.on_ack(10 * MSS, 1.0, 0.2, 70 * MSS)
    assert a.cwnd == b.cwnd and a.cwnd > 70 * MSS


def test_stats_fields() -> None:
    s = cc.create("newreno", MSS, 0.0).stats()
    assert s["name"] == "newreno" and s["cwnd"] == 10 * MSS and s["ssthresh"] == INITIAL_SSTHRESH
    s = cc.create("cubic", MSS, 0.0).stats()
    assert {"w_max", "k", "w_est", "region", "epoch_start"} <= set(s)


# ---------------------------------------------------------------- invariants

_op = st.one_of(
    st.tuples(st.just("ack"), st.integers(0, 20 * MSS), st.floats(0.0, 2.0),
              st.one_of(st.none(), st.floats(0.0, 1.0)), st.booleans()),
    st.tuples(st.just("loss"), st.integers(0, 200 * MSS), st.floats(0.0, 2.0)),
    st.tuples(st.just("exit"), st.floats(0.0, 2.0)),
    st.tuples(st.just("rto"), st.integers(0, 200 * MSS), st.floats(0.0, 2.0)),
    st.tuples(st.just("undo"), st.floats(0.0, 2.0)),
    st.tuples(st.just("send"), st.integers(0, 3), st.floats(0.0, 30.0)),
    st.tuples(st.just("mss"), st.integers(500, 9000)),
)


@pytest.mark.parametrize("name", ALGOS)
@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=60))
def test_window_invariants_under_any_event_sequence(name: str, ops: list[tuple]) -> None:
    c = cc.create(name, MSS, 0.0)
    now = 0.0
    for op in ops:
        kind = op[0]
        if kind == "ack":
            now += op[2]
            c.on_ack(op[1], now, op[3], c.cwnd, app_limited=op[4])
        elif kind == "loss":
            now += op[2]
            was_in_recovery = c.in_recovery
            c.on_congestion_event(now, op[1])
            assert c.in_recovery
            if not was_in_recovery:
                assert c.ssthresh >= 2 * c.mss
        elif kind == "exit":
            now += op[1]
            c.on_recovery_exit(now)
        elif kind == "rto":
            now += op[2]
            c.on_rto(now, op[1])
            assert c.cwnd == c.mss
        elif kind == "undo":
            now += op[1]
            c.on_spurious_congestion(now)
        elif kind == "send":
            now += op[2]
            c.on_send(now, op[1] * MSS)
        else:
            c.set_mss(op[1])
        assert isinstance(c.cwnd, int) and isinstance(c.ssthresh, int)
        assert c.mss <= c.cwnd <= 2 ** 30
        if isinstance(c, Cubic) and c.epoch_start is not None:
            assert c.epoch_start <= now
        c.stats()
