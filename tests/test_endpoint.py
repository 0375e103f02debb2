"""The endpoint: demultiplexing, listener backlog, TIME-WAIT reuse, ISNs (RFC 6528)."""

from __future__ import annotations

import pytest

from harness import SECRET, Harness, test_config
from toucli.stack.connection import State
from toucli.stack.endpoint import ISN_TICK, Endpoint
from toucli.stack.errors import LocalError
from toucli.stack.events import Connected, PeerClosed, Readable
from toucli.stack.segment import ACK, FIN, PSH, RST, SYN, Segment

W = 64000


def pairs(t: Harness):
    return [(p, s) for _, p, s in t.pop_output()]


# ---------------------------------------------------------------- demux
def test_two_connections_same_peer_different_local_ports():
    t = Harness(test_config(), iss=1000)
    a = t.connect(at=0.0, local_port=40000, iss=1000)
    b = t.connect(at=0.0, local_port=40001, iss=2000)
    out = pairs(t)
    assert [(p, s.sport, s.seq) for p, s in out] == [("peer", 40000, 1000), ("peer", 40001, 2000)]
    t.recv(Segment(80, 40001, 7000, 2001, SYN | ACK, 30000, mss=1000), at=0.01)
    t.recv(Segment(80, 40000, 5000, 1001, SYN | ACK, 30000, mss=1000), at=0.02)
    assert pairs(t) == [("peer", Segment(40001, 80, 2001, 7001, ACK, W)),
                        ("peer", Segment(40000, 80, 1001, 5001, ACK, W))]
    evs = t.expect_events(Connected, Connected)
    assert [e.conn for e in evs] == [b, a]
    t.recv(Segment(80, 40000, 5001, 1001, ACK | PSH, 30000, b"to-a"), at=0.03)
    t.recv(Segment(80, 40001, 7001, 2001, ACK | PSH, 30000, b"to-b"), at=0.03)
    assert a.recv() == b"to-a" and b.recv() == b"to-b"
    assert [e.conn for e in t.expect_events(Readable, Readable)] == [a, b]


def test_two_peers_same_ports_are_distinct_connections():
    t = Harness(test_config(), iss=1000, local_port=80, remote_port=40000)
    t.listen(80)
    t.ep.iss_override = 1000
    t.recv(Segment(40000, 80, 5000, 0, SYN, 30000, mss=1000), at=0.0, peer="A")
    t.ep.iss_override = 3000
    t.recv(Segment(40000, 80, 9000, 0, SYN, 30000, mss=1000), at=0.0, peer="B")
    assert pairs(t) == [("A", Segment(80, 40000, 1000, 5001, SYN | ACK, W, mss=1000)),
                        ("B", Segment(80, 40000, 3000, 9001, SYN | ACK, W, mss=1000))]
    t.recv(Segment(40000, 80, 9001, 3001, ACK | PSH, 30000, b"from B"), at=0.01, peer="B")
    t.recv(Segment(40000, 80, 5001, 1001, ACK | PSH, 30000, b"from A"), at=0.02, peer="A")
    evs = t.pop_events()
    conn_b, conn_a = evs[0].conn, evs[2].conn
    assert [type(e) for e in evs] == [Connected, Readable, Connected, Readable]
    assert (conn_a.peer, conn_b.peer) == ("A", "B")
    assert conn_a.recv() == b"from A" and conn_b.recv() == b"from B"
    assert pairs(t) == [("B", Segment(80, 40000, 3001, 9007, ACK, W - 6)),
                        ("A", Segment(80, 40000, 1001, 5007, ACK, W - 6))]
    # A's segment with B's sequence numbers is not acceptable for A's connection.
    t.recv(Segment(40000, 80, 9007, 1001, ACK | PSH, 30000, b"spoof"), at=0.03, peer="A")
    assert pairs(t) == [("A", Segment(80, 40000, 1001, 5007, ACK, W))]
    assert conn_a.recv() == b""


