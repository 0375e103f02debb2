"""Data transfer: delivery, ACK policy, SACK/D-SACK, windows, buffers, PAWS, wraparound.

RFC 9293 §3.8.6 (windows, delayed ACK), RFC 5681 §4.2 (ACK generation),
RFC 2018 / RFC 2883 (SACK, D-SACK), RFC 7323 (window scale, timestamps, PAWS).
After ``establish()``: SND.NXT = 1001, RCV.NXT = 5001, offered window 64000.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from harness import Harness, test_config
from toucli.stack.connection import QUICKACK_SEGMENTS, State
from toucli.stack.events import Readable, Writable
from toucli.stack.segment import ACK, FIN, PSH, RST

ISS = 1000
IRS = 5000
S = ISS + 1
R = IRS + 1
W = 64000


def est(peer_wnd: int = 30000, **cfg) -> Harness:
    t = Harness(test_config(**cfg), iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=peer_wnd)
    return t


def end_quickack(t: Harness, start: int = R, at: float = 0.1) -> int:
    """Feed the receiver's quick-ACK phase (one ACK per segment) and read it all."""
    seq = start
    for i in range(QUICKACK_SEGMENTS):
        t.recv(t.inp(seq, S, ACK, 30000, b"q" * 100), at=at + i * 0.001)
        seq += 100
        t.read()
    assert len(t.pop_segments()) == QUICKACK_SEGMENTS
    t.pop_events()
    return seq


# ---------------------------------------------------------------- receiving
def test_in_order_delivery_and_acks():
    t = est()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.1)
    t.expect(t.out(S, R + 1000, ACK, W - 1000), at=0.1)
    t.expect_events(Readable)
    t.recv(t.inp(R + 1000, S, ACK | PSH, 30000, b"b" * 500), at=0.11)
    t.expect(t.out(S, R + 1500, ACK, W - 1500))
    t.expect_events()                  # still readable: no second event
    assert t.read(1200) == b"a" * 1000 + b"b" * 200
    assert t.read() == b"b" * 300
    assert t.read() == b""
    assert t.conn.stats()["bytes_received"] == 1500


def test_delayed_ack_after_quickack_phase():
    """RFC 9293 §3.8.6.3: a lone small segment is ACKed after the delayed-ACK time."""
    t = est()
    seq = end_quickack(t)
    t.recv(t.inp(seq, S, ACK, 30000, b"x" * 100), at=1.0)
    t.expect()
    t.expect_events(Readable)
    assert t.deadline() == pytest.approx(1.025)
    t.expect_nothing(at=1.024)
    t.advance(to=1.025)
    t.expect(t.out(S, seq + 100, ACK, W - 100), at=1.025)
    assert t.deadline() is None


def test_ack_every_second_full_segment():
    """RFC 5681 §4.2: an ACK at least for every second full-sized segment."""
    t = est()
    seq = end_quickack(t)
    t.recv(t.inp(seq, S, ACK, 30000, b"x" * 1000), at=1.0)
    t.expect()
    t.recv(t.inp(seq + 1000, S, ACK, 30000, b"x" * 1000), at=1.001)
    t.expect(t.out(S, seq + 2000, ACK, W - 2000), at=1.001)
    assert t.deadline() is None        # the delayed-ACK timer is cancelled


def test_sending_data_carries_the_pending_ack():
    t = est()
    seq = end_quickack(t)
    t.recv(t.inp(seq, S, ACK, 30000, b"x" * 100), at=1.0)
    t.expect()
    t.send(b"reply", at=1.01)
    t.expect(t.out(S, seq + 100, ACK | PSH, W - 100, b"reply"))


