"""Loss recovery: RTO (RFC 6298), Karn, user timeout (RFC 9293 §3.8.3), fast
retransmit / NewReno (RFC 5681 §3.2, RFC 6582), SACK recovery (RFC 6675), and
the window reduction of NewReno (1/2) and CUBIC (beta 0.7, RFC 9438 §4.6).

After ``establish()``: SND.NXT = 1001, RCV.NXT = 5001, SRTT = 10 ms, so the
RTO is rto_min = 0.2 s; the initial window is 10 segments of 1000 bytes.
"""

from __future__ import annotations

import pytest

from harness import Harness, test_config
from toucli.stack.config import ConnectionConfig
from toucli.stack.events import Closed, Error
from toucli.stack.segment import ACK, PSH, RST

ISS = 1000
IRS = 5000
S = ISS + 1
R = IRS + 1
W = 64000
X = b"x"


def est(peer_wnd: int = W, **cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=peer_wnd, sack_perm=cfg.get("sack", True))
    return t


def data(t: Harness, k: int, flags: int = ACK, size: int = 1000):
    """Our k-th 1000-byte data segment."""
    return t.out(S + 1000 * k, R, flags, W, X * size)


def dupack(t: Harness, at: float, sack=None):
    t.recv(t.inp(R, S, ACK, W, sack=sack), at=at)


# ---------------------------------------------------------------- RTO
def test_rto_retransmission_with_exponential_backoff_capped():
    """RFC 6298 §5.4-§5.6: retransmit the earliest segment, double the RTO, cap at rto_max
    (without tail loss probes, which would take the first RTO's place)."""
    t = est(rto_max=1.0, tlp=False)
    t.send(X * 500, at=0.1)
    seg = t.out(S, R, ACK | PSH, W, X * 500)
    t.expect(seg, at=0.1)
    expected = [0.3, 0.7, 1.5, 2.5, 3.5]          # RTO 0.2, 0.4, 0.8, 1.0, 1.0
    for when in expected:
        assert t.deadline() == pytest.approx(when)
        t.step()
        t.expect(seg, at=when)
    assert t.conn.stats()["rto"] == pytest.approx(1.0)
    t.recv(t.inp(R, S + 500, ACK, W), at=3.6)
    assert t.deadline() is None
    assert t.conn.stats()["rto_count"] == 5
    assert t.conn.stats()["retransmitted_segments"] == 5


def test_rto_resends_one_segment_then_slow_starts():
    """RFC 5681 §3.1: after an RTO cwnd = 1 SMSS (loss window); ssthresh = FlightSize/2."""
    t = est(tlp=False)   # a tail loss probe would come first (see test_rack.py)
    t.send(X * 5000, at=0.1)
    assert len(t.pop_segments()) == 5
    t.advance(to=0.3)
    t.expect(data(t, 0), at=0.3)
    st = t.conn.stats()
    assert (st["cwnd"], st["ssthresh"]) == (1000, 2500)
    t.recv(t.inp(R, S + 1000, ACK, W), at=0.35)
    t.expect(data(t, 1), data(t, 2))             # cwnd 2000: the next two, in order
    # Karn (RFC 6298 §3): the ACK of a retransmitted segment gives no sample.
    assert t.conn.stats()["srtt"] == pytest.approx(0.010)
    # The backed-off RTO is kept until a valid sample arrives (RFC 6298 §5.7 note).
    assert t.deadline() == pytest.approx(0.35 + 0.4)


def test_rtt_sampled_from_a_never_retransmitted_segment():
    t = est()
    t.send(X * 100, at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 100, ACK, W), at=0.18)
    st = t.conn.stats()
    # RFC 6298 §2.3: RTTVAR = 3/4 * 0.005 + 1/4 * |0.01 - 0.08|, SRTT = 7/8*0.01 + 1/8*0.08
    assert st["srtt"] == pytest.approx(0.01875)
    assert st["rttvar"] == pytest.approx(0.02125)
    assert st["rto"] == pytest.approx(0.2)         # 0.01875 + 4*0.02125 = 0.10375 < rto_min


def test_user_timeout_gives_up_with_error_and_rst():
    """RFC 9293 §3.8.3: data unacknowledged for user_timeout -> abort with RST."""
    t = est(user_timeout=1.0, rto_max=1.0, tlp=False)
    t.send(X * 500, at=0.1)
    t.pop_output()
    t.advance(to=0.7)
    assert len(t.pop_segments()) == 2              # 0.3 and 0.7
    t.expect_events()
    t.advance(to=1.5)                              # first expiry >= 1 s after the send
    t.expect(t.out(S + 500, 0, RST, 0), at=1.5)
    evs = t.expect_events(Error, Closed)
    assert "user timeout" in evs[0].reason
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_user_timeout_counts_from_last_progress():
    t = est(user_timeout=1.0, rto_max=1.0, tlp=False)
    t.send(X * 2000, at=0.1)
    t.pop_output()
    t.advance(to=0.85)
    t.recv(t.inp(R, S + 1000, ACK, W), at=0.9)      # progress at 0.9 (no RTT sample: Karn)
    t.advance(to=2.6)
    out = t.pop_output()
    assert [(round(w, 6), s.seq) for w, _, s in out] == [
        (0.3, S), (0.7, S), (0.9, S + 1000), (1.7, S + 1000)]
    t.expect_events()
    t.advance(to=2.7)                                # 1.8 s after the last progress
    t.expect(t.out(S + 2000, 0, RST, 0), at=2.7)
    t.expect_events(Error, Closed)


