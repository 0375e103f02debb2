"""RST and blind-attack rules (RFC 9293 §3.10.7, RFC 5961 §3-§5, §7).

After ``establish()``: SND.NXT = 1001, RCV.NXT = 5001, our window 64000, the
peer's window (MAX.SND.WND) 30000.
"""

from __future__ import annotations

from harness import Harness, test_config
from toucli.stack.connection import State
from toucli.stack.events import Closed, PeerClosed, Readable, Reset
from toucli.stack.segment import ACK, FIN, PSH, RST, SYN

ISS = 1000
IRS = 5000
S = ISS + 1
R = IRS + 1


def est(**cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=30000)
    return t


def challenge(t: Harness, seq: int = S, ack: int = R):
    return t.out(seq, ack, ACK)


def test_rst_at_rcv_nxt_resets():
    """RFC 5961 §3.2: exactly RCV.NXT -> reset the connection."""
    t = est()
    t.recv(t.inp(R, 0, RST, 0), at=0.1)
    t.expect()
    t.expect_events(Reset, Closed)
    assert t.conn.state == State.CLOSED
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_rst_ack_at_rcv_nxt_resets():
    t = est()
    t.recv(t.inp(R, S, RST | ACK, 0), at=0.1)
    t.expect()
    t.expect_events(Reset, Closed)


def test_rst_in_window_but_not_exact_gets_challenge_ack():
    """RFC 5961 §3.2: in the window but != RCV.NXT -> challenge ACK, no reset."""
    t = est()
    t.recv(t.inp(R + 100, 0, RST, 0), at=0.1)
    t.expect(challenge(t), at=0.1)
    t.expect_events()
    t.expect_state(State.ESTABLISHED)
    assert t.conn.stats()["challenge_acks"] == 1


def test_rst_at_right_window_edge_gets_challenge_ack():
    t = est()
    t.recv(t.inp(R + 63999, 0, RST, 0), at=0.1)
    t.expect(challenge(t))
    t.expect_state(State.ESTABLISHED)


def test_rst_out_of_window_is_ignored_silently():
    t = est()
    t.recv(t.inp(R + 64001, 0, RST, 0), at=0.1)
    t.recv(t.inp(R - 1, 0, RST, 0), at=0.2)
    t.recv(t.inp(R - 100000, S, RST | ACK, 0), at=0.3)
    t.expect()
    t.expect_events()
    t.expect_state(State.ESTABLISHED)


def test_syn_in_established_gets_challenge_ack():
    """RFC 5961 §4.2: any SYN in a synchronized state -> challenge ACK, whatever its seq."""
    t = est()
    t.recv(t.inp(R + 10, 0, SYN, 30000, mss=1000), at=0.1)
    t.expect(challenge(t))
    t.recv(t.inp(IRS - 123456, 0, SYN, 30000, mss=1000), at=0.2)
    t.expect(challenge(t))
    t.recv(t.inp(R, S, SYN | ACK, 30000, mss=1000), at=0.3)
    t.expect(challenge(t))
    t.expect_events()
    t.expect_state(State.ESTABLISHED)


def test_syn_in_time_wait_without_listener_gets_challenge_ack():
    t = est()
    t.shutdown(at=0.1)
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.11)
    t.pop_output()
    t.pop_events()
    t.expect_state(State.TIME_WAIT)
    t.recv(t.inp(R + 1000, 0, SYN, 30000, mss=1000), at=0.5)
    t.expect(t.out(S + 1, R + 1, ACK))
    t.expect_state(State.TIME_WAIT)


def test_challenge_ack_rate_limit():
    """RFC 5961 §7: at most challenge_ack_limit challenge ACKs per second."""
    t = est(challenge_ack_limit=3)
    for i in range(5):
        t.recv(t.inp(R + 10 + i, 0, RST, 0), at=1.0 + i * 0.01)
    t.expect(challenge(t), challenge(t), challenge(t))
    t.recv(t.inp(R + 10, 0, SYN, 30000), at=1.5)
    t.expect()                                   # still limited
    t.recv(t.inp(R + 10, 0, RST, 0), at=2.0)     # a second after the first one
    t.expect(challenge(t), at=2.0)
    assert t.conn.stats()["challenge_acks"] == 4
    t.expect_state(State.ESTABLISHED)


def test_ack_for_unsent_data_is_acked_and_dropped():
    """RFC 9293 §3.10.7.4 fifth check: SEG.ACK > SND.NXT -> send ACK, drop the segment."""
    t = est()
    t.recv(t.inp(R, S + 500, ACK | PSH, 30000, b"data"), at=0.1)
    t.expect(t.out(S, R, ACK), at=0.1)
    t.expect_events()                  # the text was dropped with the segment
    assert t.read() == b""
    assert t.conn.stats()["bytes_received"] == 0