def test_out_of_order_sack_blocks_most_recent_first_and_hole_fill():
    """RFC 2018 §4: the first block reports the most recently received segment (every
    out-of-order segment answered at once: without SACK compression)."""
    t = est(sack_compression=False)
    t.recv(t.inp(R + 1000, S, ACK, 30000, b"b" * 1000), at=0.1)
    t.expect(t.out(S, R, ACK, W, sack=((R + 1000, R + 2000),)))
    t.recv(t.inp(R + 3000, S, ACK, 30000, b"d" * 1000), at=0.11)
    t.expect(t.out(S, R, ACK, W, sack=((R + 3000, R + 4000), (R + 1000, R + 2000))))
    t.recv(t.inp(R + 5000, S, ACK, 30000, b"f" * 1000), at=0.12)
    t.expect(t.out(S, R, ACK, W, sack=((R + 5000, R + 6000), (R + 3000, R + 4000),
                                       (R + 1000, R + 2000))))
    t.recv(t.inp(R + 2000, S, ACK, 30000, b"c" * 1000), at=0.13)   # joins two blocks
    t.expect(t.out(S, R, ACK, W, sack=((R + 1000, R + 4000), (R + 5000, R + 6000))))
    t.expect_events()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.14)         # fills the first hole
    t.expect(t.out(S, R + 4000, ACK, W - 4000, sack=((R + 5000, R + 6000),)))
    t.expect_events(Readable)
    t.recv(t.inp(R + 4000, S, ACK, 30000, b"e" * 1000), at=0.15)
    t.expect(t.out(S, R + 6000, ACK, W - 6000))
    assert t.read() == b"a" * 1000 + b"b" * 1000 + b"c" * 1000 + b"d" * 1000 + b"e" * 1000 + b"f" * 1000


def test_out_of_order_acks_are_compressed_after_three_per_hole():
    """Linux's SACK compression: for one RCV.NXT the first DUP_THRESH ACKs leave at once;
    segments that only extend the newest block are then answered together, after
    min(1 ms, RTT/20); a segment that opens a new block (a new hole) is answered at once."""
    t = est()
    seq = end_quickack(t)
    for i in range(3):                                  # the hole at seq, then 3 in a row beyond it
        t.recv(t.inp(seq + 100 + 100 * i, S, ACK, 30000, b"x" * 100), at=1.0 + i * 0.0001)
    assert len(t.pop_segments()) == 3                   # three duplicate ACKs, at once
    t.recv(t.inp(seq + 400, S, ACK, 30000, b"x" * 100), at=1.0003)
    t.recv(t.inp(seq + 500, S, ACK, 30000, b"x" * 100), at=1.0004)
    t.expect()                                          # held: they only extend the block
    d = t.deadline()
    assert d is not None and d <= 1.0003 + 0.001 + 1e-9
    t.advance(d)
    t.expect(t.out(S, seq, ACK, W, sack=((seq + 100, seq + 600),)))   # one ACK for both, up to date
    t.recv(t.inp(seq + 800, S, ACK, 30000, b"x" * 100), at=1.01)       # a second hole: at once
    t.expect(t.out(S, seq, ACK, W, sack=((seq + 800, seq + 900), (seq + 100, seq + 600))))


def test_a_full_batch_of_compressed_sacks_is_answered_at_once():
    t = est(recv_buffer=1 << 20, initial_recv_window=1 << 20)
    seq = end_quickack(t)
    for i in range(3 + 43):
        t.recv(t.inp(seq + 100 + 10 * i, S, ACK, 30000, b"y" * 10), at=2.0)
    assert len(t.pop_segments()) == 3                   # 43 held
    t.recv(t.inp(seq + 100 + 10 * 46, S, ACK, 30000, b"y" * 10), at=2.0)
    assert len(t.pop_segments()) == 1                   # the 44th answers them all at once


def test_out_of_order_is_acked_at_once_even_after_quickack():
    """RFC 5681 §4.2: out-of-order data SHOULD get an immediate ACK."""
    t = est()
    seq = end_quickack(t)
    t.recv(t.inp(seq + 100, S, ACK, 30000, b"x" * 100), at=1.0)
    t.expect(t.out(S, seq, ACK, W, sack=((seq + 100, seq + 200),)), at=1.0)
    t.recv(t.inp(seq, S, ACK, 30000, b"x" * 100), at=1.01)
    t.expect(t.out(S, seq + 200, ACK, W - 200), at=1.01)   # hole filled: at once too