def test_connect_to_existing_tuple_is_a_local_error():
    t = Harness(test_config(), iss=1000)
    t.connect(at=0.0)
    with pytest.raises(LocalError):
        t.ep.connect("peer", 40000, 80, 0.1)
    t.ep.connect("other", 40000, 80, 0.1)          # another peer: fine


# ---------------------------------------------------------------- backlog
def test_listener_half_open_bound():
    t = Harness(test_config(), iss=1000, local_port=80, remote_port=40000, max_half_open=2)
    t.listen(80)
    for i, port in enumerate((40000, 40001, 40002)):
        t.ep.iss_override = 1000 * (i + 1)
        t.recv(Segment(port, 80, 5000, 0, SYN, 30000, mss=1000), at=0.0)
    out = pairs(t)
    assert [(s.dport, s.flags) for _, s in out] == [(40000, SYN | ACK), (40001, SYN | ACK)]
    assert t.ep.stats()["syn_dropped"] == 1
    assert len(t.ep.connections) == 2
    # One handshake completes: a slot frees up.
    t.recv(Segment(40000, 80, 5001, 1001, ACK, 30000), at=0.01)
    t.expect_events(Connected)
    t.ep.iss_override = 7000
    t.recv(Segment(40002, 80, 5000, 0, SYN, 30000, mss=1000), at=0.02)
    assert pairs(t) == [("peer", Segment(80, 40002, 7000, 5001, SYN | ACK, W, mss=1000))]


def test_half_open_slot_freed_when_syn_ack_times_out():
    t = Harness(test_config(syn_retries=0), iss=1000, local_port=80, remote_port=40000, max_half_open=1)
    t.listen(80)
    t.recv(Segment(40000, 80, 5000, 0, SYN, 30000, mss=1000), at=0.0)
    t.advance(to=1.0)                              # gives up at the first timeout
    t.pop_output()
    t.pop_events()
    assert t.ep.connections == {}
    t.ep.iss_override = 4000
    t.recv(Segment(40001, 80, 6000, 0, SYN, 30000, mss=1000), at=1.5)
    assert pairs(t) == [("peer", Segment(80, 40001, 4000, 6001, SYN | ACK, W, mss=1000))]


def test_unlisten_then_syn_gets_rst():
    t = Harness(test_config(), iss=1000, local_port=80, remote_port=40000)
    t.listen(80)
    t.ep.unlisten(80)
    t.recv(Segment(40000, 80, 5000, 0, SYN, 30000), at=0.0)
    assert pairs(t) == [("peer", Segment(80, 40000, 0, 5001, RST | ACK, 0))]


# ---------------------------------------------------------------- TIME-WAIT reuse
def server_in_time_wait() -> Harness:
    """Engine listens on 80, accepts, closes first: its side ends in TIME-WAIT."""
    t = Harness(test_config(), iss=1000, local_port=80, remote_port=40000)
    t.accept(peer_iss=5000, peer_wnd=30000)
    t.shutdown(at=0.1)
    t.expect(t.out(1001, 5001, FIN | ACK))
    t.recv(t.inp(5001, 1002, FIN | ACK, 30000), at=0.11)
    t.expect(t.out(1002, 5002, ACK))
    t.expect_events(PeerClosed)
    t.expect_state(State.TIME_WAIT)
    return t


def test_time_wait_reused_by_syn_with_higher_seq():
    """RFC 9293 §3.10.7.4 / RFC 6191: a new SYN above RCV.NXT may reopen a TIME-WAIT pair."""
    t = server_in_time_wait()
    old = t.conn
    t.ep.iss_override = 90000
    t.recv(t.inp(8000, 0, SYN, 30000, mss=1000), at=0.5)
    t.expect(t.out(90000, 8001, SYN | ACK, W, mss=1000))
    new = t.ep.connections[("peer", 80, 40000)]
    assert new is not old and new.state == State.SYN_RECEIVED
    t.recv(t.inp(8001, 90001, ACK, 30000), at=0.51)
    ev = t.expect_events(Connected)[0]
    assert ev.conn is new
    t.advance(to=5.0)                       # the old TIME-WAIT timer must not touch the new one
    t.expect()
    assert new.state == State.ESTABLISHED