def test_user_timeout_does_not_fire_on_first_rto_after_long_idle():
    t = est()                                        # user_timeout 60 s
    t.send(X * 500, at=100.0)
    t.pop_output()
    t.advance(to=100.2)
    t.expect(t.out(S, R, ACK | PSH, W, X * 500), at=100.2)
    t.expect_events()


# ---------------------------------------------------------------- NewReno
def test_fast_retransmit_on_third_duplicate_ack_small_flight():
    t = est(sack=False)
    t.send(X * 4000, at=0.1)
    assert len(t.pop_segments()) == 4
    dupack(t, 0.111)
    dupack(t, 0.112)
    t.expect()
    dupack(t, 0.113)
    t.expect(data(t, 0), at=0.113)
    assert t.conn.stats()["ssthresh"] == 2000       # max(FlightSize/2, 2*SMSS)


def test_without_sack_no_resend_queue_is_kept():
    """RACK needs SACK; without it the engine keeps no queue of resends by send time
    (nothing would ever read it, and it would only grow)."""
    t = est(sack=False)
    t.send(X * 4000, at=0.1)
    t.pop_segments()
    for k in (1, 2, 3):
        dupack(t, 0.11 + k / 1000)
    assert len(t.pop_segments()) == 1
    assert t.conn.stats()["retransmitted_segments"] == 1
    assert not t.conn._rtxq_ts


def test_fast_retransmit_on_third_duplicate_ack_full_window():
    t = est(sack=False)
    t.send(X * 10000, at=0.1)
    assert len(t.pop_segments()) == 10
    dupack(t, 0.111)
    dupack(t, 0.112)
    t.expect()
    dupack(t, 0.113)
    t.expect(data(t, 0), at=0.113)
    assert t.conn.stats()["ssthresh"] == 5000


def test_two_duplicate_acks_do_not_retransmit():
    t = est(sack=False)
    t.send(X * 4000, at=0.1)
    t.pop_output()
    dupack(t, 0.111)
    dupack(t, 0.112)
    t.expect()
    assert t.conn.stats()["sack_recoveries"] == 0


def test_ack_with_data_or_window_change_is_not_a_duplicate():
    """RFC 5681 §2: a duplicate ACK carries no data and does not change the window."""
    t = est(sack=False)
    t.send(X * 4000, at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S, ACK, W, b"d"), at=0.111)
    t.recv(t.inp(R + 1, S, ACK, W - 1), at=0.112)
    t.recv(t.inp(R + 1, S, ACK, W - 2), at=0.113)
    assert t.conn.stats()["sack_recoveries"] == 0
    assert [len(s.payload) for s in t.pop_segments()] == [0]   # only the ACK of the byte


def test_newreno_eventually_retransmits_and_halves():
    t = est(sack=False)
    t.send(X * 10000, at=0.1)
    assert len(t.pop_segments()) == 10
    for i in range(8):                               # segments 1..9 minus the lost 3
        dupack(t, 0.111 + i * 0.001)
    retrans = t.pop_segments()
    assert retrans == [data(t, 0)]                   # exactly one copy of the first hole
    st = t.conn.stats()
    assert (st["cwnd"], st["ssthresh"]) == (5000, 5000)
    assert st["sack_recoveries"] == 1


def test_newreno_partial_ack_retransmits_next_hole():
    t = est(sack=False)
    t.send(X * 10000, at=0.1)
    t.pop_output()
    for i in range(8):                               # segments 0 and 3 were lost
        dupack(t, 0.111 + i * 0.001)
    t.pop_output()
    t.recv(t.inp(R, S + 3000, ACK, W), at=0.13)      # partial: 0,1,2 now acknowledged
    t.expect(data(t, 3), at=0.13)


def test_newreno_full_ack_exits_recovery():
    t = est(sack=False)
    t.send(X * 10000, at=0.1)
    t.pop_output()
    for i in range(8):
        dupack(t, 0.111 + i * 0.001)
    t.pop_output()
    t.recv(t.inp(R, S + 10000, ACK, W), at=0.13)      # recovery point reached
    st = t.conn.stats()
    assert st["cwnd"] == 5000 and st["ssthresh"] == 5000
    assert not t.conn.in_recovery
    t.expect()
    t.send(X * 8000, at=0.14)
    # cwnd 5000, nothing in flight: five new segments.
    assert [s.seq for s in t.pop_segments()] == [S + 10000 + 1000 * i for i in range(5)]