def test_dsack_for_duplicate_in_order_segment():
    """RFC 2883 §4: a duplicate below RCV.NXT is reported as the first SACK block."""
    t = est()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.1)
    t.pop_output()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.2)
    t.expect(t.out(S, R + 1000, ACK, W - 1000, sack=((R, R + 1000),)))
    t.recv(t.inp(R + 1000, S, ACK, 30000, b"b" * 10), at=0.3)
    t.expect(t.out(S, R + 1010, ACK, W - 1010))      # D-SACK is reported once
    assert t.conn.stats()["dup_segs_in"] == 1
    assert t.read() == b"a" * 1000 + b"b" * 10


def test_dsack_for_duplicate_out_of_order_segment():
    """RFC 2883 §4: D-SACK block first, then the SACK block containing it."""
    t = est()
    t.recv(t.inp(R + 2000, S, ACK, 30000, b"c" * 1000), at=0.1)
    t.pop_output()
    t.recv(t.inp(R + 2000, S, ACK, 30000, b"c" * 1000), at=0.2)
    t.expect(t.out(S, R, ACK, W, sack=((R + 2000, R + 3000), (R + 2000, R + 3000))))


def test_partial_overlap_is_trimmed():
    t = est()
    t.recv(t.inp(R, S, ACK, 30000, b"0123456789"), at=0.1)
    t.pop_output()
    t.recv(t.inp(R + 5, S, ACK, 30000, b"56789ABCDE"), at=0.2)
    t.expect(t.out(S, R + 15, ACK, W - 15, sack=((R + 5, R + 10),)))
    assert t.read() == b"0123456789ABCDE"


def test_window_shrinks_and_update_after_read():
    """RFC 9293 §3.8.6.2.2: the window update waits until it is worth a segment."""
    t = est(recv_buffer=10000, initial_recv_window=10000)
    # (the SYN advertised 10000; it is the window from now on)
    for i in range(6):
        t.recv(t.inp(R + 1000 * i, S, ACK, 30000, b"x" * 1000), at=0.1 + i * 0.001)
        t.expect(t.out(S, R + 1000 * (i + 1), ACK, 10000 - 1000 * (i + 1)))
    t.pop_events()
    # Offered 4000 < half the buffer and reading 1000 frees a whole MSS: update at once.
    assert len(t.read(1000)) == 1000
    t.expect(t.out(S, R + 6000, ACK, 5000))
    # Offered 5000 is half the buffer: no update needed; the next ACK carries the rest.
    assert len(t.read()) == 5000
    t.expect()
    t.recv(t.inp(R + 6000, S, ACK, 30000, b"x" * 1000), at=0.2)
    t.expect(t.out(S, R + 7000, ACK, 9000))


def test_no_window_update_while_window_still_large():
    t = est(recv_buffer=10000, initial_recv_window=10000)
    t.recv(t.inp(R, S, ACK, 30000, b"x" * 2000), at=0.1)
    t.pop_output()
    t.read()
    t.expect()        # 8000 offered is more than half: the next ACK will carry 10000


def test_data_beyond_window_is_trimmed():
    """RFC 9293 §3.10.7.4: only text inside RCV.WND is accepted."""
    t = est(recv_buffer=2000, initial_recv_window=2000)
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.1)
    t.expect(t.out(S, R + 1000, ACK, 1000))
    t.recv(t.inp(R + 1000, S, ACK, 30000, b"b" * 1500), at=0.2)
    t.expect(t.out(S, R + 2000, ACK, 0))
    t.recv(t.inp(R + 2000, S, ACK, 30000, b"c" * 500), at=0.3)   # zero window: nothing taken
    t.expect(t.out(S, R + 2000, ACK, 0))
    assert t.read() == b"a" * 1000 + b"b" * 1000
    t.expect(t.out(S, R + 2000, ACK, 2000))                       # window reopens
    assert t.conn.stats()["bytes_received"] == 2000


def test_zero_window_still_accepts_ack_and_fin_at_rcv_nxt():
    t = est(recv_buffer=1000, initial_recv_window=1000)
    t.send(b"s" * 100, at=0.05)
    t.pop_output()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.1)
    t.expect(t.out(S + 100, R + 1000, ACK, 0))
    t.recv(t.inp(R + 1000, S + 100, FIN | ACK, 30000), at=0.2)
    t.expect(t.out(S + 100, R + 1001, ACK, 0))
    t.expect_state(State.CLOSE_WAIT)
    assert t.conn.stats()["in_flight"] == 0


