"""Connection establishment (RFC 9293 §3.5, §3.10.7.3) driven segment by segment.

The test plays the peer by hand; the engine's ISS is 1000, the peer's 5000.
"""

from __future__ import annotations

import pytest

from harness import ANY, Harness, test_config
from toucli.stack.connection import State
from toucli.stack.events import Closed, Connected, Error, Readable, Reset
from toucli.stack.segment import ACK, FIN, PSH, RST, SYN, Segment

ISS = 1000
IRS = 5000


def syn_of(t: Harness, **kw) -> Segment:
    """The SYN test_config() produces."""
    kw.setdefault("mss", 1000)
    kw.setdefault("sack_perm", True)
    return t.out(ISS, 0, SYN, 64000, **kw)


# ------------------------------------------------------------------ active open
def test_active_open_sends_syn_and_arms_initial_rto():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.expect(syn_of(t), at=0.0)
    t.expect_state(State.SYN_SENT)
    assert t.deadline() == pytest.approx(1.0)   # RFC 6298 §2.1: initial RTO
    t.expect_events()


def test_active_open_completes_on_syn_ack():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 30000, mss=1000, sack_perm=True), at=0.010)
    t.expect(t.out(ISS + 1, IRS + 1, ACK, 64000), at=0.010)
    t.expect_events(Connected)
    t.expect_state(State.ESTABLISHED)
    assert t.deadline() is None          # nothing outstanding, no timer
    assert t.conn.stats()["srtt"] == pytest.approx(0.010)   # the SYN was timed


def test_data_queued_in_syn_sent_leaves_with_the_handshake_ack():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    assert t.send(b"hello") == 5
    t.expect()                            # nothing may leave before the handshake
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 30000, mss=1000), at=0.010)
    t.expect(t.out(ISS + 1, IRS + 1, ACK | PSH, 64000, b"hello"))
    t.expect_events(Connected)


def test_syn_ack_with_data_and_fin_is_delivered():
    """RFC 9293 §3.10.7.3: after a SYN-ACK is taken, its text and FIN are processed as usual."""
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK | FIN, 30000, b"abc", mss=1000), at=0.010)
    t.expect(t.out(ISS + 1, IRS + 5, ACK, 63997))
    t.expect_state(State.CLOSE_WAIT)
    evs = t.pop_events()
    assert [type(e).__name__ for e in evs] == ["Connected", "Readable", "PeerClosed"]
    assert t.read() == b"abc"


# ------------------------------------------------------------------ passive open
def test_passive_open_three_way_handshake():
    t = Harness(iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000, sack_perm=True), at=0.0)
    t.expect(t.out(ISS, IRS + 1, SYN | ACK, 64000, mss=1000, sack_perm=True), at=0.0)
    t.expect_state(State.SYN_RECEIVED)
    t.expect_events()
    assert t.deadline() == pytest.approx(1.0)
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000), at=0.020)
    t.expect()
    t.expect_events(Connected)
    t.expect_state(State.ESTABLISHED)
    assert t.deadline() is None


