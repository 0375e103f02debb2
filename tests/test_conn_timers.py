"""Timers: keepalive (RFC 9293 §3.8.4, RFC 1122 §4.2.3.6) and the single next deadline.

After ``establish()`` (SYN-ACK at t=0.01): SND.NXT = 1001, RCV.NXT = 5001.
"""

from __future__ import annotations

import pytest

from harness import Harness, test_config
from toucli.stack.connection import QUICKACK_SEGMENTS, State
from toucli.stack.events import Closed, Error, Readable
from toucli.stack.segment import ACK, PSH, RST

ISS = 1000
IRS = 5000
S = ISS + 1
R = IRS + 1
W = 64000


def est(bare: bool = False, **cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS, bare=bare)
    t.establish(peer_iss=IRS, peer_wnd=30000)
    return t


def ka(**kw) -> Harness:
    return est(keepalive_idle=10.0, keepalive_interval=5.0, keepalive_probes=3, **kw)


def test_keepalive_probes_then_error():
    """Probes carry SEQ = SND.UNA - 1 and no data; give up after keepalive_probes silences."""
    t = ka()
    probe = t.out(S - 1, R, ACK, W)
    assert t.deadline() == pytest.approx(10.01)
    t.expect_nothing(at=10.0)
    for when in (10.01, 15.01, 20.01):
        t.advance(to=when)
        t.expect(probe, at=when)
        t.expect_events()
    t.expect_state(State.ESTABLISHED)
    t.advance(to=25.01)
    t.expect(t.out(S, 0, RST, 0), at=25.01)
    evs = t.expect_events(Error, Closed)
    assert "keepalive" in evs[0].reason
    assert t.ep.connections == {}


def test_keepalive_answer_resets_the_count():
    t = ka()
    t.advance(to=10.01)
    t.expect(t.out(S - 1, R, ACK, W))
    t.recv(t.inp(R, S, ACK, 30000), at=10.05)       # the peer answers the probe
    t.expect()
    t.advance(to=20.04)
    t.expect()
    t.advance(to=20.05)                             # idle again for keepalive_idle
    t.expect(t.out(S - 1, R, ACK, W), at=20.05)
    t.advance(to=35.04)
    assert len(t.pop_segments()) == 2               # 25.05, 30.05
    t.expect_state(State.ESTABLISHED)
    t.advance(to=35.05)
    t.expect(t.out(S, 0, RST, 0))
    t.expect_events(Error, Closed)


def test_traffic_postpones_keepalive():
    t = ka()
    t.recv(t.inp(R, S, ACK | PSH, 30000, b"hi"), at=8.0)
    t.pop_output()
    t.expect_events(Readable)
    t.advance(to=17.99)
    t.expect()
    t.advance(to=18.0)
    t.expect(t.out(S - 1, R + 2, ACK, W - 2), at=18.0)


def test_no_keepalive_by_default():
    t = est()
    assert t.deadline() is None
    t.expect_nothing(at=7200.0)


def test_keepalive_probe_uses_snd_una_with_data_in_flight_acked():
    t = ka()
    t.send(b"d" * 100, at=1.0)
    t.pop_output()
    t.recv(t.inp(R, S + 100, ACK, 30000), at=1.01)
    t.advance(to=11.01)
    t.expect(t.out(S + 99, R, ACK, W), at=11.01)


def test_next_deadline_is_earliest_of_delack_rto_keepalive():
    t = ka()
    seq = R
    for i in range(QUICKACK_SEGMENTS):              # leave the quick-ACK phase
        t.recv(t.inp(seq, S, ACK, 30000, b"q" * 100), at=1.0 + i * 0.001)
        seq += 100
        t.read()
    t.pop_output()
    t.pop_events()
    t.send(b"z" * 100, at=2.0)                      # RTO at 2.2
    t.pop_output()
    assert t.deadline() == pytest.approx(2.2)
    t.recv(t.inp(seq, S, ACK, 30000, b"y" * 10), at=2.1)   # delayed ACK at 2.125
    t.pop_events()
    assert t.deadline() == pytest.approx(2.125)
    t.advance(to=2.125)
    t.expect(t.out(S + 100, seq + 10, ACK, W - 10), at=2.125)
    assert t.deadline() == pytest.approx(2.2)
    t.recv(t.inp(seq + 10, S + 100, ACK, 30000), at=2.15)   # data acknowledged: RTO off
    # The keepalive timer may wake early (lazily re-armed), but the probe goes
    # exactly keepalive_idle after the last input.
    assert t.deadline() <= 12.15 + 1e-9
    t.advance(to=12.149)
    t.expect()
    t.advance(to=12.15)
    t.expect(t.out(S + 99, seq + 10, ACK, W - 10), at=12.15)


def test_bare_connection_next_deadline_matches_endpoint():
    t = Harness(test_config(), iss=ISS, bare=True)
    t.establish(peer_iss=IRS, peer_wnd=30000)
    t.send(b"a" * 10, at=0.5)
    t.pop_output()
    assert t.conn.next_deadline() == pytest.approx(0.7)
    t2 = est()
    t2.send(b"a" * 10, at=0.5)
    t2.pop_output()
    assert t2.ep.next_deadline() == pytest.approx(0.7)


def test_time_wait_deadline_is_the_only_timer():
    t = ka()
    t.shutdown(at=1.0)
    t.recv(t.inp(R, S + 1, ACK, 30000), at=1.01)
    t.recv(t.inp(R, S + 1, ACK | 1, 30000), at=1.02)       # FIN
    t.pop_output()
    t.pop_events()
    t.expect_state(State.TIME_WAIT)
    assert t.deadline() == pytest.approx(3.02)             # no keepalive in TIME-WAIT
    t.advance(to=100.0)
    t.expect()
    t.expect_events(Closed)


# ---------------------------------------------------------------- the harness itself
def test_harness_reports_field_differences():
    from harness import HarnessError
    t = est()
    t.send(b"abc", at=0.1)
    with pytest.raises(HarnessError, match=r"(?s)seq: expected 1002, got 1001.*payload"):
        t.expect(t.out(S + 1, R, ACK | PSH, W, b"abd"))


def test_harness_any_matches_every_value_and_time_only_moves_forward():
    from harness import ANY, HarnessError
    t = est()
    t.send(b"abc", at=0.1)
    t.expect(t.out(ANY, ANY, ANY, ANY, ANY), at=0.1)
    with pytest.raises(HarnessError, match="forward"):
        t.advance(to=0.05)
    with pytest.raises(HarnessError, match="expected nothing"):
        t.send(b"d")
        t.expect_nothing()


def test_harness_fires_timers_at_their_own_deadlines_before_input():
    t = est(tlp=False)
    t.send(b"abc", at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S + 3, ACK, 30000), at=0.75)   # the RTO fired at 0.3 and 0.7 first
    assert [round(w, 6) for w, _, _ in t.pop_output()] == [0.3, 0.7]