def test_out_of_order_queue_bound():
    """Memory bound: beyond ooo_segments ranges, out-of-order data is dropped (not SACKed)."""
    t = est(ooo_segments=2)
    t.recv(t.inp(R + 1000, S, ACK, 30000, b"b" * 500), at=0.1)
    t.recv(t.inp(R + 3000, S, ACK, 30000, b"d" * 500), at=0.11)
    t.pop_output()
    t.recv(t.inp(R + 5000, S, ACK, 30000, b"f" * 500), at=0.12)
    t.expect(t.out(S, R, ACK, W, sack=((R + 3000, R + 3500), (R + 1000, R + 1500))))
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 1000), at=0.13)
    t.expect(t.out(S, R + 1500, ACK, W - 1500, sack=((R + 3000, R + 3500),)))
    assert t.read() == b"a" * 1000 + b"b" * 500


def test_out_of_order_queue_holds_a_full_window_of_small_pieces():
    """The default bound scales with the buffer: an 8 MiB window of 500-byte pieces
    (more than 4096 of them, one hole each) is all kept, then delivered intact."""
    t = est(recv_buffer=8 << 20, initial_recv_window=8 << 20)
    n = 5000
    data = bytes(random.Random(7).randbytes(2 * 500 * n))
    for i in range(n):                      # every second 500-byte piece, holes between
        off = 1000 * i + 500
        t.recv(t.inp(R + off, S, ACK, 30000, data[off:off + 500]), at=0.1)
    assert t.conn.ooo.total == 500 * n
    for i in range(n):                      # the holes, in order
        off = 1000 * i
        t.recv(t.inp(R + off, S, ACK, 30000, data[off:off + 500]), at=0.2)
    got = t.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


# ---------------------------------------------------------------- sending
def test_send_segments_by_mss_and_respects_peer_window():
    """RFC 9293 §3.8.6.2.1: sender SWS avoidance: no 500-byte runt into a 2500-byte window."""
    t = est(peer_wnd=2500, tlp=False)   # the ACK comes after 2*SRTT: no tail loss probe here
    assert t.send(b"z" * 4000, at=0.1) == 4000
    t.expect(t.out(S, R, ACK, W, b"z" * 1000),
             t.out(S + 1000, R, ACK, W, b"z" * 1000))
    t.recv(t.inp(R, S + 2000, ACK, 2500), at=0.15)
    t.expect(t.out(S + 2000, R, ACK, W, b"z" * 1000),
             t.out(S + 3000, R, ACK | PSH, W, b"z" * 1000))


def test_sender_sends_last_small_piece_when_it_is_all_that_is_queued():
    """RFC 9293 §3.8.6.2.1: all queued (pushed) data fits: send it even if < MSS."""
    t = est(peer_wnd=2500)
    t.send(b"z" * 2500, at=0.1)
    t.expect(t.out(S, R, ACK, W, b"z" * 1000),
             t.out(S + 1000, R, ACK, W, b"z" * 1000),
             t.out(S + 2000, R, ACK | PSH, W, b"z" * 500))


def test_initial_window_limits_first_flight():
    """RFC 6928: IW = initial_window_segments * MSS bytes."""
    t = est(peer_wnd=60000)
    t.send(b"w" * 15000, at=0.1)
    segs = t.pop_segments()
    assert [s.seq for s in segs] == [S + 1000 * i for i in range(10)]
    assert all(len(s.payload) == 1000 for s in segs)
    t.recv(t.inp(R, S + 2000, ACK, 60000), at=0.2)   # slow start: 2 acked -> cwnd +2000
    assert [s.seq for s in t.pop_segments()] == [S + 10000 + 1000 * i for i in range(4)]