def test_passive_open_third_ack_carrying_data():
    t = Harness(iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    t.pop_output()
    t.recv(t.inp(IRS + 1, ISS + 1, ACK | PSH, 30000, b"GET /"), at=0.020)
    t.expect_events(Connected, Readable)
    t.expect(t.out(ISS + 1, IRS + 6, ACK, 63995))   # quick-ack phase: at once
    assert t.read() == b"GET /"


def test_syn_received_bad_ack_gets_reset_seq_seg_ack():
    """RFC 9293 §3.10.7.4 (SYN-RECEIVED, fifth check): unacceptable ACK -> <SEQ=SEG.ACK><CTL=RST>."""
    t = Harness(iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    t.pop_output()
    t.recv(t.inp(IRS + 1, ISS + 77, ACK, 30000), at=0.020)
    t.expect(t.out(ISS + 77, 0, RST, 0))
    t.expect_state(State.SYN_RECEIVED)
    t.expect_events()


def test_syn_received_rst_returns_to_listen_without_reset_event():
    """RFC 9293 §3.10.7.4 second check: a passive SYN-RECEIVED returns to LISTEN."""
    t = Harness(iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    t.pop_output()
    conn = t.conn
    t.recv(t.inp(IRS + 1, 0, RST, 0), at=0.010)
    t.expect()
    assert conn.state == State.CLOSED
    assert Reset not in [type(e) for e in t.pop_events()]
    assert t.ep.connections == {}
    # The listener is still there: a new SYN gets a new SYN-ACK.
    t.ep.iss_override = 9000
    t.recv(t.inp(IRS + 100, 0, SYN, 30000, mss=1000), at=0.020)
    t.expect(t.out(9000, IRS + 101, SYN | ACK, 64000, mss=1000))


# ---------------------------------------------------------- retransmission
def test_syn_retransmission_backoff_then_error():
    """RFC 6298 §5.5: each timeout doubles the RTO; give up after syn_retries."""
    t = Harness(test_config(syn_retries=3), iss=ISS)
    t.connect(at=0.0)
    t.expect(syn_of(t), at=0.0)
    for when in (1.0, 3.0, 7.0):
        assert t.deadline() == pytest.approx(when)
        t.step()
        t.expect(syn_of(t), at=when)
        t.expect_events()
    assert t.deadline() == pytest.approx(15.0)
    t.step()
    t.expect()
    evs = t.expect_events(Error, Closed)
    assert "SYN" in evs[0].reason
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_syn_retransmission_backoff_is_capped_by_rto_max():
    t = Harness(test_config(syn_retries=5, rto_max=3.0), iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.advance(to=20.0)
    times = [w for w, _, _ in t.pop_output()]
    assert times == pytest.approx([1.0, 3.0, 6.0, 9.0, 12.0])
    t.expect_events(Error, Closed)
    assert t.pop_events() == []


def test_syn_ack_retransmission_backoff():
    t = Harness(test_config(syn_retries=2), iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    synack = t.out(ISS, IRS + 1, SYN | ACK, 64000, mss=1000)
    t.expect(synack, at=0.0)
    t.advance(to=2.0)
    t.expect(synack, at=1.0)
    t.advance(to=6.9)
    t.expect(synack, at=3.0)
    t.advance(to=7.0)               # the third timeout: give up
    t.expect()
    assert t.ep.connections == {}
    # A late ACK now finds no connection: RST <SEQ=SEG.ACK> (RFC 9293 §3.10.7.1).
    t.pop_events()
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000), at=8.0)
    t.expect(t.out(ISS + 1, 0, RST, 0))


def test_lost_syn_ack_peer_retransmits_syn():
    """A retransmitted SYN in SYN-RECEIVED means our SYN-ACK was lost: send it again."""
    t = Harness(iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    synack = t.out(ISS, IRS + 1, SYN | ACK, 64000, mss=1000)
    t.expect(synack)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.5)
    t.expect(synack, at=0.5)
    t.expect_state(State.SYN_RECEIVED)
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000), at=0.6)
    t.expect()
    t.expect_events(Connected)
    t.expect_state(State.ESTABLISHED)
    # Karn: the ACK may answer either SYN-ACK, so it gives no RTT sample.
    assert t.conn.stats()["srtt"] is None


def test_the_handshake_is_timed_from_when_the_syn_ack_left():
    """A listener busy between taking the SYN and sending its answer (a DTLS handshake
    finished in the same batch) times the path from the SYN-ACK's departure, and its
    TSval names that moment (RFC 6298 §2, RFC 7323 §3)."""
    t = Harness(test_config(timestamps=True), iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    assert t.ep is not None
    t.ep.receive(t.peer, t.inp(IRS, 0, SYN, 30000, mss=1000, tsval=700, tsecr=0), 0.0)
    [(_, synack)] = t.ep.segments_to_send(0.005)          # it leaves 5 ms later
    assert synack.flags == SYN | ACK
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000, tsval=701, tsecr=synack.tsval), at=0.006)
    t.expect_events(Connected)
    assert t.conn.stats()["min_rtt"] == pytest.approx(0.001)
    t.send(b"x", at=0.010)
    [data] = t.pop_segments()
    assert (data.tsval - synack.tsval) & 0xFFFFFFFF == 5        # ms between the two departures


