"""Connection teardown (RFC 9293 §3.6, §3.10.4, §3.10.5, §3.10.7.4 eighth check).

After ``establish()`` the engine's next sequence number is 1001 and it expects
5001 from the peer; the RTO is 0.2 s (rto_min) after the 10 ms SYN sample.
"""

from __future__ import annotations

import pytest

from harness import Harness, test_config
from toucli.stack.connection import State
from toucli.stack.errors import LocalError
from toucli.stack.events import Closed, PeerClosed, Readable
from toucli.stack.segment import ACK, FIN, PSH, RST, SYN

ISS = 1000
IRS = 5000
S = ISS + 1   # first data byte we send
R = IRS + 1   # first data byte the peer sends


def est(**cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=30000)
    return t


def test_active_close_full_sequence():
    t = est()
    t.shutdown(at=0.1)
    t.expect(t.out(S, R, FIN | ACK), at=0.1)
    t.expect_state(State.FIN_WAIT_1)
    assert t.deadline() == pytest.approx(0.3)
    t.recv(t.inp(R, S + 1), at=0.11)
    t.expect()
    t.expect_state(State.FIN_WAIT_2)
    assert t.deadline() is None
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.12)
    t.expect(t.out(S + 1, R + 1, ACK), at=0.12)
    t.expect_events(PeerClosed)
    t.expect_state(State.TIME_WAIT)
    assert t.deadline() == pytest.approx(0.12 + 2.0)
    t.expect_nothing(at=2.11)
    t.advance(to=2.12)
    t.expect()
    t.expect_events(Closed)
    assert t.conn.state == State.CLOSED
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_passive_close_full_sequence():
    t = est()
    t.recv(t.inp(R, S, FIN | ACK), at=0.1)
    t.expect(t.out(S, R + 1, ACK), at=0.1)     # a FIN is acknowledged at once
    t.expect_events(PeerClosed)
    t.expect_state(State.CLOSE_WAIT)
    t.shutdown(at=0.2)
    t.expect(t.out(S, R + 1, FIN | ACK), at=0.2)
    t.expect_state(State.LAST_ACK)
    t.recv(t.inp(R + 1, S + 1), at=0.21)
    t.expect()
    t.expect_events(Closed)
    assert t.conn.state == State.CLOSED
    assert t.ep.connections == {}
    assert t.deadline() is None


def test_simultaneous_close_goes_through_closing():
    t = est()
    t.shutdown(at=0.1)
    t.expect(t.out(S, R, FIN | ACK))
    t.recv(t.inp(R, S, FIN | ACK), at=0.11)        # its FIN crossed ours
    t.expect(t.out(S + 1, R + 1, ACK))
    t.expect_state(State.CLOSING)
    t.expect_events(PeerClosed)
    t.recv(t.inp(R + 1, S + 1), at=0.12)
    t.expect()
    t.expect_state(State.TIME_WAIT)
    assert t.deadline() == pytest.approx(2.12)
    t.advance(to=3.0)
    t.expect_events(Closed)


def test_fin_acking_our_fin_in_fin_wait_1_goes_to_time_wait():
    t = est()
    t.shutdown(at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.11)
    t.expect(t.out(S + 1, R + 1, ACK))
    t.expect_state(State.TIME_WAIT)
    t.expect_events(PeerClosed)


def test_fin_after_data_already_sent_goes_alone():
    t = est(tlp=False)   # the ACKs come late (20-30 ms): no tail loss probe in this test
    t.send(b"a" * 2500, at=0.1)
    segs = t.pop_segments()
    assert [(s.seq, len(s.payload), s.flags) for s in segs] == [
        (S, 1000, ACK), (S + 1000, 1000, ACK), (S + 2000, 500, ACK | PSH)]
    t.shutdown()
    t.expect(t.out(S + 2500, R, FIN | ACK))
    t.shutdown()   # a second shutdown is a no-op
    t.expect()
    t.expect_state(State.FIN_WAIT_1)
    t.recv(t.inp(R, S + 2500), at=0.12)    # data acknowledged, the FIN not yet
    t.expect_state(State.FIN_WAIT_1)
    t.recv(t.inp(R, S + 2501), at=0.13)
    t.expect_state(State.FIN_WAIT_2)
    t.expect()


def test_shutdown_with_unsent_data_puts_fin_on_last_segment():
    t = est()
    t.call(lambda: (t.conn.send(b"b" * 1500), t.conn.shutdown()))
    t.expect(t.out(S, R, ACK, payload=b"b" * 1000),
             t.out(S + 1000, R, ACK | PSH | FIN, payload=b"b" * 500))
    t.expect_state(State.FIN_WAIT_1)
    t.recv(t.inp(R, S + 1501), at=0.05)
    t.expect_state(State.FIN_WAIT_2)


def test_half_close_we_shut_down_peer_keeps_sending():
    t = est()
    t.shutdown(at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 1), at=0.11)
    t.expect_state(State.FIN_WAIT_2)
    t.recv(t.inp(R, S + 1, ACK, payload=b"still talking"), at=0.12)
    t.expect(t.out(S + 1, R + 13, ACK, 64000 - 13))
    t.expect_events(Readable)
    assert t.read() == b"still talking"
    with pytest.raises(LocalError):
        t.conn.send(b"no")