def test_window_scaling_applied_to_incoming_windows():
    """RFC 7323 §2.3: SND.WND = SEG.WND << Snd.Wind.Shift (not in the SYN-ACK)."""
    cfg = test_config(window_scaling=True)
    t = Harness(cfg, iss=ISS)
    t.establish(peer_iss=IRS, peer_wnd=1000, wscale=3)   # 1000 unscaled in the SYN-ACK
    t.send(b"v" * 5000, at=0.1)
    t.expect(t.out(S, R, ACK, W, b"v" * 1000))
    t.recv(t.inp(R, S + 1000, ACK, 500), at=0.2)          # 500 << 3 = 4000 bytes
    segs = t.pop_segments()
    assert [(s.seq, len(s.payload)) for s in segs] == [
        (S + 1000, 1000), (S + 2000, 1000), (S + 3000, 1000), (S + 4000, 1000)]


def test_zero_window_persist_probes_with_backoff_and_resume():
    """RFC 9293 §3.8.6.1: probe a zero window, backing off, until it opens."""
    t = est()
    t.recv(t.inp(R, S, ACK, 0), at=0.05)
    t.expect()
    assert t.send(b"p" * 100, at=0.1) == 100
    t.expect()                                 # nothing fits
    assert t.deadline() == pytest.approx(0.3)  # max(RTO, persist_min) = 0.2
    probe = t.out(S - 1, R, ACK, W)
    t.advance(to=0.3)
    t.expect(probe, at=0.3)
    assert t.deadline() == pytest.approx(0.7)
    t.advance(to=0.7)
    t.expect(probe, at=0.7)
    assert t.deadline() == pytest.approx(1.5)
    t.recv(t.inp(R, S, ACK, 0), at=0.8)        # the answer still says zero
    t.expect()
    t.advance(to=1.5)
    t.expect(probe, at=1.5)
    t.recv(t.inp(R, S, ACK, 30000), at=1.6)    # window opens
    t.expect(t.out(S, R, ACK | PSH, W, b"p" * 100), at=1.6)
    assert t.deadline() == pytest.approx(1.8)  # now the RTO, not the persist timer


def test_persist_backoff_capped_by_persist_max():
    t = est(persist_max=0.5)
    t.recv(t.inp(R, S, ACK, 0), at=0.05)
    t.send(b"p" * 10, at=0.1)
    t.advance(to=2.0)
    times = [w for w, _, _ in t.pop_output()]
    assert times == pytest.approx([0.3, 0.7, 1.2, 1.7])


def test_send_buffer_cap_and_writable():
    t = est(send_buffer=3000, peer_wnd=1000)
    assert t.send(b"1" * 5000, at=0.1) == 3000
    assert t.send(b"2") == 0
    t.expect(t.out(S, R, ACK, W, b"1" * 1000))
    t.expect_events()
    t.recv(t.inp(R, S + 1000, ACK, 1000), at=0.2)
    t.expect_events(Writable)
    t.expect(t.out(S + 1000, R, ACK, W, b"1" * 1000))
    assert t.send(b"3" * 5000) == 1000
    assert t.conn.send(b"4") == 0


def test_nagle_holds_small_segment_while_data_in_flight():
    """RFC 896 / RFC 9293 §3.7.4: with Nagle, a sub-MSS segment waits for the ACK."""
    t = est(nagle=True)
    t.send(b"a" * 10, at=0.1)
    t.expect(t.out(S, R, ACK | PSH, W, b"a" * 10))
    t.send(b"b" * 10, at=0.11)
    t.expect()
    t.recv(t.inp(R, S + 10, ACK, 30000), at=0.2)
    t.expect(t.out(S + 10, R, ACK | PSH, W, b"b" * 10))


def test_no_nagle_sends_small_segments_at_once():
    t = est()
    t.send(b"a" * 10, at=0.1)
    t.send(b"b" * 10, at=0.11)
    t.expect(t.out(S, R, ACK | PSH, W, b"a" * 10), t.out(S + 10, R, ACK | PSH, W, b"b" * 10))