def test_too_old_ack_is_challenged_and_dropped():
    """RFC 5961 §5.2: SEG.ACK < SND.UNA - MAX.SND.WND -> discard and send an ACK."""
    t = est()
    t.recv(t.inp(R, S - 30001, ACK | PSH, 30000, b"data"), at=0.1)
    t.expect(t.out(S, R, ACK), at=0.1)
    t.expect_events()
    assert t.read() == b""


def test_old_but_acceptable_ack_with_data_is_processed():
    """RFC 5961 §5.2: SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT is acceptable."""
    t = est()
    t.recv(t.inp(R, S - 30000, ACK | PSH, 30000, b"data"), at=0.1)
    t.expect(t.out(S, R + 4, ACK, 63996))
    t.expect_events(Readable)
    assert t.read() == b"data"


def test_segment_with_ack_for_unknown_connection_gets_rst_seq_seg_ack():
    """RFC 9293 §3.10.7.1: SEG has ACK -> <SEQ=SEG.ACK><CTL=RST>."""
    t = Harness(test_config(), iss=ISS)
    t.recv(t.inp(777, 123456, ACK | PSH, 1000, b"hi"), at=0.0)
    t.expect(t.out(123456, 0, RST, 0))
    assert t.ep.stats()["rst_sent"] == 1


def test_segment_without_ack_for_unknown_connection_gets_rst_ack():
    """RFC 9293 §3.10.7.1: no ACK -> <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    t = Harness(test_config(), iss=ISS)
    t.recv(t.inp(777, 0, PSH | FIN, 1000, b"hi"), at=0.0)
    t.expect(t.out(0, 777 + 3, RST | ACK, 0))


def test_no_rst_answers_a_rst():
    """RFC 9293 §3.10.7.1: an incoming RST to no connection is discarded."""
    t = Harness(test_config(), iss=ISS)
    t.listen(40000)
    t.recv(t.inp(777, 0, RST, 0), at=0.0)
    t.recv(t.inp(777, 9, RST | ACK, 0), at=0.0)
    t.recv(t.inp(777, 0, RST | SYN, 0), at=0.0)
    t.expect()
    assert t.ep.connections == {}


def test_out_of_window_data_gets_duplicate_ack():
    """RFC 9293 §3.10.7.4 first check: unacceptable segment -> ACK, drop."""
    t = est()
    t.recv(t.inp(R + 64000, S, ACK, 30000, b"x" * 10), at=0.1)
    t.expect(t.out(S, R, ACK))
    t.recv(t.inp(R - 20, S, ACK, 30000, b"x" * 10), at=0.2)
    t.expect(t.out(S, R, ACK, sack=((R - 20, R - 10),)))   # D-SACK (RFC 2883) for the old copy
    t.expect_events()
    assert t.read() == b""


def test_rst_at_rcv_nxt_in_fin_wait_2_and_close_wait_resets():
    t = est()
    t.shutdown(at=0.1)
    t.recv(t.inp(R, S + 1), at=0.11)
    t.pop_output()
    t.recv(t.inp(R, 0, RST, 0), at=0.2)
    t.expect_events(Reset, Closed)
    t2 = est()
    t2.recv(t2.inp(R, S, FIN | ACK), at=0.1)
    t2.pop_output()
    t2.expect_events(PeerClosed)
    t2.recv(t2.inp(R + 1, 0, RST, 0), at=0.2)
    t2.expect()
    t2.expect_events(Reset, Closed)


def test_rst_in_syn_received_from_active_open_is_connection_refused():
    """RFC 9293 §3.10.7.4: SYN-RECEIVED reached from SYN-SENT: RST -> "connection refused"."""
    t = Harness(test_config(), iss=ISS)
    t.connect(at=0.0)
    t.recv(t.inp(IRS, 0, SYN, 30000, mss=1000), at=0.01)   # simultaneous open
    t.pop_output()
    t.expect_state(State.SYN_RECEIVED)
    t.recv(t.inp(R, 0, RST, 0), at=0.02)
    t.expect()
    t.expect_events(Reset, Closed)


def test_rst_in_time_wait_is_ignored():
    """RFC 1337 §3: a RST must not cut TIME-WAIT short (TIME-WAIT assassination);
    the connection ends by its own timer, with no Reset event."""
    t = est()
    t.shutdown(at=0.1)
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.11)
    t.pop_output()
    t.pop_events()
    t.recv(t.inp(R + 1, 0, RST, 0), at=0.5)
    t.expect()
    assert t.conn.state == State.TIME_WAIT
    t.advance(to=0.11 + t.conn.config.time_wait + 0.01)
    t.expect_events(Closed)
    assert t.ep.connections == {}