# ---------------------------------------------------------------- SACK (RFC 6675)
def test_sack_recovery_rfc6675_trace():
    t = est()
    t.send(X * 10000, at=0.1)
    t.pop_output()
    # segments 0 and 2 lost
    dupack(t, 0.111, ((S + 1000, S + 2000),))
    dupack(t, 0.112, ((S + 3000, S + 4000), (S + 1000, S + 2000)))
    t.expect()
    dupack(t, 0.113, ((S + 3000, S + 5000), (S + 1000, S + 2000)))   # 3000 bytes above seg 0
    t.expect(data(t, 0), at=0.113)
    assert t.conn.stats()["ssthresh"] == 5000
    dupack(t, 0.114, ((S + 3000, S + 6000), (S + 1000, S + 2000)))   # seg 2 lost too; pipe 5000
    t.expect()
    dupack(t, 0.115, ((S + 3000, S + 7000), (S + 1000, S + 2000)))   # pipe 4000
    t.expect(data(t, 2), at=0.115)


def test_sack_recovery_holes_in_order_pipe_limits_new_data():
    """RFC 6675 §5: NextSeg sends lost holes first (in order), then new data while pipe < cwnd."""
    t = est()
    t.send(X * 20000, at=0.1)
    assert len(t.pop_segments()) == 10
    # One SACK reports 1 and 3..9: segments 0 and 2 are lost.
    dupack(t, 0.12, ((S + 3000, S + 10000), (S + 1000, S + 2000)))
    t.expect(data(t, 0), data(t, 2), data(t, 10), data(t, 11), data(t, 12), at=0.12)
    st = t.conn.stats()
    assert (st["cwnd"], st["ssthresh"], st["pipe"]) == (5000, 5000, 5000)
    assert t.conn.in_recovery
    # Holes repaired: the cumulative ACK reaches the recovery point: recovery ends.
    t.recv(t.inp(R, S + 10000, ACK, W), at=0.13)
    assert not t.conn.in_recovery
    t.expect(data(t, 13), data(t, 14))             # cwnd 5000, 3000 in flight
    assert t.conn.stats()["sack_recoveries"] == 1


def test_sack_partial_ack_keeps_recovery_until_recovery_point():
    t = est()
    t.send(X * 20000, at=0.1)
    t.pop_output()
    dupack(t, 0.12, ((S + 3000, S + 10000), (S + 1000, S + 2000)))
    t.pop_output()                                  # 0, 2, 10, 11, 12
    t.recv(t.inp(R, S + 2000, ACK, W, sack=((S + 3000, S + 10000),)), at=0.13)
    assert t.conn.in_recovery                       # below the recovery point S+10000
    t.expect(data(t, 13))                           # segment 2 was already resent; 2 left pipe
    t.recv(t.inp(R, S + 11000, ACK, W), at=0.14)
    assert not t.conn.in_recovery


def test_new_data_sent_on_first_sack_when_pipe_allows():
    """RFC 6675 §5 step (C) via pipe: a SACKed segment has left the network."""
    t = est()
    t.send(X * 20000, at=0.1)
    t.pop_output()
    dupack(t, 0.111, ((S + 1000, S + 2000),))
    t.expect(data(t, 10))
    assert not t.conn.in_recovery


@pytest.mark.parametrize("cc, ssthresh", [("newreno", 5000), ("cubic", 7000)])
def test_cwnd_reduction_on_loss(cc, ssthresh):
    """NewReno halves (RFC 5681 eq. 4); CUBIC multiplies by beta = 0.7 (RFC 9438 §4.6)."""
    t = est(congestion_control=cc)
    t.send(X * 10000, at=0.1)
    t.pop_output()
    dupack(t, 0.12, ((S + 1000, S + 10000),))
    t.expect(data(t, 0))
    st = t.conn.stats()
    assert (st["cwnd"], st["ssthresh"]) == (ssthresh, ssthresh)
    assert st["congestion_control"] == cc


def test_default_congestion_control_is_cubic():
    t = Harness(ConnectionConfig(), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=W)
    assert t.conn.stats()["congestion_control"] == "cubic"


def test_received_dsack_is_not_counted_as_new_sack():
    """RFC 2883 §4: a first block below the cumulative ACK reports a duplicate."""
    t = est(tlp=False)
    t.send(X * 4000, at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 2000, ACK, W), at=0.11)
    t.pop_output()
    t.recv(t.inp(R, S + 2000, ACK, W, sack=((S, S + 1000),)), at=0.12)
    t.recv(t.inp(R, S + 2000, ACK, W, sack=((S, S + 1000),)), at=0.13)
    t.recv(t.inp(R, S + 2000, ACK, W, sack=((S, S + 1000),)), at=0.14)
    assert not t.conn.in_recovery
    t.expect()