def test_time_wait_not_reused_by_syn_with_lower_seq():
    t = server_in_time_wait()
    t.recv(t.inp(4000, 0, SYN, 30000, mss=1000), at=0.5)
    t.expect(t.out(1002, 5002, ACK))        # challenge ACK from the TIME-WAIT connection
    t.expect_state(State.TIME_WAIT)


# ---------------------------------------------------------------- ISN (RFC 6528)
def test_isn_deterministic_for_same_secret_tuple_and_time():
    a = Endpoint(test_config(), SECRET)
    b = Endpoint(test_config(), SECRET)
    ca = a.connect("10.0.0.1", 40000, 80, 12.5)
    cb = b.connect("10.0.0.1", 40000, 80, 12.5)
    assert ca.iss == cb.iss
    sa = a.segments_to_send(12.5)[0][1]
    assert sa.seq == ca.iss


def test_isn_differs_per_four_tuple_and_secret():
    ep = Endpoint(test_config(), SECRET)
    isns = {ep.connect(peer, lp, rp, 1.0).iss
            for peer, lp, rp in [("10.0.0.1", 40000, 80), ("10.0.0.1", 40001, 80),
                                 ("10.0.0.1", 40000, 81), ("10.0.0.2", 40000, 80)]}
    assert len(isns) == 4
    other = Endpoint(test_config(), bytes(reversed(SECRET)))
    assert other.connect("10.0.0.1", 40000, 80, 1.0).iss not in isns


def test_isn_advances_with_the_clock():
    """RFC 6528 §3: ISN = M + F(...), M ticking every 4 microseconds."""
    a = Endpoint(test_config(), SECRET)
    b = Endpoint(test_config(), SECRET)
    i0 = a.connect("h", 40000, 80, 100.0).iss
    i1 = b.connect("h", 40000, 80, 102.0).iss
    assert (i1 - i0) % (1 << 32) == 2 * ISN_TICK == 500_000


def test_short_secret_rejected():
    with pytest.raises(LocalError):
        Endpoint(test_config(), b"short")


def test_bad_ports_rejected():
    ep = Endpoint(test_config(), SECRET)
    with pytest.raises(LocalError):
        ep.listen(0)
    with pytest.raises(LocalError):
        ep.connect("p", 70000, 80, 0.0)


# ---------------------------------------------------------------- bookkeeping
def test_endpoint_next_deadline_is_minimum_over_connections():
    t = Harness(test_config(), iss=1000)
    t.connect(at=0.0, local_port=40000)
    t.connect(at=0.5, local_port=40001, iss=3000)
    t.pop_output()
    assert t.deadline() == pytest.approx(1.0)
    t.recv(Segment(80, 40000, 5000, 1001, SYN | ACK, 30000, mss=1000), at=0.6)
    t.pop_output()
    t.expect_events(Connected)
    assert t.deadline() == pytest.approx(1.5)
    t.advance(to=1.5)
    assert pairs(t) == [("peer", Segment(40001, 80, 3000, 0, SYN, W, mss=1000, sack_perm=True))]


def test_closed_connection_is_forgotten_and_tuple_reusable():
    t = Harness(test_config(), iss=1000)
    t.establish(peer_iss=5000, peer_wnd=30000)
    t.recv(t.inp(5001, 0, RST, 0), at=0.1)
    t.pop_events()
    assert t.ep.connections == {}
    c2 = t.connect(at=0.2, iss=50000)
    assert c2 is not t.conn and c2.state == State.SYN_SENT
    assert t.pop_segments()[0].seq == 50000


def test_output_before_drain_makes_next_deadline_immediate():
    ep = Endpoint(test_config(), SECRET)
    ep.connect("p", 40000, 80, 0.0)
    assert ep.next_deadline() == float("-inf")
    ep.segments_to_send(0.0)
    assert ep.next_deadline() == pytest.approx(1.0)


