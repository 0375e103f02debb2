"""RACK-TLP (RFC 8985), PRR (RFC 6937), undo (RFC 3708 / RFC 3522) and pacing, with
crafted segments.

After ``establish()``: SND.NXT = 1001, RCV.NXT = 5001, SRTT = min_rtt = 10 ms (the
handshake sample), RTO = 200 ms, initial window 10 segments of 1000 bytes, NewReno.
"""

from __future__ import annotations

import pytest

from harness import Harness, test_config
from toucli.stack.cc.base import INITIAL_SSTHRESH
from toucli.stack.rack import Rack, probe_timeout, sent_after
from toucli.stack.errors import LocalError
from toucli.stack.segment import ACK, PSH, SYN

ISS = 1000
IRS = 5000
S = ISS + 1
R = IRS + 1
W = 64000
X = b"x"


def est(**cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=W)
    return t


def data(t: Harness, k: int, flags: int = ACK):
    return t.out(S + 1000 * k, R, flags, W, X * 1000)


def sack(t: Harness, at: float, ack: int = S, *blocks: tuple[int, int]):
    t.recv(t.inp(R, ack, ACK, W, sack=tuple(blocks) or None), at=at)


def seqs(t: Harness) -> list[int]:
    return [(s.seq - S) // 1000 for s in t.pop_segments()]


# ---------------------------------------------------------------- RACK
def test_reordering_window_timer_marks_the_loss():
    """§6.2: one SACK above a hole is not a loss yet: the hole is lost at
    xmit_ts + RACK.rtt + reo_wnd (min_rtt/4 = 2.5 ms), found by the reordering timer."""
    t = est()
    t.send(X * 4000, at=0.1)
    assert len(t.pop_segments()) == 4
    sack(t, 0.111, S, (S + 1000, S + 2000))
    t.expect()
    assert t.conn.rack_deadline == pytest.approx(0.1135)
    assert t.deadline() == pytest.approx(0.1135)
    t.advance(to=0.1135)
    t.expect(data(t, 0), at=0.1135)
    assert t.conn.in_recovery and t.conn.stats()["rack_losses"] == 1


def test_reordered_segment_arriving_in_time_is_not_retransmitted():
    t = est()
    t.send(X * 4000, at=0.1)
    t.pop_output()
    sack(t, 0.111, S, (S + 1000, S + 2000))
    sack(t, 0.112, S + 2000)                       # the "missing" segment was only late
    t.advance(to=0.13)                             # (the probe timer would fire at 0.134)
    t.expect()
    st = t.conn.stats()
    assert st["retransmitted_segments"] == 0 and not t.conn.in_recovery
    assert st["reordering_seen"]                   # §6.2 step 3: delivered below RACK.fack


def test_dup_thresh_sacked_segments_make_the_window_zero():
    """§6.2 step 4: no reordering seen and DupThresh segments SACKed: reo_wnd = 0."""
    t = est()
    t.send(X * 5000, at=0.1)
    t.pop_output()
    sack(t, 0.111, S, (S + 1000, S + 4000))
    t.expect(data(t, 0), at=0.111)


def test_lost_retransmission_is_detected_without_an_rto():
    """RACK's main gain: a retransmission sent before newer data that got SACKed is lost."""
    t = est()
    t.send(X * 20000, at=0.1)
    assert len(t.pop_segments()) == 10
    sack(t, 0.12, S, (S + 1000, S + 10000))       # segment 0 lost
    assert seqs(t) == [0, 10, 11, 12, 13]          # PRR: pipe 0, ssthresh 5000
    # The retransmission of 0 went out with 10..13 at 0.12; 10..13 arrive, 0 does not.
    sack(t, 0.14, S, (S + 1000, S + 14000))
    assert seqs(t)[0] == 0
    st = t.conn.stats()
    assert st["rto_count"] == 0 and st["retransmitted_segments"] == 2


def test_each_transmission_is_declared_lost_at_its_own_deadline():
    """§6.2 step 5: a transmission is lost RACK.rtt + reo_wnd after it was sent. The
    timer runs to the earliest such deadline, so segment 0 (sent 1 ms earlier) is not
    held until the deadline of the ones sent after it."""
    t = est()
    t.send(X * 1000, at=0.1)
    t.send(X * 3000, at=0.101)
    assert len(t.pop_segments()) == 4
    sack(t, 0.112, S, (S + 3000, S + 4000))        # RACK.rtt 11 ms, reo_wnd 2.5 ms
    t.expect()
    assert t.conn.rack_deadline == pytest.approx(0.1135)
    t.advance(to=0.1135)
    assert seqs(t) == [0]
    assert t.conn.rack_deadline == pytest.approx(0.1145)
    t.advance(to=0.1145)
    assert seqs(t)[0] == 1                          # 2 waits for PRR's room
    assert t.conn.stats()["rack_losses"] == 3


def test_a_retransmission_lost_twice_is_found_again():
    """Resends are checked in the order they were sent: a second resend of the same
    range, lost like the first, is found by RACK when later data is SACKed."""
    t = est()
    t.send(X * 20000, at=0.1)
    t.pop_segments()
    sack(t, 0.12, S, (S + 1000, S + 10000))       # 0 lost, resent with 10..13
    assert seqs(t) == [0, 10, 11, 12, 13]
    sack(t, 0.14, S, (S + 1000, S + 14000))       # the resend of 0 lost too
    assert seqs(t)[0] == 0
    t.send(b"", at=0.15)
    sack(t, 0.17, S, (S + 1000, S + 16000))       # and once more
    assert 0 in seqs(t)
    st = t.conn.stats()
    assert st["rto_count"] == 0 and st["rack_losses"] >= 3


def test_a_partly_acknowledged_resend_still_counts_as_lost():
    """A resend whose first half the peer acknowledges (it trimmed at its window edge)
    and whose rest is overtaken by later data is found lost like any other."""
    t = est()
    t.send(X * 20000, at=0.1)
    t.pop_segments()
    sack(t, 0.12, S, (S + 1000, S + 10000))       # 0 lost, resent with 10..13
    assert seqs(t) == [0, 10, 11, 12, 13]
    sack(t, 0.14, S + 500, (S + 1000, S + 14000))
    sent = t.pop_segments()
    assert (sent[0].seq - S, len(sent[0].payload)) == (500, 500)
    assert t.conn.stats()["rack_losses"] == 2


def test_probe_resends_repaired_outside_recovery_leave_nothing_queued():
    """Tail-loss-probe resends answered by an ACK of everything: nothing is pending,
    so nothing stays queued for RACK, however often it happens. No D-SACK follows such
    an ACK, so each probe judges the one before it a repaired loss and no RTO fires."""
    t = est()
    now = 0.1
    for k in range(30):
        t.send(X * 2000, at=now)
        t.pop_segments()
        t.step()                                    # the probe resends the last segment
        assert len(t.pop_segments()) == 1
        t.recv(t.inp(R, t.conn.snd_max + S - 1, ACK, W), at=t.now + 0.001)
        now = t.now + 0.05
    st = t.conn.stats()
    assert (st["tlp_probes"], st["tlp_recoveries"], st["rto_count"]) == (30, 29, 0)
    assert len(t.conn._rtxq_ts) == 0


def test_resends_at_the_same_time_are_queued_in_stream_order():
    """RACK orders transmissions sent at the same time by sequence (RACK_sent_after), and
    its walk over resends stops at the first one sent after RACK's; so resends made at
    one instant by separate calls (segment 5, then segment 2) are queued 2 first, or a
    delivered resend of 3 would leave the resend of 2 unexamined behind that of 5."""
    t = est()
    t.send(X * 10000, at=0.1)
    t.pop_segments()
    sack(t, 0.12, S, (S + 6000, S + 10000))       # 0..5 lost: recovery, resends start
    t.pop_segments()
    out: list = []
    t.conn._retransmit(out, 5001, 6001, 0.13)
    t.conn._retransmit(out, 2001, 3001, 0.13)
    q = list(zip(t.conn._rtxq_ts, t.conn._rtxq_start))[t.conn._rtxq_head:]
    assert q == sorted(q) and (0.13, 2001) in q and (0.13, 5001) in q


@pytest.mark.parametrize("restart", [False, True])
def test_resending_the_head_restarts_the_retransmission_timer_where_configured(restart):
    """``rto_restart_on_head_resend`` (Linux's tcp_xmit_retransmit_queue): a resent head
    gets a whole RTO to be answered. Without it (RFC 6298 §5.3) the timer keeps running
    from the last cumulative ACK and expires while the resend is on its way."""
    t = est(rto_restart_on_head_resend=restart)
    t.send(X * 6000, at=0.1)
    t.pop_output()
    rto = t.conn.rtt.rto
    sack(t, 0.111, S, (S + 1000, S + 2000), (S + 3000, S + 6000))   # 0 and 2 lost
    assert seqs(t) == [0, 2]
    t.advance(to=0.1 + rto + 0.005)             # past the deadline counted from the last ACK
    if restart:
        assert t.conn.rto_count == 0 and t.conn.rto_deadline == pytest.approx(0.111 + rto)
    else:
        assert t.conn.rto_count == 1 and t.conn.rto_recovery


def test_an_rto_that_grew_moves_the_running_timer_out():
    """With ``rto_restart_on_head_resend`` the timer runs the RTO in force when it
    expires (Linux's tcp_rearm_rto), from the later of the last cumulative ACK and the
    head's last send: an RTO that grew since the timer was set (RTT samples from a
    queue filling up) postpones the expiry instead of resending everything."""
    t = est(rto_restart_on_head_resend=True, rtt_sack_samples=True, rack=False, tlp=False)
    t.send(X * 6000, at=0.1)
    t.pop_output()
    armed = t.conn.rto_deadline
    assert armed == pytest.approx(0.1 + t.conn.rtt.rto)
    # Two SACK-only ACKs (no loss yet) carry samples of 180 ms: the RTO grows, the timer stays.
    sack(t, 0.28, S, (S + 1000, S + 2000))
    sack(t, 0.281, S, (S + 1000, S + 3000))
    assert t.pop_output() == [] and t.conn.rto_deadline == armed
    grown = t.conn.rtt.rto
    assert grown > armed - 0.1
    t.advance(to=armed + 0.001)
    assert t.conn.rto_count == 0 and not t.conn.rto_recovery and t.pop_output() == []
    assert t.conn.rto_deadline == pytest.approx(0.1 + grown)


@pytest.mark.parametrize("linux", [False, True])
def test_sack_only_acks_give_rtt_samples_where_configured(linux):
    """``rtt_sack_samples`` (Linux's tcp_ack_update_rtt): an ACK that only SACKs gives an
    RTT sample from the oldest newly SACKed original, at full gain. Without it, RTT
    comes only with cumulative ACKs (RFC 6298, RFC 7323 §4)."""
    t = est(rtt_sack_samples=linux)
    t.send(X * 4000, at=0.1)
    t.pop_output()
    srtt = t.conn.rtt.srtt
    sack(t, 0.3, S, (S + 1000, S + 2000))        # a 200 ms sample for segment 1
    if linux:
        assert t.conn.rtt.latest == pytest.approx(0.2)
        assert t.conn.rtt.srtt == pytest.approx(srtt + (0.2 - srtt) / 8)
    else:
        assert t.conn.rtt.srtt == srtt


def test_reo_wnd_grows_with_dsack_rounds():
    """§6.2 step 4: each round with a D-SACK raises the multiplier (once per round)."""
    t = est()
    t.send(X * 6000, at=0.1)
    t.pop_output()
    sack(t, 0.12, S + 4000)
    assert t.conn.rack.reo_wnd_mult == 1
    sack(t, 0.13, S + 4000, (S, S + 1000))
    sack(t, 0.131, S + 4000, (S + 1000, S + 2000))   # same round (SND.UNA < 6000): no raise
    assert t.conn.rack.reo_wnd_mult == 2
    assert t.conn.stats()["dsacks_in"] == 2


def test_rack_unit_rules():
    assert sent_after(1.0, 5, 0.5, 9) and sent_after(1.0, 6, 1.0, 5) and not sent_after(1.0, 5, 1.0, 5)
    r = Rack()
    r.update(1.0, 2000, False, 1.05, None, 0.01)
    assert (r.xmit_ts, r.end_seq, r.rtt) == (1.0, 2000, pytest.approx(0.05))
    r.update(1.2, 3000, True, 1.205, None, 0.01)    # faster than min_rtt: the original's ACK
    assert r.xmit_ts == 1.0
    r.update(1.2, 3000, True, 1.25, 1.0, 0.01)      # echoes an older TSval: ambiguous
    assert r.xmit_ts == 1.0
    r.update(1.2, 3000, True, 1.25, 1.2, 0.01)
    assert r.xmit_ts == 1.2
    assert r.reo_wnd(False, 0.04, 0.05) == pytest.approx(0.01)
    assert r.reo_wnd(True, 0.04, 0.05) == 0.0       # recovery, no reordering seen
    r.reordering_seen = True
    r.reo_wnd_mult = 10
    assert r.reo_wnd(True, 0.04, 0.05) == pytest.approx(0.05)   # capped at SRTT
    assert probe_timeout(None, False) == 1.0
    assert probe_timeout(0.05, False) == pytest.approx(0.102)
    assert probe_timeout(0.05, True) == pytest.approx(0.3)
    assert probe_timeout(0.0001, False) == pytest.approx(0.010)


# ---------------------------------------------------------------- TLP
def test_tail_loss_probe_resends_the_last_segment_then_rto_later():
    """§7.2-7.3: PTO = 2*SRTT + 2 ms; with nothing new to send, resend the last segment."""
    t = est()
    t.send(X * 3000, at=0.1)
    t.pop_output()
    assert t.deadline() == pytest.approx(0.122)
    t.step()
    t.expect(data(t, 2, ACK | PSH), at=0.122)
    assert t.conn.stats()["tlp_probes"] == 1
    assert t.deadline() == pytest.approx(0.322)    # the RTO, re-armed by the probe
    t.step()
    t.expect(data(t, 0), at=0.322)                 # one probe per episode, then the RTO


def test_tail_loss_probe_sends_new_data_when_the_window_allows():
    t = est(initial_window_segments=2)
    t.send(X * 3000, at=0.1)
    assert seqs(t) == [0, 1]
    t.step()
    t.expect(data(t, 2, ACK | PSH), at=0.122)
    assert t.conn._tlp_is_retrans is False


def test_one_segment_flight_is_probed_in_place_of_the_rto():
    """§7.2: PTO = 2*SRTT + WCDelAckT = 220 ms is later than the RTO (200 ms), so the
    probe goes out when the RTO would have fired, and the RTO is re-armed behind it."""
    t = est()
    t.send(X * 1000, at=0.1)
    assert seqs(t) == [0]
    assert t.deadline() == pytest.approx(0.3)
    t.step()
    assert seqs(t) == [0] and t.now == pytest.approx(0.3)
    st = t.conn.stats()
    assert (st["tlp_probes"], st["rto_count"], t.conn.cc.cwnd) == (1, 0, 10000)
    assert t.deadline() == pytest.approx(0.5)
    t.step()
    assert seqs(t) == [0]                          # the probe was lost too: now the RTO
    assert t.conn.stats()["rto_count"] == 1


def test_probe_that_repaired_a_loss_reduces_cwnd():
    """§7.4.2: an ACK beyond the probe, and no D-SACK of it: the original was lost. An ACK
    of exactly the probe's end proves nothing yet."""
    t = est()
    t.send(X * 3000, at=0.1)
    t.pop_output()
    t.step()
    t.pop_output()
    t.recv(t.inp(R, S + 3000, ACK, W), at=0.135)
    assert t.conn.stats()["tlp_recoveries"] == 0 and t.conn.cc.ssthresh == INITIAL_SSTHRESH
    t.send(X * 1000, at=0.14)
    assert seqs(t) == [3]
    t.recv(t.inp(R, S + 4000, ACK, W), at=0.15)
    st = t.conn.stats()
    assert st["tlp_recoveries"] == 1 and st["ssthresh"] == 2000   # NewReno: 3000/2 -> 2 SMSS floor
    assert st["rto_count"] == 0


@pytest.mark.parametrize("apart", [False, True])
def test_probe_answered_by_a_dsack_changes_nothing(apart):
    """The D-SACK of the probe may come with the ACK of the original or after it."""
    t = est()
    t.send(X * 3000, at=0.1)
    t.pop_output()
    t.step()
    t.pop_output()
    if apart:
        t.recv(t.inp(R, S + 3000, ACK, W), at=0.13)
    t.recv(t.inp(R, S + 3000, ACK, W, sack=((S + 2000, S + 3000),)), at=0.135)
    t.send(X * 1000, at=0.14)
    t.pop_output()
    t.recv(t.inp(R, S + 4000, ACK, W), at=0.15)
    st = t.conn.stats()
    assert st["tlp_recoveries"] == 0 and st["ssthresh"] == INITIAL_SSTHRESH
    assert t.conn.cc.cwnd >= 10000


# ---------------------------------------------------------------- PRR
def test_prr_spreads_the_reduction_over_the_acks():
    """RFC 6937 §3: with pipe > ssthresh, sndcnt = ceil(prr_delivered * ssthresh / RecoverFS)
    - prr_out; at or below ssthresh, PRR-SSRB sends what was delivered (plus one MSS at most)."""
    t = est()
    t.send(X * 30000, at=0.1)
    assert len(t.pop_segments()) == 10
    got = []
    for k in range(1, 12):                         # segment 0 lost; 1..k SACKed, one per ACK
        sack(t, 0.110 + k * 0.001, S, (S + 1000, S + 1000 * (k + 1)))
        got.append((seqs(t), t.conn.cwnd))
    assert got == [
        ([10], 10000), ([11], 10000),   # before recovery: a SACK frees room for new data
        ([0], 8500),                    # 3 SACKed: lost. FlightSize 12000 is above cwnd 10000, so
                                        # RecoverFS = 10000 and ssthresh = 5000; pipe 8000:
                                        # sndcnt ceil(1000*5000/10000) = 500, the retransmission forced
        ([], 8000), ([], 7500),         # prr_delivered 2000 -> 0 more; 3000 -> 500 (less than an MSS)
        ([12], 7000), ([], 6500),       # 4000 -> 2000 - 1000 sent: one segment; 5000 -> 500
        ([], 5000),                     # pipe 5000 = ssthresh: SSRB, nothing to add
        ([13], 5000), ([14], 5000), ([15], 5000),   # one out per one in
    ]
    t.recv(t.inp(R, S + 12000, ACK, W), at=0.13)   # the recovery point: recovery ends
    assert not t.conn.in_recovery and t.conn.stats()["cwnd"] == 5000


def test_prr_counts_a_partial_ack_over_sacked_data_once():
    """RFC 6937 §3: DeliveredData = change in SND.UNA + change in SACKed bytes, so an ACK
    that fills the hole below SACKed data counts the hole only."""
    t = est()
    t.send(X * 30000, at=0.1)
    t.pop_output()
    for k in range(1, 4):                          # segment 0 lost; 1..k SACKed
        sack(t, 0.110 + k * 0.001, S, (S + 1000, S + 1000 * (k + 1)))
    assert t.conn.in_recovery and t.conn.prr.prr_delivered == 1000
    t.pop_output()
    t.recv(t.inp(R, S + 4000, ACK, W), at=0.125)   # the resent 0 arrives: 1..3 were SACKed
    assert t.conn.in_recovery and t.conn.prr.prr_delivered == 2000


def test_prr_off_falls_back_to_cwnd_equals_ssthresh():
    t = est(prr=False)
    t.send(X * 30000, at=0.1)
    t.pop_output()
    sack(t, 0.12, S, (S + 1000, S + 4000))
    assert seqs(t) == [0]                          # pipe 6000 > cwnd 5000: only the forced one
    assert t.conn.cwnd == 5000


# ---------------------------------------------------------------- undo
def test_dsack_of_every_retransmission_undoes_the_reduction():
    """RFC 3708 §3: all retransmissions of the episode came back as duplicates."""
    t = est()
    t.send(X * 20000, at=0.1)
    t.pop_output()
    sack(t, 0.12, S, (S + 1000, S + 10000))
    assert seqs(t)[0] == 0
    assert t.conn.cc.cwnd == 5000
    t.recv(t.inp(R, S + 10000, ACK, W), at=0.125)   # the original 0 was late, not lost
    t.recv(t.inp(R, S + 10000, ACK, W, sack=((S, S + 1000),)), at=0.13)
    st = t.conn.stats()
    assert st["spurious_undos"] == 1
    assert (t.conn.cc.cwnd, t.conn.cc.ssthresh) == (10000, INITIAL_SSTHRESH)
    assert st["reordering_seen"]


def test_dsack_of_a_probe_does_not_undo_a_real_recovery():
    """The probe resent 3 while 0 was really lost: recovery then needs the D-SACKs of both
    its own resend and the probe's before it may undo (Linux's tcp_init_undo)."""
    t = est()
    t.send(X * 4000, at=0.1)
    t.pop_output()
    t.step()
    t.expect(data(t, 3, ACK | PSH), at=0.122)      # the probe
    sack(t, 0.125, S, (S + 1000, S + 4000))        # originals 1..3: 0 is lost
    assert t.conn.in_recovery and seqs(t) == [0]
    sack(t, 0.126, S, (S + 3000, S + 4000), (S + 1000, S + 4000))   # D-SACK of the probe
    t.recv(t.inp(R, S + 4000, ACK, W), at=0.135)   # the resent 0 repaired the hole
    st = t.conn.stats()
    assert st["dsacks_in"] == 1 and st["spurious_undos"] == 0
    assert t.conn.cc.ssthresh == 2000


def test_eifel_undoes_a_spurious_timeout():
    """RFC 3522: the first ACK after the RTO echoes the original's TSval."""
    t = Harness(test_config(timestamps=True, tlp=False), iss=ISS, bare=True, start=1.0)
    t.establish(peer_iss=IRS, peer_wnd=W, at=1.0, tsval=500, tsecr=1000)
    t.send(X * 3000, at=1.1)                       # TSval 1100
    t.pop_output()
    t.advance(to=1.3)                              # RTO: resend 0 with TSval 1300
    assert [s.tsval for s in t.pop_segments()] == [1300]
    assert t.conn.cc.cwnd == 988                   # 1 SMSS (1000 - 12 bytes of timestamps)
    t.recv(t.inp(R, S + 3000, ACK, W, tsval=600, tsecr=1100), at=1.31)
    assert t.conn.stats()["spurious_undos"] == 1
    assert t.conn.cc.cwnd == 9880 and not t.conn.in_recovery


def test_genuine_timeout_is_not_undone():
    t = Harness(test_config(timestamps=True, tlp=False), iss=ISS, bare=True, start=1.0)
    t.establish(peer_iss=IRS, peer_wnd=W, at=1.0, tsval=500, tsecr=1000)
    t.send(X * 3000, at=1.1)
    t.pop_output()
    t.advance(to=1.3)
    t.pop_output()
    t.recv(t.inp(R, S + 1000, ACK, W, tsval=600, tsecr=1300), at=1.31)
    assert t.conn.stats()["spurious_undos"] == 0 and t.conn.cc.cwnd < 9880


def test_undo_can_be_turned_off():
    t = est(undo=False)
    t.send(X * 20000, at=0.1)
    t.pop_output()
    sack(t, 0.12, S, (S + 1000, S + 10000))
    t.pop_output()
    t.recv(t.inp(R, S + 10000, ACK, W), at=0.125)
    t.recv(t.inp(R, S + 10000, ACK, W, sack=((S, S + 1000),)), at=0.13)
    assert t.conn.stats()["spurious_undos"] == 0 and t.conn.cc.cwnd == 5000


# ---------------------------------------------------------------- pacing
def test_pacing_releases_quanta_at_the_pacing_rate():
    """rate = 2 * cwnd / SRTT in slow start = 2 MB/s; quantum max(4 MSS, 1 ms) = 4000 bytes."""
    t = est(pacing=True)
    t.send(X * 10000, at=0.1)
    assert seqs(t) == [0, 1, 2, 3]
    assert t.conn.stats()["pacing_rate"] == pytest.approx(2e6)
    assert t.deadline() == pytest.approx(0.102)
    t.step()
    assert seqs(t) == [4, 5, 6, 7]
    t.step()
    assert t.now == pytest.approx(0.104)
    assert seqs(t) == [8, 9]


def test_pacing_lets_an_interactive_write_out_at_once():
    t = est(pacing=True)
    t.send(X * 100, at=0.5)
    t.expect(t.out(S, R, ACK | PSH, W, X * 100), at=0.5)


def test_no_pacing_before_an_rtt_sample_or_when_off():
    t = est(pacing=False)
    t.send(X * 10000, at=0.1)
    assert len(t.pop_segments()) == 10
    assert t.conn.stats()["pacing_rate"] == 0.0


# ---------------------------------------------------------------- MSS change (PMTU hook)
@pytest.mark.parametrize("active", [True, False])
def test_send_mss_is_used_until_set_mss_while_the_syn_announces_mss(active):
    """Path-MTU discovery: the SYN announces what this end can receive (``mss``,
    RFC 9293 §3.7.1) while data leaves at ``send_mss`` until the search raises it."""
    t = Harness(test_config(mss=9000, send_mss=700), iss=ISS)
    if active:
        t.connect(at=0.0)
        [syn] = t.pop_segments()
        t.recv(t.inp(IRS, S, SYN | ACK, W, mss=8000, sack_perm=True), at=0.01)
    else:
        t.listen()
        t.recv(t.inp(IRS, 0, SYN, W, mss=8000, sack_perm=True), at=0.0)
        [syn] = t.pop_segments()
        t.recv(t.inp(R, S, ACK, W), at=0.01)
    assert syn.flags & SYN and syn.mss == 9000
    t.pop_segments()
    t.send(X * 1500, at=0.1)
    assert [len(s.payload) for s in t.pop_segments()] == [700, 700, 100]
    assert t.conn.set_mss(9000) == 8000            # raised, capped by the peer's announcement
    with pytest.raises(LocalError, match="send_mss"):
        Harness(test_config(mss=1000, send_mss=1200)).connect()


def test_a_smaller_mss_during_timeout_recovery_resends_everything_at_once():
    """A path that became a black hole for big segments (RFC 8899 §4.3): once the
    runtime lowers the MSS, what is outstanding goes again at once in pieces of the
    new size, not after the next, backed-off, timeout."""
    t = est()
    t.send(X * 3000, at=0.1)
    assert len(t.pop_segments()) == 3
    t.advance(to=0.35)                                  # TLP at 0.122, then the RTO at 0.322
    assert [len(s.payload) for s in t.pop_segments()] == [1000, 1000]
    assert t.conn.rto_recovery and t.conn.rtt.backoffs == 1
    t.call(t.conn.set_mss, 400, 0.35, at=0.35)
    sent = t.pop_segments()
    assert [(s.seq - S, len(s.payload)) for s in sent] == [(0, 400), (400, 400)]   # as cwnd allows
    assert t.conn.rto_deadline == pytest.approx(0.35 + t.conn.rtt.rto)
    t2 = est()                                          # outside a timeout's recovery: no resend
    t2.send(X * 3000, at=0.1)
    t2.pop_segments()
    t2.call(t2.conn.set_mss, 400, 0.11, at=0.11)
    assert t2.pop_segments() == []


def test_set_mss_changes_the_segment_size_mid_connection():
    t = est()
    assert t.conn.set_mss(600) == 600
    t.send(X * 1500, at=0.1)
    assert [len(s.payload) for s in t.pop_segments()] == [600, 600, 300]
    assert t.conn.set_mss(5000) == 1000            # capped by the announced MSS


def test_pacer_keeps_what_accrued_after_a_late_wake_up_but_not_after_idle():
    """A timer that fires late must not lower the paced rate: what accrued after the
    release time is kept (up to LATE_CREDIT more quanta, one when the sender sees a standing
    queue); an idle sender gets one quantum."""
    from toucli.stack.pacer import LATE_CREDIT, Pacer

    p = Pacer()
    rate, mss = 10e6, 1000                         # 10 MB/s: quantum = 1 ms = 10 000 bytes
    p.refill(0.0, rate, mss)
    assert p.tokens == 10_000
    p.consume(10_000)
    due = p.release_time(0.0)
    assert due == pytest.approx(0.001)
    p.refill(due + 0.0004, rate, mss)              # 0.4 ms late: 4000 more bytes may go
    assert p.tokens == pytest.approx(14_000)
    p.consume(14_000)
    due = p.release_time(due + 0.0004)
    p.refill(due + 0.005, rate, mss)               # 5 ms late: all of it
    assert p.tokens == pytest.approx(60_000)
    p.consume(60_000)
    due = p.release_time(due + 0.005)
    p.refill(due + 0.005, rate, mss, queued=True)  # 5 ms late with a standing queue: one quantum
    assert p.tokens == pytest.approx(20_000)
    p.consume(20_000)
    due = p.release_time(due + 0.005)
    p.refill(due + 0.1, rate, mss)                 # very late: LATE_CREDIT extra quanta at most
    assert LATE_CREDIT == 8 and p.tokens == pytest.approx(90_000)
    p.consume(90_000)
    p.refill(5.0, rate, mss)                       # idle for seconds, no release pending
    assert p.tokens == pytest.approx(10_000)
    fast = Pacer()                                 # 1 GB/s: the quantum at its cap (44 segments)
    fast.refill(0.0, 1e9, 16_000)
    fast.consume(int(fast.tokens))
    due = fast.release_time(0.0)
    fast.refill(due + 0.1, 1e9, 16_000)
    assert fast.tokens == pytest.approx(2 * fast.quantum)    # one quantum of credit, as before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_jitter_that_reorders_costs_no_spurious_retransmissions(seed):
    """4 ms of jitter at 100 Mbit/s reorders data and ACKs by dozens of packets. The
    ACKs carry TSvals from a 1 ms clock, so many arrive behind a newer one; dropping
    them by PAWS starved the sender of SACK information, and the SACK blocks of a
    delayed ACK that reached below SND.UNA corrupted the scoreboard: 2,818 segments
    were sent again for 1,777 drops in a 20 MB run. Now retransmissions stay within 10 % of
    the link's drops (data lost on the link or in the queue), and nothing is refused
    as an old duplicate."""
    import socket
    from netsim import transfer
    from toucli.tunnel import engine_config

    cfg = engine_config(socket.AF_INET, 53)
    link = dict(delay=0.05, jitter=0.004, rate_bps=100e6, queue_bytes=1_250_000, loss=0.02)
    r = transfer(link, 8_000_000, 0, seed=seed, config=cfg, time_limit=120)
    assert r.ok, r.describe()
    drops = r.link_ab["dropped_loss"] + r.link_ab["dropped_queue"]
    assert r.a.stats["reordering_seen"]
    assert r.a.stats["paws_drops"] == 0 and r.b.stats["paws_drops"] == 0
    assert r.a.stats["retransmitted_segments"] <= 1.1 * drops + 10, (r.a.stats["retransmitted_segments"], drops)