def test_half_close_peer_shut_down_we_keep_sending():
    t = est()
    t.recv(t.inp(R, S, FIN | ACK), at=0.1)
    t.pop_output()
    t.expect_events(PeerClosed)
    assert t.send(b"reply", at=0.2) == 5
    t.expect(t.out(S, R + 1, ACK | PSH, payload=b"reply"))
    t.recv(t.inp(R + 1, S + 5), at=0.21)
    t.expect()
    t.expect_state(State.CLOSE_WAIT)
    assert t.read() == b""
    t.shutdown(at=0.3)
    t.expect(t.out(S + 5, R + 1, FIN | ACK))
    t.expect_state(State.LAST_ACK)


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_timer():
    t = est()
    t.shutdown(at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.12)
    t.pop_output()
    t.pop_events()
    t.recv(t.inp(R, S + 1, FIN | ACK), at=1.0)      # our ACK of its FIN was lost
    t.expect(t.out(S + 1, R + 1, ACK), at=1.0)
    assert t.deadline() == pytest.approx(3.0)


def test_retransmitted_fin_in_time_wait_is_acked():
    t = est()
    t.shutdown(at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 1, FIN | ACK), at=0.12)
    t.pop_output()
    t.pop_events()
    t.recv(t.inp(R, S + 1, FIN | ACK), at=1.0)
    t.expect(t.out(S + 1, R + 1, ACK), at=1.0)
    t.expect_state(State.TIME_WAIT)


def test_fin_retransmitted_by_a_probe_then_on_rto_with_backoff():
    """A lone FIN is a one-segment flight: its tail loss probe comes when the RTO would
    (RFC 8985 §7.2) and re-arms it; then the RTO backs off (RFC 6298 §5.5)."""
    t = est()
    t.shutdown(at=0.1)
    fin = t.out(S, R, FIN | ACK)
    t.expect(fin, at=0.1)
    t.advance(to=0.3)
    t.expect(fin, at=0.3)
    assert t.conn.stats()["tlp_probes"] == 1 and t.deadline() == pytest.approx(0.5)
    t.advance(to=0.5)
    t.expect(fin, at=0.5)
    assert t.conn.stats()["rto_count"] == 1 and t.deadline() == pytest.approx(0.9)
    t.advance(to=0.9)
    t.expect(fin, at=0.9)
    t.recv(t.inp(R, S + 1), at=0.95)
    t.expect_state(State.FIN_WAIT_2)
    assert t.deadline() is None


def test_last_ack_fin_retransmitted_on_rto():
    t = est()
    t.recv(t.inp(R, S, FIN | ACK), at=0.1)
    t.pop_output()
    t.shutdown(at=0.2)
    fin = t.out(S, R + 1, FIN | ACK)
    t.expect(fin, at=0.2)
    t.advance(to=0.4)
    t.expect(fin, at=0.4)
    t.expect_state(State.LAST_ACK)


def test_abort_sends_rst_and_closes():
    """RFC 9293 §3.10.5: ABORT in a synchronized state sends <SEQ=SND.NXT><CTL=RST>."""
    t = est()
    t.send(b"x" * 300, at=0.1)
    t.pop_output()
    t.abort(at=0.2)
    t.expect(t.out(S + 300, 0, RST, 0), at=0.2)
    t.expect_events(Closed)
    assert t.conn.state == State.CLOSED
    assert t.ep.connections == {}
    assert t.deadline() is None
    # Anything later from the peer meets no connection: RST <SEQ=SEG.ACK>.
    t.recv(t.inp(R, S + 300, ACK, payload=b"late"), at=0.3)
    t.expect(t.out(S + 300, 0, RST, 0))


def test_abort_in_syn_sent_sends_nothing():
    t = Harness(test_config(), iss=ISS)
    t.connect(at=0.0)
    t.pop_output()
    t.abort(at=0.1)
    t.expect()
    t.expect_events(Closed)


def test_fin_beyond_a_hole_waits_for_the_hole():
    t = est()
    t.recv(t.inp(R + 100, S, FIN | ACK, payload=b"z" * 50), at=0.1)
    t.expect(t.out(S, R, ACK, sack=((R + 100, R + 150),)))
    t.expect_state(State.ESTABLISHED)
    t.expect_events()
    t.recv(t.inp(R, S, ACK, payload=b"y" * 100), at=0.2)
    t.expect(t.out(S, R + 151, ACK, 64000 - 150))
    t.expect_state(State.CLOSE_WAIT)
    t.expect_events(Readable, PeerClosed)
    assert t.read() == b"y" * 100 + b"z" * 50


def test_send_after_shutdown_is_a_local_error():
    t = est()
    t.shutdown(at=0.1)
    with pytest.raises(LocalError):
        t.conn.send(b"x")


def test_data_with_fin_retransmitted_keeps_fin():
    t = est()
    t.call(lambda: (t.conn.send(b"q" * 500), t.conn.shutdown()), at=0.1)
    t.expect(t.out(S, R, ACK | PSH | FIN, payload=b"q" * 500), at=0.1)
    t.advance(to=0.3)
    (seg,) = t.pop_segments()
    assert (seg.seq, seg.payload) == (S, b"q" * 500)
    assert seg.flags & (FIN | ACK | SYN | RST) == FIN | ACK     # PSH optional