def test_held_syn_leaves_on_release_and_is_timed_from_then():
    """``connect(hold=True)``: nothing goes out and no timer runs until ``release``; the SYN
    then carries the release time, and the SYN-ACK's RTT sample counts from it."""
    ep = Endpoint(test_config(timestamps=True), SECRET)
    conn = ep.connect("P", 40000, 80, 1.0, hold=True, data=b"early")
    other = ep.connect("Q", 40001, 80, 1.0)
    assert [p for p, _ in ep.segments_to_send(1.0)] == ["Q"]       # only the open path sends
    assert conn.state == State.SYN_SENT and ep.next_deadline() == other.next_deadline()
    ep.handle_timer(10.0)                                           # Q's SYN times out; P's never ran
    assert [p for p, _ in ep.segments_to_send(10.0)] == ["Q"] and conn.rto_count == 0
    ep.release("P", 12.0)
    out = [s for p, s in ep.segments_to_send(12.0) if p == "P"]
    assert len(out) == 1 and out[0].flags == SYN and conn._ts_to_time(out[0].tsval) == 12.0
    syn = out[0]
    ep.receive("P", Segment(80, 40000, 7000, syn.seq + 1, SYN | ACK, 64000, tsval=1, tsecr=syn.tsval,
                            mss=1000), 12.25)
    assert conn.state == State.ESTABLISHED and abs(conn.stats()["srtt"] - 0.25) < 1e-9
    sent = b"".join(s.payload for p, s in ep.segments_to_send(12.25) if p == "P")
    assert sent == b"early"


def test_events_may_be_taken_before_output_without_losing_the_rst_of_an_abort():
    """Sans-I/O contract: draining events first (which forgets a closed connection)
    must not drop the segments that connection still had queued."""
    ep = Endpoint(test_config(), SECRET)
    conn = ep.connect("p", 40000, 80, 0.0)
    [(_, syn)] = ep.segments_to_send(0.0)
    ep.receive("p", Segment(80, 40000, 5000, (syn.seq + 1) & 0xFFFFFFFF, SYN | ACK, 30000, mss=1000), 0.01)
    ep.segments_to_send(0.01)
    while ep.next_event() is not None:
        pass
    conn.abort()
    events = []
    while (ev := ep.next_event()) is not None:
        events.append(type(ev).__name__)
    assert events == ["Closed"] and ep.connections == {}
    out = ep.segments_to_send(0.02)
    assert [(p, s.flags, s.seq) for p, s in out] == [("p", RST, (syn.seq + 1) & 0xFFFFFFFF)]
    assert ep.segments_to_send(0.03) == []


def test_a_new_connection_times_its_syn_from_the_rtt_of_the_peers_path():
    """RFC 9040 temporal/ensemble sharing: a second connection to a peer whose path a
    first connection measured (100 ms) retransmits a lost SYN after 0.1 + 4 * 0.05 s (then
    twice that), not after RFC 6298's initial 1 s; a connection to an unmeasured peer
    still waits 1 s."""
    t = Harness(test_config(), iss=1000)
    t.establish(at=0.0, rtt=0.1)
    path = t.ep.path_rtt["peer"]
    assert (path.srtt, path.rttvar) == pytest.approx((0.1, 0.05))
    t.connect(at=0.2, local_port=40001)
    t.connect(at=0.2, peer="elsewhere", local_port=40002)
    t.pop_output()
    t.advance(1.3)
    resent = [(round(at, 3), p) for at, p, s in t.pop_output() if s.flags & SYN]
    assert resent == [(0.5, "peer"), (1.1, "peer"), (1.2, "elsewhere")]   # then backed off


def test_the_listener_side_shares_the_path_rtt_too():
    t = Harness(test_config(), iss=1000, local_port=80, remote_port=40000)
    t.listen(80)
    t.accept(at=0.0, rtt=0.1)
    path = t.ep.path_rtt["peer"]
    assert (path.srtt, path.rttvar) == pytest.approx((0.1, 0.05))
    t.recv(Segment(40001, 80, 9000, 0, SYN, 30000, mss=1000), at=0.5)
    t.pop_output()
    t.advance(1.0)
    assert [(round(at, 3), s.flags) for at, _, s in t.pop_output()] == [(0.8, SYN | ACK)]