def test_acks_release_send_buffer_and_stop_rto():
    t = est(tlp=False)   # the RTO alone (the probe timer has tests in test_rack.py)
    t.send(b"d" * 2000, at=0.1)
    t.pop_output()
    assert t.deadline() == pytest.approx(0.3)
    t.recv(t.inp(R, S + 1000, ACK, 30000), at=0.15)
    assert t.deadline() == pytest.approx(0.35)   # RFC 6298 §5.3: restart on new ACK
    t.recv(t.inp(R, S + 2000, ACK, 30000), at=0.2)
    assert t.deadline() is None                  # §5.2: all acknowledged
    st = t.conn.stats()
    assert st["bytes_acked"] == 2000 and st["in_flight"] == 0


# ---------------------------------------------------------------- PAWS / TS
def ts_est(start: float = 1.0) -> Harness:
    cfg = test_config(timestamps=True)
    t = Harness(cfg, iss=ISS, bare=True, ts_offset=0, start=start)
    t.establish(peer_iss=IRS, peer_wnd=30000, at=start, tsval=100, tsecr=int(start * 1000))
    return t


def test_timestamps_echo_peer_tsval():
    t = ts_est()
    # eff MSS = 1000 - 12; TSval = now in ms (ts_offset 0)
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 10, tsval=150, tsecr=1010), at=1.1)
    t.expect(t.out(S, R + 10, ACK, W - 10, tsval=1100, tsecr=150))
    assert t.conn.stats()["mss"] == 988


def test_a_receiver_measures_the_path_from_the_timestamps_its_data_echoes():
    """RFC 7323 §3: in-order data echoing the TSval of one of our ACKs times the round trip
    from the receiving side (as Linux's tcp_rcv_rtt_measure_ts); rcv_min_rtt keeps the
    least. A connection that only receives has no other sample than the handshake's. The
    sender's estimator (its RTO) is left alone."""
    t = ts_est()                          # handshake sample 10 ms; our ACK left at 1.010 (TSval 1010)
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 100, tsval=150, tsecr=1010), at=1.0135)
    assert t.conn.rcv_min_rtt == pytest.approx(0.0035)
    [ack] = t.pop_segments()              # quick ACK at 1.0135: TSval 1013
    t.recv(t.inp(R + 100, S, ACK, 30000, b"b" * 100, tsval=151, tsecr=ack.tsval), at=1.0152)
    assert t.conn.rcv_min_rtt == pytest.approx(0.0022)     # the 1 ms clock lengthens it, never shortens
    t.pop_output()
    # Out of order: no sample (TS.Recent does not move either, RFC 7323 §4.3).
    t.recv(t.inp(R + 300, S, ACK, 30000, b"d" * 100, tsval=152, tsecr=1015), at=1.0153)
    assert t.conn.rcv_min_rtt == pytest.approx(0.0022)
    [dupack] = t.pop_segments()           # TSval 1015
    # The hole filled (the general path): echoes the duplicate ACK, 1.1 ms after its tick.
    t.recv(t.inp(R + 200, S, ACK, 30000, b"c" * 100, tsval=153, tsecr=dupack.tsval), at=1.0161)
    assert t.conn.rcv_min_rtt == pytest.approx(0.0011)
    assert t.conn.path_rtt == pytest.approx(0.0011)
    assert t.read() == b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 100
    st = t.conn.stats()
    assert st["min_rtt"] == pytest.approx(0.010) and st["srtt"] == pytest.approx(0.010)


def test_paws_drops_old_tsval_with_ack():
    """RFC 7323 §5.3 R1: SEG.TSval < TS.Recent, beyond what a path reorders -> drop, send an ACK."""
    t = ts_est()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 10, tsval=200, tsecr=1010), at=1.1)
    t.pop_output()
    old = (200 - 1001) & 0xFFFFFFFF           # 1 s and a tick behind: past the replay window
    t.recv(t.inp(R + 10, S, ACK, 30000, b"b" * 10, tsval=old, tsecr=1010), at=1.2)
    t.expect(t.out(S, R + 10, ACK, W - 10, tsval=1200, tsecr=200))
    assert t.read() == b"a" * 10
    assert t.conn.stats()["paws_drops"] == 1