def test_lost_syn_retransmitted_then_answered():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.advance(to=1.0)
    t.expect(syn_of(t), at=1.0)
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 30000, mss=1000), at=1.050)
    t.expect(t.out(ISS + 1, IRS + 1, ACK, 64000))
    t.expect_events(Connected)
    # Karn: the SYN was retransmitted, so the SYN-ACK gives no RTT sample.
    assert t.conn.stats()["srtt"] is None


def test_rto_is_three_seconds_after_syn_timeout():
    """RFC 6298 §5.7: SYN timed out and RTO < 3 s: RTO := 3 s when data transmission begins."""
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.advance(to=1.0)
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 30000, mss=1000), at=1.050)
    t.pop_output()
    t.pop_events()
    t.send(b"x", at=2.0)
    t.pop_output()
    assert t.deadline() == pytest.approx(5.0)


# ---------------------------------------------------------- simultaneous open
def test_simultaneous_open():
    """RFC 9293 §3.5 figure 7: both SYNs cross; SYN-SENT -> SYN-RECEIVED -> ESTABLISHED."""
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.expect(syn_of(t))
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000, sack_perm=True), at=0.010)
    t.expect(t.out(ISS, IRS + 1, SYN | ACK, 64000, mss=1000, sack_perm=True))
    t.expect_state(State.SYN_RECEIVED)
    t.expect_events()
    # The peer's SYN-ACK (its SYN again, now acknowledging ours) is answered with an ACK.
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 30000, mss=1000, sack_perm=True), at=0.020)
    t.expect(t.out(ISS + 1, IRS + 1, ACK, 64000))
    # Whichever of its SYN-ACK or its ACK completes the handshake, we end ESTABLISHED once.
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000), at=0.021)
    t.expect()
    t.expect_events(Connected)
    t.expect_state(State.ESTABLISHED)


# ---------------------------------------------------------- SYN-SENT input rules
def test_bad_ack_in_syn_sent_gets_rst_seq_seg_ack():
    """RFC 9293 §3.10.7.3: SEG.ACK =< ISS or > SND.NXT -> <SEQ=SEG.ACK><CTL=RST>."""
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.recv(t.inp(IRS, ISS, SYN | ACK, 30000, mss=1000), at=0.01)
    t.expect(t.out(ISS, 0, RST, 0))
    t.recv(t.inp(IRS, ISS + 2, ACK, 30000), at=0.02)
    t.expect(t.out(ISS + 2, 0, RST, 0))
    t.expect_state(State.SYN_SENT)
    t.expect_events()


