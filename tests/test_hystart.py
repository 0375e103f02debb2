"""HyStart++ (RFC 9406): rounds, the RTT-increase test, Conservative Slow Start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netsim import transfer  # noqa: E402
from toucli.stack.cc import create  # noqa: E402
from toucli.stack.cc.hystart import CSS_ROUNDS, N_RTT_SAMPLE, HyStart  # noqa: E402
from toucli.stack.config import ConnectionConfig  # noqa: E402


def feed_round(h: HyStart, start: int, rtt: float, n: int = N_RTT_SAMPLE) -> bool:
    """One round: ACKs start..start+n-1, SND.NXT start+100 at its beginning."""
    out = False
    for i in range(n):
        out |= h.on_rtt_sample(rtt, start + i, start + 100)
    return out


def test_rtt_increase_enters_css_and_css_rounds_end_slow_start():
    h = HyStart()
    feed_round(h, 0, 0.050)
    feed_round(h, 100, 0.0555)                 # +5.5 ms < RttThresh = 50/8 = 6.25 ms
    assert not h.css
    feed_round(h, 200, 0.0625)                 # +7 ms over the previous round's minimum
    assert h.css and h.growth_divisor == 4
    ends = [feed_round(h, 300 + 100 * k, 0.0625) for k in range(CSS_ROUNDS)]
    assert ends == [False] * (CSS_ROUNDS - 1) + [True]
    assert h.done and not h.css


def test_css_is_left_when_the_rtt_falls_back():
    h = HyStart()
    feed_round(h, 0, 0.050)
    feed_round(h, 100, 0.070)
    assert h.css
    feed_round(h, 200, 0.060)                  # below the CSS baseline (70 ms): spurious
    assert not h.css and not h.done


def test_thresh_is_clamped_and_needs_enough_samples():
    h = HyStart()
    feed_round(h, 0, 0.010)                    # 10/8 ms < 4 ms floor
    feed_round(h, 100, 0.0135, n=N_RTT_SAMPLE - 1)
    assert not h.css                           # too few samples in this round yet
    h.on_rtt_sample(0.0135, 107, 200)
    assert not h.css                           # +3.5 ms < 4 ms
    h2 = HyStart()
    feed_round(h2, 0, 0.010)
    feed_round(h2, 100, 0.0141)
    assert h2.css


def test_controller_grows_a_quarter_as_fast_in_css_and_stops_on_loss():
    c = create("cubic", 1000, 0.0, 10000)
    c.hystart = HyStart()
    c.hystart.css = True
    c.on_ack(4000, 0.1, 0.05, 10000)
    assert c.cwnd == 11000
    c.on_congestion_event(0.2, 11000)
    assert c.hystart.done and not c.hystart.css


def test_hystart_avoids_the_slow_start_overshoot_in_the_simulator():
    """10 Mbit/s, 10 ms RTT, a 100 kB queue: plain slow start overflows it."""
    p = dict(delay=0.005, rate_bps=10e6, queue_bytes=100_000)
    on = transfer(p, 1 << 20, 0, seed=1)
    off = transfer(p, 1 << 20, 0, seed=1, config=ConnectionConfig(hystart=False))
    assert on.ok and off.ok
    assert on.link_ab["dropped_queue"] * 4 < off.link_ab["dropped_queue"]
    assert on.a.stats["retransmitted_segments"] < off.a.stats["retransmitted_segments"]


@pytest.mark.parametrize("rack", [True, False])
def test_lost_retransmission_without_rto_only_with_rack(rack):
    """A data segment and its first retransmission both lost: RACK notices the second loss
    from SACKs of data sent after the retransmission; RFC 6675 alone waits for the RTO."""
    hits = []
    target = 1001 + 20 * 1388

    def drop(d, seg):
        if d == "A->B" and seg.payload and seg.seq == target and len(hits) < 2:
            hits.append(seg)
            return True
        return False

    cfg = ConnectionConfig(rack=rack)
    r = transfer(dict(delay=0.02, rate_bps=20e6), 200 * 1388, 0, seed=3, iss=(1000, 5000),
                 drop=drop, config=cfg)
    assert r.ok and len(hits) == 2
    assert (r.a.stats["rto_count"] == 0) == rack