def test_paws_takes_what_the_path_reordered_without_moving_ts_recent_back():
    """A segment whose TSval is a little behind TS.Recent (jitter reordered it behind a
    later one) is data, not an old duplicate: it is taken, and the ACK still echoes the
    newest TS.Recent (it never goes back)."""
    t = ts_est()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 10, tsval=200, tsecr=1010), at=1.1)
    t.pop_output()
    t.recv(t.inp(R + 10, S, ACK, 30000, b"b" * 10, tsval=196, tsecr=1010), at=1.2)
    t.expect(t.out(S, R + 20, ACK, W - 20, tsval=1200, tsecr=200))
    assert t.read() == b"a" * 10 + b"b" * 10
    assert t.conn.stats()["paws_drops"] == 0


def test_paws_does_not_apply_to_rst():
    t = ts_est()
    t.recv(t.inp(R, S, ACK, 30000, b"a", tsval=200, tsecr=1010), at=1.1)
    t.pop_output()
    t.pop_events()
    t.recv(t.inp(R + 1, 0, RST, 0, tsval=5), at=1.2)
    assert t.conn.state == State.CLOSED


def test_ts_recent_not_updated_by_out_of_order_segment():
    """RFC 7323 §4.3: TS.Recent <- SEG.TSval only if SEG.SEQ <= Last.ACK.sent."""
    t = ts_est()
    t.recv(t.inp(R + 100, S, ACK, 30000, b"x" * 10, tsval=300, tsecr=1010), at=1.1)
    t.expect(t.out(S, R, ACK, W, tsval=1100, tsecr=100, sack=((R + 100, R + 110),)))
    t.recv(t.inp(R, S, ACK, 30000, b"y" * 100, tsval=250, tsecr=1010), at=1.2)
    # in order (SEQ == Last.ACK.sent), TSval 250 >= TS.Recent 100: echoed
    t.expect(t.out(S, R + 110, ACK, W - 110, tsval=1200, tsecr=250))


def test_ts_recent_updated_by_segment_starting_at_last_ack_sent():
    t = ts_est()
    t.recv(t.inp(R, S, ACK, 30000, b"a" * 10, tsval=150, tsecr=1010), at=1.1)
    t.pop_output()
    t.recv(t.inp(R + 10, S, ACK, 30000, b"b" * 10, tsval=160, tsecr=1010), at=1.2)
    t.expect(t.out(S, R + 20, ACK, W - 20, tsval=1200, tsecr=160))


def test_rtt_sample_from_timestamp_echo():
    t = ts_est()
    t.send(b"m" * 100, at=2.0)
    t.expect(t.out(S, R, ACK | PSH, W, b"m" * 100, tsval=2000, tsecr=100))
    t.recv(t.inp(R, S + 100, ACK, 30000, tsval=400, tsecr=2000), at=2.030)
    assert t.conn.stats()["srtt"] < 0.030   # the 30 ms sample moved SRTT from 10 ms toward 30


# ---------------------------------------------------------------- wraparound
def test_wraparound_both_directions_100k():
    """RFC 9293 §3.4: sequence numbers wrap modulo 2**32 without loss or reordering."""
    iss = (1 << 32) - 1000
    irs = (1 << 32) - 500
    t = Harness(test_config(), iss=iss)
    t.establish(peer_iss=irs, peer_wnd=64000)
    rng = random.Random(7)
    ours = rng.randbytes(100_000)
    theirs = rng.randbytes(100_000)
    assert t.send(ours, at=0.1) == len(ours)
    got = bytearray()
    rx = bytearray()
    snd_nxt = (iss + 1) & 0xFFFFFFFF     # what we expect from the engine next
    peer_nxt = (irs + 1) & 0xFFFFFFFF    # the peer's next sequence number
    sent = 0
    now = 0.1
    for _ in range(1000):
        if len(got) == len(ours) and sent == len(theirs):
            break
        now += 0.001
        chunk = theirs[sent: sent + 1000]
        for seg in t.pop_segments():
            if seg.payload:
                assert seg.seq == snd_nxt
                got += seg.payload
                snd_nxt = (snd_nxt + len(seg.payload)) & 0xFFFFFFFF
        t.recv(t.inp(peer_nxt, snd_nxt, ACK, 64000, chunk), at=now)
        peer_nxt = (peer_nxt + len(chunk)) & 0xFFFFFFFF
        sent += len(chunk)
        rx += t.read()     # the application keeps up, so the window stays open
        assert t.conn.state == State.ESTABLISHED
    assert bytes(got) == ours
    assert bytes(rx) == theirs
    t.pop_output()
    t.recv(t.inp(peer_nxt, snd_nxt, ACK, 64000), at=now + 0.01)
    st = t.conn.stats()
    assert st["bytes_acked"] == 100_000 and st["retransmitted_segments"] == 0
    assert st["bytes_received"] == 100_000
    assert t.deadline() is None