def test_rst_with_acceptable_ack_in_syn_sent_resets():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.recv(t.inp(0, ISS + 1, RST | ACK, 0), at=0.01)
    t.expect()
    t.expect_events(Reset, Closed)
    assert t.conn.state == State.CLOSED
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_rst_in_syn_sent_without_acceptable_ack_is_ignored():
    t = Harness(iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.recv(t.inp(0, ISS + 5, RST | ACK, 0), at=0.01)   # bad ACK: no RST answers a RST
    t.recv(t.inp(0, 0, RST, 0), at=0.02)                # no ACK at all: dropped
    t.expect()
    t.expect_events()
    t.expect_state(State.SYN_SENT)


def test_syn_to_port_without_listener_gets_rst_ack():
    """RFC 9293 §3.10.7.1: no ACK in the segment -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    t = Harness(iss=ISS, local_port=81, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.0)
    t.expect(t.out(0, IRS + 1, RST | ACK, 0))
    assert t.ep.connections == {}


# ---------------------------------------------------------- option negotiation
def test_all_options_negotiated():
    """MSS (RFC 9293 §3.7.1), WS (RFC 7323 §2), SACK-permitted (RFC 2018), TS (RFC 7323 §3)."""
    cfg = test_config(recv_buffer=1 << 20, initial_recv_window=256 << 10,
                      window_scaling=True, timestamps=True, mss=1400)
    t = Harness(cfg, iss=ISS, bare=True, ts_offset=100_000, start=5.0)
    t.connect(at=5.0)
    # 1 MiB buffer needs shift 5 (0xFFFF << 4 < 2**20 <= 0xFFFF << 5).
    t.expect(t.out(ISS, 0, SYN, 65535, mss=1400, wscale=5, sack_perm=True, tsval=105_000, tsecr=0))
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 20000, mss=1200, wscale=2, sack_perm=True,
                 tsval=777, tsecr=105_000), at=5.010)
    # window field after the handshake is scaled: 256 KiB >> 5
    t.expect(t.out(ISS + 1, IRS + 1, ACK, (256 << 10) >> 5, tsval=105_010, tsecr=777))
    st = t.conn.stats()
    assert st["mss"] == 1200 - 12            # TS option takes 12 bytes of every segment
    assert st["wscale"] == (2, 5)
    assert st["sack"] is True and st["timestamps"] is True
    assert st["snd_wnd"] == 20000           # the SYN-ACK's window is never scaled
    t.expect_events(Connected)
    # A later segment's window is scaled by the peer's shift 2.
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 30000, tsval=800, tsecr=105_010), at=5.020)
    assert t.conn.stats()["snd_wnd"] == 120000


def test_peer_without_options_gets_defaults():
    """No MSS option -> 536 (RFC 9293 §3.7.1); no WS/TS/SACK from us either."""
    cfg = test_config(window_scaling=True, timestamps=True, recv_buffer=1 << 20,
                      initial_recv_window=256 << 10)
    t = Harness(cfg, iss=ISS, bare=True, ts_offset=0, start=1.0)
    t.connect(at=1.0)
    t.expect(t.out(ISS, 0, SYN, 65535, mss=1000, wscale=5, sack_perm=True, tsval=1000, tsecr=0))
    t.recv(t.inp(IRS, ISS + 1, SYN | ACK, 20000), at=1.010)
    t.expect(t.out(ISS + 1, IRS + 1, ACK, 65535))   # no scaling: the field saturates
    st = t.conn.stats()
    assert (st["mss"], st["wscale"], st["sack"], st["timestamps"]) == (536, None, False, False)
    t.expect_events(Connected)
    t.send(b"y" * 1200)
    t.expect(t.out(ISS + 1, IRS + 1, ACK, 65535, b"y" * 536),
             t.out(ISS + 537, IRS + 1, ACK, 65535, b"y" * 536),
             t.out(ISS + 1073, IRS + 1, ACK | PSH, 65535, b"y" * 128))


def test_passive_open_echoes_only_offered_options():
    """A SYN-ACK carries WS/TS/SACK-permitted only if the SYN offered them (RFC 7323 §2.2, §3.2)."""
    cfg = test_config(window_scaling=True, timestamps=True, recv_buffer=1 << 20,
                      initial_recv_window=256 << 10)
    t = Harness(cfg, iss=ISS, local_port=80, remote_port=40000)
    t.listen(80)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1460, wscale=3), at=0.0)
    # no TS, no SACK offered; window scaling yes
    t.expect(t.out(ISS, IRS + 1, SYN | ACK, 65535, mss=1000, wscale=5))
    t.recv(t.inp(IRS + 1, ISS + 1, ACK, 100), at=0.010)
    t.expect_events(Connected)
    st = t.conn.stats()
    assert st["wscale"] == (3, 5) and st["mss"] == 1000 and not st["timestamps"] and not st["sack"]
    assert st["snd_wnd"] == 800


def test_syn_ack_timestamp_in_endpoint_mode_matches_any():
    cfg = test_config(timestamps=True)
    t = Harness(cfg, iss=ISS)
    t.connect(at=0.0)
    t.expect(t.out(ISS, 0, SYN, 64000, mss=1000, sack_perm=True, tsval=ANY, tsecr=0))