def test_window_limited_sender_with_nothing_in_flight_sends_what_fits():
    """RFC 9293 §3.8.6.2.1: with nothing in flight no ACK will clock the sender, so the
    SWS override applies at once (as Linux does): the 500 bytes the window allows go out."""
    t = est(peer_wnd=2500, tlp=False)   # the ACK comes after 100 ms: no tail loss probe here
    t.send(b"z" * 4000, at=0.1)
    assert len(t.pop_segments()) == 2
    t.recv(t.inp(R, S + 2000, ACK, 500), at=0.2)   # all acked; 500 bytes of window left
    segs = t.pop_segments()
    assert [len(s.payload) for s in segs] == [500]
    assert segs[0].seq == (S + 2000) & 0xFFFFFFFF
    assert t.deadline() is not None                # the retransmission timer covers it


def test_sack_block_limit_without_timestamps():
    """RFC 2018 §3: at most 4 blocks without the timestamp option; newest first."""
    t = est()
    for k in range(6):
        t.recv(t.inp(R + 1000 + 2000 * k, S, ACK, 30000, b"o" * 100), at=0.1 + k * 0.01)
    last = t.pop_segments()[-1]
    assert last.sack == tuple((R + 1000 + 2000 * k, R + 1100 + 2000 * k) for k in (5, 4, 3, 2))
    t.recv(t.inp(R + 1000, S, ACK, 30000, b"o" * 100), at=0.2)   # duplicate: D-SACK + 3
    assert t.pop_segments() == [t.out(S, R, ACK, W, sack=(
        (R + 1000, R + 1100), (R + 11000, R + 11100), (R + 9000, R + 9100), (R + 7000, R + 7100)))]


def test_sack_block_limit_with_timestamps():
    """RFC 2018 §3: with the 10-byte timestamp option only 3 blocks fit."""
    t = ts_est()
    for k in range(5):
        t.recv(t.inp(R + 1000 + 2000 * k, S, ACK, 30000, b"o" * 100, tsval=100, tsecr=1010),
               at=1.1 + k * 0.01)
    last = t.pop_segments()[-1]
    assert last.sack == tuple((R + 1000 + 2000 * k, R + 1100 + 2000 * k) for k in (4, 3, 2))


def test_sack_blocks_never_push_a_data_segment_past_the_mss():
    """RFC 9293 §3.7.1: payload plus options within the MSS. A full-sized data segment has
    room for no SACK block beside the timestamps; a short one carries what fits, and
    blocks no segment of the batch could carry follow on a pure ACK."""
    from toucli.stack.tcp import header_length

    def batch(size: int) -> list:
        t = ts_est()
        # two out-of-order arrivals: two SACK blocks to report
        t.recv(t.inp(R + 100, S, ACK, 30000, b"x" * 10, tsval=300, tsecr=1010), at=1.1)
        t.recv(t.inp(R + 200, S, ACK, 30000, b"y" * 10, tsval=301, tsecr=1010), at=1.1)
        t.pop_output()
        t.send(b"d" * size, at=1.2)
        out = [seg for _, _, seg in t.pop_output()]
        for seg in out:
            assert header_length(seg) - 20 + len(seg.payload) <= 1000, seg   # the MSS
        return out

    short_tail = batch(2500)
    assert [(len(s.payload), len(s.sack or ())) for s in short_tail] == [(988, 0), (988, 0), (524, 2)]
    full = batch(1976)
    assert [(len(s.payload), len(s.sack or ())) for s in full] == [(988, 0), (988, 0), (0, 2)]
